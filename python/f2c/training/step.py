"""One training step, the same for the trainer and for the benchmarks that time it.

The step (docs/design.md §1): the two views x and y of one step go through the probe network in
one forward of ``[x; y]``; for a head that reads gallery features, the gallery network (a moving
average of the probe) is updated first and then embeds the same ``[x; y]`` without gradients;
the head computes the loss from a :class:`~f2c.heads.HeadBatch`; a non-finite loss stops the
step before anything is updated; then backward (through the GradScaler), optional gradient
clipping and the optimiser step. The trainer, ``f2c.benchmarks.cost_curve`` and
``benches/bench_heads.py`` all call :func:`train_step`, so what the benchmarks time is what trains.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from f2c.config import OptimConfig
from f2c.data.transforms import normalize
from f2c.distributed import all_reduce, get_world_size, is_distributed
from f2c.heads import HeadBatch, ProbeGallery
from f2c.training.errors import NonFiniteLossError

__all__ = [
    "StepInput",
    "StepModel",
    "StepResult",
    "build_optimizer",
    "f2c_views",
    "train_step",
]


@dataclass(frozen=True)
class StepInput:
    """The network input of one step: both views' rows (view x first), labels, ``n_x``.

    uint8 ``[N, H, W, 3]`` images are normalised on their device inside the step; any other
    tensor goes to the probe as it is (the head benchmark feeds embedding-table row indices).
    """

    images: torch.Tensor
    labels: torch.Tensor
    split: int


def f2c_views(
    instance: tuple[torch.Tensor, torch.Tensor],
    identity: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
) -> StepInput:
    """The F²C layout of one instance batch (B images) and one identity batch (two images of
    each of B identities): x = [identity view 1; first half of the instance batch],
    y = [identity view 2; second half], each ``B + B/2`` rows (docs/design.md §1)."""
    inst_images, inst_labels = (t.to(device, non_blocking=True) for t in instance)
    view1, view2, id_labels = (t.to(device, non_blocking=True) for t in identity)
    half = inst_images.shape[0] // 2
    x = torch.cat([view1, inst_images[:half]])
    y = torch.cat([view2, inst_images[half:]])
    labels_x = torch.cat([id_labels, inst_labels[:half]])
    labels_y = torch.cat([id_labels, inst_labels[half:]])
    return StepInput(torch.cat([x, y]), torch.cat([labels_x, labels_y]), x.shape[0])


def build_optimizer(probe: nn.Module, head: nn.Module, optim: OptimConfig) -> torch.optim.SGD:
    """SGD over the probe's and the head's parameters (two named groups, in that order)."""
    return torch.optim.SGD(
        [
            {"params": list(probe.parameters()), "name": "probe"},
            {"params": list(head.parameters()), "name": "head"},
        ],
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov and optim.momentum > 0,
        weight_decay=optim.weight_decay,
    )


@dataclass
class StepModel:
    """Everything one step updates.

    ``probe`` is the probe as the forward calls it (wrapped in DDP or ``torch.compile`` by the
    trainer); by default ``nets.probe``. ``amp_dtype`` turns on autocast for the networks (heads
    compute in fp32 regardless). Head parameters are taken to be sharded across ranks (the FC
    baselines'), which gradient clipping needs to know.
    """

    nets: ProbeGallery
    head: nn.Module
    optimizer: torch.optim.Optimizer
    probe: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {self.clip_grad_norm}")

    def forward_probe(self, images: torch.Tensor) -> torch.Tensor:
        probe = self.probe if self.probe is not None else self.nets.probe
        out: torch.Tensor = probe(images)
        return out

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


@dataclass
class StepResult:
    loss: float  # mean over ranks
    stats: dict[str, float]  # the head's statistics on this rank
    images: int  # rows through the probe, all ranks


_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)


def train_step(model: StepModel, batch: StepInput) -> StepResult:
    """One optimiser step on ``batch`` (see the module docstring for the order of work)."""
    images = batch.images
    if images.dtype == torch.uint8:
        images = normalize(images)
    device = images.device
    head = model.head
    scaler = model.scaler if model.scaler is not None else _NO_SCALING
    model.optimizer.zero_grad(set_to_none=True)
    with model.autocast(device):
        embeddings = model.forward_probe(images)
    gallery = None
    if head.requires_gallery:
        model.nets.update_gallery()  # EMA step before the gallery forward (docs/design.md §1)
        with model.autocast(device):
            gallery = model.nets.gallery_forward(images).float()
    out = head(HeadBatch(embeddings.float(), batch.labels, batch.split, gallery))
    loss = out.loss
    loss_value = _mean_across_ranks(loss.detach().float())
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(
            f"loss became {loss_value}; stopped before the optimiser step", loss_value
        )
    scaler.scale(loss).backward()
    if model.clip_grad_norm is not None:
        scaler.unscale_(model.optimizer)
        clip_gradients(model.nets.probe.parameters(), head.parameters(), model.clip_grad_norm)
    scaler.step(model.optimizer)
    scaler.update()
    stats = {k: float(v) for k, v in out.stats.items()}
    return StepResult(loss_value, stats, images.shape[0] * get_world_size())


def _mean_across_ranks(value: torch.Tensor) -> float:
    world = get_world_size()
    if world > 1:
        value = all_reduce(value.clone()) / world
    return float(value)


def clip_gradients(
    replicated: Iterable[nn.Parameter], sharded: Iterable[nn.Parameter], max_norm: float
) -> float:
    """Scale all gradients so that their global L2 norm is at most ``max_norm``; returns the norm.

    ``replicated`` parameters hold the same (DDP-averaged) gradient on every rank; ``sharded``
    ones hold one rank's part of a larger tensor, so their squared norms are summed over ranks.
    Every rank then computes the same norm and the same scale, and the replicas stay equal
    (``torch.nn.utils.clip_grad_norm_`` on each rank's own parameters would not).
    """
    rep = [p.grad for p in replicated if p.grad is not None]
    shard = [p.grad for p in sharded if p.grad is not None]
    device = (rep or shard)[0].device if rep or shard else torch.device("cpu")
    sq_rep = sum((g.detach().float().pow(2).sum() for g in rep), torch.zeros((), device=device))
    sq_shard = sum((g.detach().float().pow(2).sum() for g in shard), torch.zeros((), device=device))
    if is_distributed():
        all_reduce(sq_shard)
    total = (sq_rep + sq_shard).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in rep + shard:
        g.mul_(scale.to(g.dtype))
    return float(total)
