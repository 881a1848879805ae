"""Margin softmax logits: CosFace, ArcFace and SV-softmax, always computed in fp32.

Each margin turns cosines ``cos[N, K]`` and a target column per row into scaled logits for a
softmax cross-entropy:

* ``cosface``: target ``s·(cos − m)``; others ``s·cos``.
* ``arcface``: target ``s·cos(θ + m)``, where ``cos θ`` is clamped to [−1, 1] and ``1 − cos²``
  to at least 1e-12 before the square root, so neither the value nor the gradient is NaN at
  ``cos = ±1``. Where ``θ + m > π`` (``cos θ ≤ cos(π − m)``), ``cos(θ + m)`` would stop being
  monotonic in θ, so the target uses the usual fallback ``cos θ − m·sin(π − m)`` instead.
* ``svsoftmax``: SV-AM-softmax. The target is ``s·(cos − m)`` like CosFace; a *hard* negative,
  one whose cosine exceeds the margined target cosine ``cos_y − m``, is re-weighted to
  ``s·(t·cos + t − 1)`` with ``t = sv_t ≥ 1`` (``t = 1`` or ``m`` large gives CosFace). The
  hard/easy decision carries no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch

from f2c.heads.names import MarginKind

__all__ = ["MarginConfig", "MarginKind", "margin_logits", "margined_target_cosine"]

_SQRT_FLOOR = 1e-12


@dataclass(frozen=True)
class MarginConfig:
    """Which margin, its size ``margin`` (m), the logit scale (s) and SV-softmax's ``t``."""

    kind: MarginKind
    margin: float
    scale: float = 32.0
    sv_t: float = 1.2

    def __post_init__(self) -> None:
        if self.kind not in get_args(MarginKind):
            raise ValueError(
                f"unknown margin kind {self.kind!r}; expected one of {get_args(MarginKind)}"
            )
        if not 0.0 <= self.margin < (math.pi if self.kind == "arcface" else 2.0):
            raise ValueError(f"margin m={self.margin} out of range for {self.kind}")
        if not self.scale > 0.0:
            raise ValueError(f"scale s must be positive, got {self.scale}")
        if not self.sv_t >= 1.0:
            raise ValueError(f"sv_t must be at least 1, got {self.sv_t}")


def margined_target_cosine(cos: torch.Tensor, config: MarginConfig) -> torch.Tensor:
    """The target's cosine after the margin (unscaled), elementwise, in fp32."""
    with torch.autocast(cos.device.type, enabled=False):
        cos = cos.float()
        m = config.margin
        if config.kind != "arcface":
            return cos - m
        c = cos.clamp(-1.0, 1.0)
        sin = (1.0 - c * c).clamp_min(_SQRT_FLOOR).sqrt()
        shifted = c * math.cos(m) - sin * math.sin(m)
        fallback = c - m * math.sin(math.pi - m)
        return torch.where(c > math.cos(math.pi - m), shifted, fallback)


def margin_logits(
    cos: torch.Tensor,
    target: torch.Tensor,
    config: MarginConfig,
    target_cos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled margin logits ``[N, K]`` (fp32) from cosines ``cos[N, K]``.

    ``target[N]`` (int64) is each row's target column, or −1 where the target is not among
    these K columns (e.g. it lives on another rank's shard): such rows get no margin here.
    ``target_cos[N]`` (SV-softmax only) is each row's target cosine when some targets are not
    among the columns; rows where it is NaN have no hard negatives. By default it is read from
    ``cos`` at the target column.
    """
    with torch.autocast(cos.device.type, enabled=False):
        cos = cos.float()
        s = config.scale
        rows = torch.nonzero(target >= 0).squeeze(1)
        cols = target[rows]
        logits = cos * s
        if config.kind == "svsoftmax" and config.sv_t != 1.0:
            if target_cos is None:
                target_cos = cos.new_full((cos.shape[0],), math.nan)
                target_cos[rows] = cos[rows, cols].detach()
            threshold = margined_target_cosine(target_cos.detach().float(), config)
            hard = cos.detach() > threshold[:, None]
            hard[rows, cols] = False
            t = config.sv_t
            logits = torch.where(hard, (cos * t + (t - 1.0)) * s, logits)
        target_logits = margined_target_cosine(cos[rows, cols], config) * s
        # In place: neither ``cos * s`` nor ``torch.where`` keeps its output for backward.
        return logits.index_put_((rows, cols), target_logits)
