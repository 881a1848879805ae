"""One training run's folder: where it goes, resume or fresh start, the saved config, the summary.

The training itself is :meth:`f2c.training.loop.Trainer.fit`.

Run folder ``<train.out_dir>/<run name>/``: ``config.yaml`` (resolved configuration),
``checkpoint.pt`` (latest complete state, replaced atomically), ``metrics.jsonl`` /
``metrics.csv``, ``metrics.png``, ``summary.json``, ``tensorboard/`` (event files of the metric
rows, when the tensorboard package is installed).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from f2c.config import Config, save_config
from f2c.data.sources import TrainingSource, open_training_source
from f2c.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from f2c.training.errors import NonFiniteLossError, TrainingError
from f2c.training.loop import FitResult, Trainer
from f2c.training.metrics import MetricsLog, format_summary, plot_metrics, write_summary
from f2c.training.runtime import Runtime, require_visible
from f2c.training.tensorboard import open_tensorboard

__all__ = ["CHECKPOINT_NAME", "RunPlan", "plan_run", "run_training"]


@dataclass(frozen=True)
class RunPlan:
    run_dir: Path
    resume_from: Path | None  # checkpoint to continue, or None for a fresh start


def plan_run(
    config: Config, *, resume: str | None = None, fresh: bool = False, auto_named: bool = False
) -> RunPlan:
    """Where this run writes and whether it continues an earlier one.

    ``resume`` (a run folder or checkpoint file) must exist. Otherwise the run folder is
    ``out_dir/name``; an unfinished run there is continued; a finished one is an error, except
    for an automatically named run, which moves on to ``name-2``, ``name-3``, … ``fresh`` starts
    over in the folder, replacing what is there.
    """
    if resume is not None:
        path = Path(resume)
        checkpoint = path / CHECKPOINT_NAME if path.is_dir() else path
        if not checkpoint.is_file():
            raise TrainingError(f"--resume: no checkpoint at {checkpoint}")
        return RunPlan(checkpoint.parent, checkpoint)
    base = Path(config.train.out_dir) / config.run_name()
    run_dir = base
    suffix = 1
    while True:
        checkpoint = run_dir / CHECKPOINT_NAME
        if fresh or not checkpoint.is_file():
            return RunPlan(run_dir, None)
        state = load_checkpoint(checkpoint)
        if not state.get("finished", False):
            return RunPlan(run_dir, checkpoint)
        if not auto_named:
            raise TrainingError(
                f"{run_dir} holds a finished run (see {run_dir / 'summary.json'}); choose another "
                "--train.name, or pass --fresh to start over there"
            )
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")


def _say(runtime: Runtime, message: str) -> None:
    if runtime.is_main:
        print(message, file=sys.stderr, flush=True)


def run_training(
    config: Config,
    runtime: Runtime,
    plan: RunPlan,
    *,
    sources: list[Any],
    eval_pairs: str | None,
    pixel_baseline: float | None,
    started: float | None = None,
) -> dict[str, Any]:
    """Train (or continue) the run of ``plan``; returns the summary (all ranks)."""
    started = time.perf_counter() if started is None else started
    run_dir = plan.run_dir
    state = (
        load_checkpoint(plan.resume_from, complete=True)
        if plan.resume_from is not None else None
    )
    if state is not None:
        config = keep_pool_size(config, state)
    if runtime.is_main:
        if plan.resume_from is None and run_dir.exists():
            for name in (CHECKPOINT_NAME, "metrics.jsonl", "metrics.csv", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir)
    runtime.barrier()
    require_visible(runtime, run_dir / "config.yaml", "the run folder")  # shared across nodes

    try:
        db: TrainingSource = open_training_source(list(sources))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot open the training db: {exc}") from exc
    trainer = Trainer(config, runtime, db, run_dir)
    resumed_step: int | None = None
    if state is not None:
        trainer.load_state_dict(state, plan.resume_from or "checkpoint")
        resumed_step = trainer.global_step
        _say(runtime, f"resuming {run_dir} at step {trainer.global_step} (epoch {trainer.epoch})")
        if trainer.best_effort_resume:
            _say(runtime, "note: world size or batch size changed; the data order differs from "
                          "the original run from here on")
    log = MetricsLog(run_dir, resume_step=resumed_step) if runtime.is_main else None
    if log is not None:
        trainer.sinks.append(log)
    board = open_tensorboard(run_dir, is_main=runtime.is_main, enabled=config.train.tensorboard,
                             resume_step=resumed_step)
    if board is not None:
        trainer.sinks.append(board)
    status = "failed"
    fit = FitResult({}, None)
    try:
        if not trainer.finished:
            fit = trainer.fit(eval_pairs)
            trainer.finished = True
            trainer.save_checkpoint()
        status = "finished"
    except NonFiniteLossError as exc:
        status = f"stopped: {exc}"
        raise
    finally:
        if board is not None:
            board.close()
        if status != "finished" and runtime.is_main:
            kept = trainer.checkpoint_path if trainer.checkpoint_path.exists() else None
            summary = {"run": str(run_dir), "status": status, "head": config.head.name,
                       "last_good_checkpoint": str(kept) if kept else None}
            write_summary(summary, run_dir)

    # Final held-out verification of the probe (and of the EMA gallery net for reference).
    probe_acc = gallery_acc = None
    if runtime.is_main and eval_pairs is not None:
        probe_acc = fit.accuracy if fit.accuracy is not None else trainer.evaluate(eval_pairs)
        if trainer.head.requires_gallery:  # baseline heads never update the gallery net
            gallery_acc = trainer.evaluate(eval_pairs, "gallery")
    runtime.barrier()
    summary = _summary(trainer, status, started, resumed_step, fit.last_row)
    summary.update(held_out_accuracy=probe_acc, held_out_accuracy_gallery_net=gallery_acc,
                   pixel_baseline_accuracy=pixel_baseline)
    if runtime.is_main and log is not None:
        write_summary(summary, run_dir)
        log.write_csv()
        plot_metrics(log.rows(), run_dir / "metrics.png")
    return summary


def _summary(
    trainer: Trainer, status: str, started: float, resumed_step: int | None,
    last: dict[str, Any],
) -> dict[str, Any]:
    config, st = trainer.config, trainer.stats
    return {
        "run": str(trainer.run_dir),
        "status": status,
        "head": config.head.name,
        "backbone": config.model.backbone,
        "held_out_accuracy": None,
        "held_out_accuracy_gallery_net": None,
        "pixel_baseline_accuracy": None,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": st.step_seconds,
        "images_per_second": st.images / st.step_seconds if st.step_seconds else None,
        "data_wait_share": st.data_seconds / st.step_seconds if st.step_seconds else None,
        "steps": trainer.global_step,
        "steps_this_process": st.steps,
        "resumed_from_step": resumed_step,
        "epochs": config.train.epochs,
        "final_loss": last.get("loss"),
        "in_pool_fraction": last.get("in_pool_fraction"),
        "pool_size": trainer.pool_size,
        "num_classes": trainer.num_classes,
        "num_images": len(trainer.db),
        "image_size": trainer.image_size[0],
        "batch_size_per_rank": config.train.batch_size,
        "world_size": trainer.runtime.world_size,
        "device": str(trainer.device),
        "checkpoint": str(trainer.checkpoint_path),
    }


def keep_pool_size(config: Config, state: dict[str, Any]) -> Config:
    """Pin a resumed F²C run to its checkpoint's pool size.

    With neither ``head.pool_size`` nor ``head.pool_ratio`` given, the size is derived from the
    world size (at least twice one pass's inserts), so a run continued on another number of
    ranks would otherwise build a pool of a different size than the one it saved.
    """
    head = state.get("head", {})
    if config.head.name != "f2c" or head.get("kind") != "f2c":
        return config
    if config.head.pool_size is not None or config.head.pool_ratio is not None:
        return config
    return replace(config, head=replace(config.head, pool_size=int(head["pool_size"])))


def print_summary(summary: dict[str, Any]) -> None:
    keys = ["head", "backbone", "held_out_accuracy", "held_out_accuracy_gallery_net",
            "pixel_baseline_accuracy", "wall_seconds", "images_per_second", "data_wait_share",
            "steps", "final_loss", "in_pool_fraction", "pool_size", "num_classes", "num_images",
            "image_size", "world_size", "device", "run"]
    shown = {k: summary.get(k) for k in keys}
    for k in ("held_out_accuracy", "held_out_accuracy_gallery_net", "pixel_baseline_accuracy"):
        v = shown[k]
        shown[k] = f"{100 * v:.2f}%" if isinstance(v, float) and math.isfinite(v) else v
    print(format_summary(shown), flush=True)
