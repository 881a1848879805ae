"""Learning-rate schedule as a function of training progress in epochs (fractions allowed).

The schedule is stateless: the lr at a step depends only on ``epoch + step_in_epoch /
steps_per_epoch``. A resumed run, even on a different number of ranks (other steps per epoch),
therefore continues the same schedule without any scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["lr_multiplier", "set_lr"]


def lr_multiplier(
    progress: float,
    *,
    total_epochs: float,
    schedule: str,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the base lr at ``progress`` epochs into training.

    Warm-up ramps linearly from 0 to 1 over ``warmup_epochs`` (never exactly 0); multistep then
    multiplies by ``gamma`` at each milestone passed; cosine decays from 1 at the end of warm-up
    to ``min_lr_ratio`` at ``total_epochs``.
    """
    if progress < 0:
        raise ValueError(f"progress must be >= 0, got {progress}")
    if warmup_epochs > 0 and progress < warmup_epochs:
        return max(progress / warmup_epochs, 1e-3)
    if schedule == "multistep":
        passed = sum(1 for m in milestones if progress >= m)
        return float(gamma**passed)
    if schedule == "cosine":
        span = max(total_epochs - warmup_epochs, 1e-12)
        t = min(max(progress - warmup_epochs, 0.0) / span, 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr schedule {schedule!r} (use 'multistep' or 'cosine')")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's lr (groups may carry an ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
