"""The trainer: one object that owns a run's networks, head, optimiser, loaders and counters.

One ``Trainer`` per process. Under torchrun every rank builds the same objects; the probe network
is wrapped in DDP, the head is not (it gathers what it needs itself). Collective calls
(``fit``, ``state_dict``, ``save_checkpoint``) must be made by every rank.

Each iteration takes one instance batch and one identity batch, lays them out as the two F²C
views (:func:`~f2c.training.step.f2c_views`) and runs :func:`~f2c.training.step.train_step`.
Baseline heads (fc, partial_fc) see exactly the same images and labels, so the comparison is fair.
Metric rows go to every sink in ``Trainer.sinks`` (anything with ``append(row)``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from f2c.config import Config
from f2c.data.sources import TrainingSource
from f2c.heads import ProbeGallery, minimum_pool_size
from f2c.training import build
from f2c.training.build import resolve_pool_size, unwrap
from f2c.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    atomic_save,
    capture_rng_state,
    restore_rng_state,
    validate_checkpoint,
)
from f2c.training.errors import NonFiniteLossError, TrainingError
from f2c.training.runtime import Runtime
from f2c.training.schedule import lr_multiplier, set_lr
from f2c.training.step import (
    StepModel,
    StepResult,
    build_optimizer,
    f2c_views,
    train_step,
)

__all__ = [
    "FitResult",
    "MetricsSink",
    "NonFiniteLossError",
    "RunStats",
    "StepResult",
    "Trainer",
    "TrainingError",
    "minimum_pool_size",
    "resolve_pool_size",
]


class MetricsSink(Protocol):
    """Where metric rows go (``MetricsLog`` writes JSONL; other sinks may plot or stream)."""

    def append(self, row: Mapping[str, Any]) -> None: ...


@dataclass
class RunStats:
    """Timing over the steps of this process (since start or resume)."""

    steps: int = 0
    images: int = 0
    step_seconds: float = 0.0
    data_seconds: float = 0.0

    def add(self, images: int, seconds: float, waited: float) -> None:
        self.steps += 1
        self.images += images
        self.step_seconds += seconds
        self.data_seconds += waited


@dataclass
class FitResult:
    last_row: dict[str, Any]  # the last train row logged
    accuracy: float | None  # held-out accuracy of the final weights, if the loop measured it


class Trainer:
    """Builds everything for one process and runs (or resumes) the training trajectory."""

    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        db: TrainingSource,
        run_dir: Path,
        *,
        sinks: Sequence[MetricsSink] = (),
    ) -> None:
        tcfg = config.train
        self.config, self.runtime, self.db, self.run_dir = config, runtime, db, run_dir
        self.device = runtime.device
        self.batch_size = tcfg.batch_size
        self.num_classes = db.num_classes
        self.image_size = db.image_size
        autocast = build.amp_dtype(tcfg, self.device)
        self.identity_sampler, self.instance_sampler = build.build_samplers(db, tcfg, runtime)
        self.steps_per_epoch = self.instance_sampler.steps_per_epoch
        self.pool_size = (
            resolve_pool_size(config, self.num_classes, runtime.world_size)
            if config.head.name == "f2c" else None
        )
        self.nets, self.head = self._build_networks()
        # Per-rank stream for anything random inside the step (e.g. partial_fc sampling).
        torch.manual_seed(tcfg.seed + 1_000_003 * (runtime.rank + 1))
        self.model = StepModel(
            nets=self.nets,
            head=self.head,
            optimizer=build_optimizer(self.nets.probe, self.head, config.optim),
            probe=build.wrap_probe(self.nets.probe, tcfg, runtime),
            scaler=torch.amp.GradScaler(self.device.type, enabled=tcfg.amp == "fp16"),
            amp_dtype=autocast,
            clip_grad_norm=config.optim.clip_grad_norm,
        )
        self.identity_loader, self.instance_loader = build.build_loaders(
            db, self.identity_sampler, self.instance_sampler, config.data, self.device
        )
        self.sinks: list[MetricsSink] = list(sinks)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.finished = False
        self.best_effort_resume = False
        self.stats = RunStats()
        self._identity_iter: Iterator[Any] | None = None

    def _build_networks(self) -> tuple[ProbeGallery, torch.nn.Module]:
        """Probe, gallery and head, with the same initial weights on every rank.

        DDP also broadcasts rank 0's weights at wrap time, but the gallery copy and the head
        are built before that. Weights loaded from elsewhere belong on the backbone here,
        before the gallery copies it.
        """
        torch.manual_seed(self.config.train.seed)
        backbone = build.build_backbone(self.config, self.image_size)
        nets = ProbeGallery(backbone, momentum=self.config.head.ema_momentum).to(self.device)
        head = build.build_head(self.config, self.num_classes, self.pool_size, self.device)
        return nets, head

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.model.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler:
        assert self.model.scaler is not None
        return self.model.scaler

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

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

    def step(
        self,
        instance: tuple[torch.Tensor, torch.Tensor],
        identity: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> StepResult:
        """One optimiser step on one instance batch and one identity batch (uint8 images).

        Does not advance the counters (``fit`` does, once the step is timed)."""
        set_lr(self.optimizer, self.current_lr())
        try:
            return train_step(self.model, f2c_views(instance, identity, self.device))
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"loss became {exc.value} at step {self.global_step + 1} (epoch "
                f"{self.epoch}, lr {self.current_lr():.4g}); stopped before the optimiser step",
                exc.value,
            ) from None

    # ------------------------------------------------------------------ the loop

    def fit(self, eval_pairs: str | None = None) -> FitResult:
        """Train until the configured end, writing checkpoints and metric rows as it goes.

        Evaluates on ``eval_pairs`` after each epoch when ``train.eval_every_epoch`` is set.
        """
        cfg = self.config.train
        bar = tqdm(
            total=self.total_steps, initial=self.global_step, unit="step", dynamic_ncols=True,
            disable=not (self.runtime.is_main and cfg.progress), file=sys.stderr,
        )
        self._open_identity_stream()
        window = RunStats()
        last: dict[str, Any] = {}
        accuracy: float | None = None
        try:
            while not self.reached_end():
                t_prev = time.perf_counter()
                for instance, identity, waited in self._batches():
                    result = self.step(instance, identity)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    self.step_in_epoch += 1
                    self.global_step += 1
                    self.stats.add(result.images, now - t_prev, waited)
                    window.add(result.images, now - t_prev, waited)
                    bar.update(1)
                    if self.global_step % cfg.log_every == 0 or self.global_step == 1:
                        last = self._train_row(result, window)
                        window = RunStats()
                        self._emit(last)
                        bar.set_postfix(_postfix(last), refresh=False)
                    if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.reached_end():
                        return FitResult(last, None)  # mid-epoch: no evaluation of these weights
                    t_prev = time.perf_counter()
                accuracy = self._end_epoch(eval_pairs, bar)
        finally:
            bar.close()
            self._close_identity_stream()
        return FitResult(last, accuracy)

    def _batches(self) -> Iterator[tuple[Any, Any, float]]:
        """This epoch's remaining (instance, identity, seconds waited) from both loaders."""
        self.instance_sampler.set_epoch(self.epoch, start_step=self.step_in_epoch)
        assert self._identity_iter is not None
        inst_iter = iter(self.instance_loader)
        while True:
            t0 = time.perf_counter()
            try:
                instance = next(inst_iter)
            except StopIteration:
                return
            identity = next(self._identity_iter)
            yield instance, identity, time.perf_counter() - t0

    def _open_identity_stream(self) -> None:
        """One endless identity iterator for the whole run (workers are never respawned)."""
        self.identity_sampler.set_position(self.global_step)
        self._identity_iter = iter(self.identity_loader)

    def _close_identity_stream(self) -> None:
        # A PrefetchLoader's iterator closes; a DataLoader's shuts its workers down.
        for name in ("close", "_shutdown_workers"):
            shutdown = getattr(self._identity_iter, name, None)
            if shutdown is not None:
                shutdown()
                break
        self._identity_iter = None

    def _train_row(self, result: StepResult, window: RunStats) -> dict[str, Any]:
        seconds = max(window.step_seconds, 1e-9)
        return {
            "kind": "train",
            "step": self.global_step,
            "epoch": round(self.progress_epochs, 4),
            "loss": result.loss,
            "lr": self.current_lr(),
            "images_per_second": window.images / seconds,
            "data_wait_share": window.data_seconds / seconds,
            **result.stats,
        }

    def _emit(self, row: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.append(row)

    def _end_epoch(self, eval_pairs: str | None, bar: Any) -> float | None:
        """Advance the epoch counter, evaluate if asked, checkpoint; returns the accuracy."""
        self.epoch += 1
        self.step_in_epoch = 0
        accuracy = None
        if eval_pairs is not None and self.config.train.eval_every_epoch:
            if self.runtime.is_main:
                accuracy = self.evaluate(eval_pairs)
                self._emit({"kind": "eval", "step": self.global_step, "epoch": self.epoch,
                            "held_out_accuracy": accuracy})
                bar.write(f"epoch {self.epoch}: held-out accuracy {100 * accuracy:.2f}%")
            self.runtime.barrier()
        self.save_checkpoint()
        return accuracy

    def evaluate(self, pairs_path: str, net: str = "probe") -> float:
        """Held-out verification accuracy (10-fold) of the probe or gallery net on a pair set."""
        from f2c.evaluation.pairs import evaluate_pairs

        model = unwrap(self.nets.probe) if net == "probe" else self.nets.gallery
        result = evaluate_pairs(
            model,
            pairs_path,
            device=self.device,
            batch_size=self.config.train.eval_batch_size,
            flip=self.config.train.eval_flip,
            image_size=self.image_size[0],
        )
        return float(result["accuracy"])

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
        """The whole training state (collective: call on every rank).

        The identity loader's position is not stored: it is ``global_step`` (one identity batch
        per step). Checkpoints from before that was dropped carry ``identity_position`` too,
        always equal to ``global_step``; loading ignores it.
        """
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
            "probe": unwrap(self.nets.probe).state_dict(),
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
            return self.head.full_state_dict()  # type: ignore[no-any-return]
        finally:
            for p, d in zip(params, saved, strict=True):
                p.data = d

    def load_state_dict(self, state: dict[str, Any], path: str | Path = "checkpoint") -> None:
        """Restore a checkpoint written by ``state_dict`` (any earlier world size).

        The state is validated against this run's networks first, so a checkpoint of another
        architecture or an edited one is one :class:`CheckpointError` naming ``path``.
        """
        validate_checkpoint(state, path, expected={
            "probe": unwrap(self.nets.probe).state_dict(),
            "gallery": self.nets.gallery.state_dict(),
        })
        same_layout = (
            state["world_size"] == self.runtime.world_size
            and state["batch_size"] == self.batch_size
        )
        unwrap(self.nets.probe).load_state_dict(state["probe"])
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

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Write the training state atomically (collective; rank 0 writes); by default to
        the run folder's checkpoint."""
        state = self.state_dict()
        if self.runtime.is_main:
            atomic_save(state, path if path is not None else self.checkpoint_path)
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


def _postfix(row: Mapping[str, Any]) -> dict[str, str]:
    postfix = {"img/s": f"{row['images_per_second']:.0f}", "loss": f"{row['loss']:.3f}",
               "lr": f"{row['lr']:.3g}"}
    if "in_pool_fraction" in row:
        postfix["in_pool"] = f"{row['in_pool_fraction']:.2f}"
    return postfix
