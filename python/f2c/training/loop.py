"""The training loop: model, head, optimiser, the two loaders, the F²C step, checkpoints.

One ``Trainer`` per process. Under torchrun every rank builds the same objects; the probe network
is wrapped in DDP, the head is not (it gathers what it needs itself). Collective calls
(``state_dict``, ``save_checkpoint``) must be made by every rank.

The F²C step (DESIGN §1): the instance batch (B images) is split in halves I1, I2 and the identity
batch gives two views of B identities; x = [view 1; I1], y = [view 2; I2]. One probe forward of
[x; y] gives the probe embeddings; the gallery (EMA of the probe, updated first) embeds [x; y]
without gradients; the head runs its two passes. Baseline heads (fc, partial_fc) see exactly the
same 3B images and labels, so the comparison is fair.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from f2c.config import Config
from f2c.data.loaders import IdentityDataset, InstanceDataset, TrainingDb, make_loader
from f2c.data.samplers import DistributedIdentitySampler, DistributedInstanceSampler
from f2c.data.transforms import normalize
from f2c.heads import minimum_pool_size  # the head's own rule: y holds B + ⌈B/2⌉ rows
from f2c.training.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    capture_rng_state,
    restore_rng_state,
)
from f2c.training.runtime import Runtime
from f2c.training.schedule import lr_multiplier, set_lr

__all__ = [
    "NonFiniteLossError",
    "StepResult",
    "Trainer",
    "TrainingError",
    "minimum_pool_size",
    "resolve_pool_size",
]


class TrainingError(RuntimeError):
    """A run cannot start or continue for a reason the user can fix (data, sizes, config)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the run stops before the optimiser step."""


def resolve_pool_size(config: Config, num_classes: int, world_size: int) -> int:
    """The pool size Q for ``config``; refuses a Q too small for one pass (DESIGN §1)."""
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


@dataclass
class StepResult:
    loss: float
    stats: dict[str, float]
    images: int  # images through the probe on all ranks


@dataclass
class RunStats:
    """Timing over the steps of this process (since start or resume)."""

    steps: int = 0
    images: int = 0
    step_seconds: float = 0.0
    data_seconds: float = 0.0


def _buffer_sync_kwargs(sync: bool) -> dict[str, bool]:
    """DDP's per-forward buffer broadcast switch (renamed ``forward_sync_buffers`` in torch 2.1x;
    both still sync once at construction, which is what we want)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    inner = getattr(module, "_orig_mod", module)
    return getattr(inner, "module", inner)


class Trainer:
    """Builds everything for one process and runs (or resumes) the training trajectory."""

    def __init__(self, config: Config, runtime: Runtime, db: TrainingDb, run_dir: Path) -> None:
        from f2c import heads, models

        self.config = config
        self.runtime = runtime
        self.db = db
        self.run_dir = run_dir
        self.device = runtime.device
        cfg, tcfg = config, config.train
        if tcfg.amp != "none" and self.device.type != "cuda":
            raise TrainingError(
                f"train.amp={tcfg.amp} needs a CUDA device; this run is on {self.device} "
                "(use --train.amp none)"
            )
        self.batch_size = tcfg.batch_size
        self.num_classes = db.num_classes
        self.image_size = db.image_size

        # Samplers first: they refuse too-small dbs and more ranks than identities.
        try:
            self.identity_sampler = DistributedIdentitySampler(
                np.asarray(db.index.identity_offsets), np.asarray(db.index.identity_rows),
                self.batch_size, rank=runtime.rank, world_size=runtime.world_size,
                seed=tcfg.seed,
            )
            self.instance_sampler = DistributedInstanceSampler(
                len(db), self.batch_size, rank=runtime.rank,
                world_size=runtime.world_size, seed=tcfg.seed,
            )
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
        self.steps_per_epoch = self.instance_sampler.steps_per_epoch

        self.pool_size = (
            resolve_pool_size(config, self.num_classes, runtime.world_size)
            if cfg.head.name == "f2c" else None
        )

        # Identical initial weights on every rank (DDP also broadcasts rank 0's at wrap time,
        # but the gallery copy and the head are built before that).
        torch.manual_seed(tcfg.seed)
        backbone = self._create_backbone(models)
        self.nets = heads.ProbeGallery(backbone, momentum=cfg.head.ema_momentum).to(self.device)
        margin = cfg.head.margin_config()
        self.head = heads.build_head(
            cfg.head.name,
            num_classes=self.num_classes,
            embedding_size=cfg.model.embedding_size,
            margin=margin,
            batch_size=self.batch_size,
            pool_size=self.pool_size,
            sample_rate=cfg.head.sample_rate,
            device=self.device,
        )
        # Per-rank stream for anything random inside the step (e.g. partial_fc sampling).
        torch.manual_seed(tcfg.seed + 1_000_003 * (runtime.rank + 1))

        probe: nn.Module = self.nets.probe
        if runtime.distributed:
            # broadcast_buffers=False: BN running statistics only matter in eval mode; every rank
            # keeps its own estimate between checkpoints and save_checkpoint() re-syncs them
            # from rank 0, so saved state is the same on all ranks. The pool is never a DDP buffer.
            probe = nn.parallel.DistributedDataParallel(
                probe,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_buffer_sync_kwargs(tcfg.broadcast_buffers),
            )
        if tcfg.compile:
            probe = torch.compile(probe)  # type: ignore[assignment]
        self.probe = probe

        ocfg = cfg.optim
        self.optimizer = torch.optim.SGD(
            [
                {"params": list(self.nets.probe.parameters()), "name": "probe"},
                {"params": list(self.head.parameters()), "name": "head"},
            ],
            lr=ocfg.lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov and ocfg.momentum > 0,
            weight_decay=ocfg.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tcfg.amp == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tcfg.amp)

        pin = self.device.type == "cuda"
        workers = cfg.data.workers
        self.instance_loader = make_loader(
            InstanceDataset(db), self.instance_sampler, workers=(workers + 1) // 2,
            prefetch=cfg.data.prefetch, pin_memory=pin,
        )
        self.identity_loader = make_loader(
            IdentityDataset(db), self.identity_sampler, workers=workers // 2,
            prefetch=cfg.data.prefetch, pin_memory=pin,
        )
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.finished = False
        self.best_effort_resume = False
        self.stats = RunStats()

    def _create_backbone(self, models: Any) -> nn.Module:
        """The configured backbone, built for the db's image size."""
        name = self.config.model.backbone
        height, width = self.image_size
        if height != width:
            raise TrainingError(f"the training db holds {height}x{width} images; need squares")
        kwargs: dict[str, Any] = {}
        try:
            native = models.input_size(name)
        except ValueError as exc:
            raise TrainingError(f"model.backbone: {exc}") from exc
        if height != native:
            kwargs["input_size"] = height  # backbones size their final pooling from it
        try:
            return models.create(name, embedding_size=self.config.model.embedding_size, **kwargs)
        except TypeError as exc:
            raise TrainingError(
                f"backbone {name!r} expects {native}x{native} inputs and cannot be built for the "
                f"db's {height}x{width} images: {exc}"
            ) from exc

    # ------------------------------------------------------------------ schedule

    @property
    def progress_epochs(self) -> float:
        return self.epoch + self.step_in_epoch / self.steps_per_epoch

    def current_lr(self) -> float:
        o = self.config.optim
        return o.lr * lr_multiplier(
            self.progress_epochs,
            total_epochs=self.config.train.epochs,
            schedule=o.schedule,
            milestones=o.milestones,
            gamma=o.gamma,
            warmup_epochs=o.warmup_epochs,
            min_lr_ratio=o.min_lr / o.lr,
        )

    def reached_end(self) -> bool:
        max_steps = self.config.train.max_steps
        return self.epoch >= self.config.train.epochs or (
            max_steps is not None and self.global_step >= max_steps
        )

    @property
    def total_steps(self) -> int:
        total = self.config.train.epochs * self.steps_per_epoch
        if self.config.train.max_steps is not None:
            total = min(total, self.config.train.max_steps)
        return total

    # ------------------------------------------------------------------ the step

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(
        self,
        instance: tuple[torch.Tensor, torch.Tensor],
        identity: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> StepResult:
        """One optimiser step on one instance batch and one identity batch (uint8 images)."""
        dev = self.device
        inst_images, inst_labels = (t.to(dev, non_blocking=True) for t in instance)
        view1, view2, id_labels = (t.to(dev, non_blocking=True) for t in identity)
        half = inst_images.shape[0] // 2
        x = torch.cat([view1, inst_images[:half]])
        y = torch.cat([view2, inst_images[half:]])
        labels_x = torch.cat([id_labels, inst_labels[:half]])
        labels_y = torch.cat([id_labels, inst_labels[half:]])
        images = normalize(torch.cat([x, y]))
        n_x = x.shape[0]

        set_lr(self.optimizer, self.current_lr())
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            embeddings = self.probe(images)
        if self.head.requires_gallery:
            self.nets.update_gallery()  # EMA step before the gallery forward (DESIGN §1.3)
            with self._autocast():
                gallery = self.nets.gallery_forward(images)
            out = self.head(
                embeddings[:n_x].float(), labels_x, gallery[:n_x].float(),
                embeddings[n_x:].float(), labels_y, gallery[n_x:].float(),
            )
        else:
            out = self.head(embeddings.float(), torch.cat([labels_x, labels_y]))
        loss = out.loss
        loss_value = self._mean_across_ranks(loss.detach().float())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss became {loss_value} at step {self.global_step + 1} (epoch "
                f"{self.epoch}, lr {self.current_lr():.4g}); stopped before the optimiser step"
            )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        stats = {k: float(v) for k, v in out.stats.items()}
        return StepResult(loss_value, stats, images.shape[0] * self.runtime.world_size)

    def _mean_across_ranks(self, value: torch.Tensor) -> float:
        if self.runtime.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.runtime.world_size
        return float(value)

    # ------------------------------------------------------------------ state

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BN buffers (probe) so saved state is rank-independent."""
        if not self.runtime.distributed or self.config.train.broadcast_buffers:
            return
        for buffer in self.nets.probe.buffers():
            dist.broadcast(buffer, src=0)

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = capture_rng_state()
        if not self.runtime.distributed:
            return [state]
        states: list[Any] = [None] * self.runtime.world_size
        dist.all_gather_object(states, state)
        return states

    def state_dict(self) -> dict[str, Any]:
        """The whole training state (collective: call on every rank)."""
        self._sync_buffers()
        head_state = self.head.full_state_dict()
        optimizer_state = self._optimizer_full_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": {
                "backbone": self.config.model.backbone,
                "embedding_size": self.config.model.embedding_size,
                "image_size": list(self.image_size),
                "input_size": self.image_size[0],  # models.create(..., input_size=...)
            },
            "probe": _unwrap(self.nets.probe).state_dict(),
            "gallery": self.nets.gallery.state_dict(),
            "head": head_state,
            "optimizer": optimizer_state,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.runtime.world_size,
            "batch_size": self.batch_size,
            "identity_position": self.global_step,
            "finished": self.finished,
            "rng": self._gather_rng(),
        }

    def _optimizer_full_state(self) -> dict[str, Any]:
        """Optimiser state with the head's momentum stored whole (unsharded).

        Head parameters (fc / partial_fc centres) are sharded across ranks; their momentum is
        gathered through the head's own ``full_state_dict`` by temporarily swapping each
        parameter's data with its momentum buffer, so a checkpoint resumes on any world size.
        """
        state = self.optimizer.state_dict()
        head_params = list(self.head.parameters())
        if not head_params:
            return state
        state["head_momentum_full"] = self._head_tensors_full(
            [self.optimizer.state.get(p, {}).get("momentum_buffer") for p in head_params]
        )
        first_head = len(self.optimizer.param_groups[0]["params"])
        for i in range(len(head_params)):
            state["state"].pop(first_head + i, None)
        return state

    def _head_tensors_full(self, tensors: list[torch.Tensor | None]) -> dict[str, Any] | None:
        if any(t is None for t in tensors):
            return None
        params = list(self.head.parameters())
        saved = [p.data for p in params]
        try:
            for p, t in zip(params, tensors, strict=True):
                p.data = t  # type: ignore[assignment]
            return self.head.full_state_dict()
        finally:
            for p, d in zip(params, saved, strict=True):
                p.data = d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint written by ``state_dict`` (any earlier world size)."""
        same_layout = (
            state["world_size"] == self.runtime.world_size
            and state["batch_size"] == self.batch_size
        )
        _unwrap(self.nets.probe).load_state_dict(state["probe"])
        self.nets.gallery.load_state_dict(state["gallery"])
        self._load_optimizer(state["optimizer"])  # before the head: it borrows the head
        try:
            self.head.load_full_state_dict(state["head"])
        except ValueError as exc:
            raise TrainingError(f"the checkpoint's head does not fit this run: {exc}") from exc
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        # A finished run continues when the config now asks for more (e.g. --epochs raised).
        self.finished = bool(state["finished"]) and self.reached_end()
        if same_layout:
            self.step_in_epoch = int(state["step_in_epoch"])
        else:
            # Continue at the same share of the epoch; batches differ from the original run.
            consumed = state["step_in_epoch"] * state["batch_size"] * state["world_size"]
            self.step_in_epoch = min(
                consumed // (self.batch_size * self.runtime.world_size), self.steps_per_epoch
            )
            self.best_effort_resume = True
        rng = state["rng"]
        if self.runtime.rank < len(rng):
            restore_rng_state(rng[self.runtime.rank])

    def save_checkpoint(self, path: Path) -> None:
        """Write the training state atomically (collective; rank 0 writes)."""
        state = self.state_dict()
        if self.runtime.is_main:
            atomic_save(state, path)
        self.runtime.barrier()

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        state = dict(state)
        head_full = state.pop("head_momentum_full", None)
        self.optimizer.load_state_dict(state)
        if head_full is None:
            return
        # Re-shard the whole head momentum for this world size through the head itself; the
        # caller loads the real head state afterwards.
        self.head.load_full_state_dict(head_full)
        for p in self.head.parameters():
            self.optimizer.state[p]["momentum_buffer"] = p.detach().clone()

    # ------------------------------------------------------------------ loop

    def batches(self) -> Iterator[tuple[Any, Any, float]]:
        """This epoch's remaining (instance, identity, seconds waited) from both loaders."""
        self.instance_sampler.set_epoch(self.epoch, start_step=self.step_in_epoch)
        inst_iter = iter(self.instance_loader)
        while True:
            t0 = time.perf_counter()
            try:
                instance = next(inst_iter)
            except StopIteration:
                return
            identity = next(self._identity_iter)
            yield instance, identity, time.perf_counter() - t0

    def open_identity_stream(self) -> None:
        """One endless identity iterator for the whole run (workers are never respawned)."""
        self.identity_sampler.set_position(self.global_step)
        self._identity_iter = iter(self.identity_loader)

    def close(self) -> None:
        it = getattr(self, "_identity_iter", None)
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._identity_iter = None  # type: ignore[assignment]
