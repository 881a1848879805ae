"""The pieces a trainer is made of, each built from the configuration by one function.

Every rank builds the same objects; construction order matters for reproducibility, so
:class:`~f2c.training.loop.Trainer` calls these in a fixed order with fixed seeds.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from f2c import heads, models
from f2c.config import Config, DataConfig, TrainConfig
from f2c.data.loaders import IdentityDataset, InstanceDataset, make_loader
from f2c.data.samplers import DistributedIdentitySampler, DistributedInstanceSampler
from f2c.data.sources import TrainingSource
from f2c.heads import minimum_pool_size  # the head's own rule: y holds B + ⌈B/2⌉ rows
from f2c.training.errors import TrainingError
from f2c.training.runtime import Runtime

__all__ = [
    "amp_dtype",
    "build_backbone",
    "build_head",
    "build_loaders",
    "build_samplers",
    "resolve_pool_size",
    "unwrap",
    "wrap_probe",
]


def resolve_pool_size(config: Config, num_classes: int, world_size: int) -> int:
    """The pool size Q for ``config``; refuses a Q too small for one pass (docs/design.md §1)."""
    head = config.head
    minimum = minimum_pool_size(config.train.batch_size, world_size)
    if head.pool_size is not None:
        q, given = head.pool_size, f"head.pool_size={head.pool_size}"
    elif head.pool_ratio is not None:
        q = max(1, int(round(head.pool_ratio * num_classes)))
        given = f"head.pool_ratio={head.pool_ratio} of {num_classes} classes = {q}"
    else:
        q = max(int(math.ceil(0.01 * num_classes)), 2 * minimum)
        given = None
    q = min(q, num_classes) if given is None else q
    if q > num_classes:
        raise TrainingError(
            f"pool size {q} ({given}) exceeds the number of classes {num_classes}"
        )
    if q < minimum:
        what = given or f"the default pool size {q} (capped at {num_classes} classes)"
        raise TrainingError(
            f"pool too small for the batch: {what}, but one F²C pass inserts up to "
            f"{minimum} labels ({world_size} ranks x 1.5 x batch {config.train.batch_size}); "
            f"labels of low ranks would be evicted within the pass. Use a pool size of at "
            f"least {minimum}, or a smaller batch."
        )
    return q


def amp_dtype(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (None for fp32); mixed precision needs CUDA."""
    if train.amp != "none" and device.type != "cuda":
        raise TrainingError(
            f"train.amp={train.amp} needs a CUDA device; this run is on {device} "
            "(use --train.amp none)"
        )
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.amp)


def build_samplers(
    db: TrainingSource, train: TrainConfig, runtime: Runtime
) -> tuple[DistributedIdentitySampler, DistributedInstanceSampler]:
    """The identity and instance samplers; they refuse too-small dbs and too many ranks."""
    try:
        identity = DistributedIdentitySampler(
            np.asarray(db.identity_offsets), np.asarray(db.identity_rows),
            train.batch_size, rank=runtime.rank, world_size=runtime.world_size, seed=train.seed,
        )
        instance = DistributedInstanceSampler(
            len(db), train.batch_size, rank=runtime.rank, world_size=runtime.world_size,
            seed=train.seed,
        )
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    return identity, instance


def build_loaders(
    db: TrainingSource,
    identity_sampler: DistributedIdentitySampler,
    instance_sampler: DistributedInstanceSampler,
    data: DataConfig,
    device: torch.device,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """(identity loader, instance loader); the workers are split between them."""
    pin = device.type == "cuda"
    instance = make_loader(
        InstanceDataset(db), instance_sampler, workers=(data.workers + 1) // 2,
        prefetch=data.prefetch, pin_memory=pin,
    )
    identity = make_loader(
        IdentityDataset(db), identity_sampler, workers=data.workers // 2,
        prefetch=data.prefetch, pin_memory=pin,
    )
    return identity, instance


def build_backbone(config: Config, image_size: tuple[int, int]) -> nn.Module:
    """The configured backbone, built for the db's (square) image size; with
    ``model.init_from``, its weights come from that file (the head is not part of them)."""
    height, width = image_size
    if height != width:
        raise TrainingError(f"the training db holds {height}x{width} images; need squares")
    try:
        spec = models.ModelSpec(config.model.backbone, config.model.embedding_size, height)
    except ValueError as exc:
        raise TrainingError(f"model.backbone: {exc} (the db holds {height}x{width} images)") \
            from exc
    backbone = models.build(spec)
    if config.model.init_from is not None:
        try:
            models.init_backbone(backbone, config.model.init_from, spec,
                                 net=config.model.init_net)
        except models.ModelLoadError as exc:
            raise TrainingError(f"model.init_from: {exc}") from exc
    return backbone


def build_head(
    config: Config, num_classes: int, pool_size: int | None, device: torch.device
) -> nn.Module:
    """The configured head (``pool_size`` from :func:`resolve_pool_size` for f2c)."""
    h = config.head
    return heads.build_head(
        h.name,
        num_classes=num_classes,
        embedding_size=config.model.embedding_size,
        margin=h.margin_config(),
        batch_size=config.train.batch_size,
        pool_size=pool_size,
        sample_rate=h.sample_rate,
        device=device,
    )


def _buffer_sync_kwargs(sync: bool) -> dict[str, bool]:
    """DDP's per-forward buffer broadcast switch (renamed ``forward_sync_buffers`` in torch 2.1x;
    both still sync once at construction, which is what we want)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


def wrap_probe(probe: nn.Module, train: TrainConfig, runtime: Runtime) -> nn.Module:
    """The probe as the step calls it: in DDP under several ranks, compiled if asked."""
    if runtime.distributed:
        # broadcast_buffers=False: BN running statistics only matter in eval mode; every rank
        # keeps its own estimate between checkpoints and the trainer re-syncs them from rank 0
        # before saving, so saved state is the same on all ranks. The pool is never a DDP buffer.
        device = runtime.device
        probe = nn.parallel.DistributedDataParallel(
            probe,
            device_ids=[device.index] if device.type == "cuda" else None,
            **_buffer_sync_kwargs(train.broadcast_buffers),
        )
    if train.compile:
        probe = torch.compile(probe)  # type: ignore[assignment]
    return probe


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    inner = getattr(module, "_orig_mod", module)
    return getattr(inner, "module", inner)  # type: ignore[no-any-return]
