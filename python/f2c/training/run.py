"""One training run end to end: data, run folder, resume, the loop, evaluation, summary.

Run folder ``<train.out_dir>/<run name>/``: ``config.yaml`` (resolved configuration),
``checkpoint.pt`` (latest complete state, replaced atomically), ``metrics.jsonl`` /
``metrics.csv``, ``metrics.png``, ``summary.json``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from f2c.config import Config, save_config
from f2c.data.loaders import TrainingDb, open_training_db
from f2c.training.checkpoint import load_checkpoint
from f2c.training.loop import NonFiniteLossError, Trainer, TrainingError, _unwrap
from f2c.training.metrics import MetricsLog, format_summary, plot_metrics, write_summary
from f2c.training.runtime import Runtime

__all__ = ["CHECKPOINT_NAME", "RunPlan", "plan_run", "run_training"]

CHECKPOINT_NAME = "checkpoint.pt"


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
    state = load_checkpoint(plan.resume_from) if plan.resume_from is not None else None
    if state is not None:
        config = keep_pool_size(config, state)
    if runtime.is_main:
        if plan.resume_from is None and run_dir.exists():
            for name in (CHECKPOINT_NAME, "metrics.jsonl", "metrics.csv", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir)
    runtime.barrier()

    try:
        db: TrainingDb = open_training_db(sources)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot open the training db: {exc}") from exc
    trainer = Trainer(config, runtime, db, run_dir)
    resumed_step: int | None = None
    if state is not None:
        trainer.load_state_dict(state)
        resumed_step = trainer.global_step
        _say(runtime, f"resuming {run_dir} at step {trainer.global_step} (epoch {trainer.epoch})")
        if trainer.best_effort_resume:
            _say(runtime, "note: world size or batch size changed; the data order differs from "
                          "the original run from here on")
    log = MetricsLog(run_dir, resume_step=resumed_step) if runtime.is_main else None
    checkpoint_path = run_dir / CHECKPOINT_NAME
    tcfg = config.train
    status = "failed"
    last: dict[str, Any] = {}
    accuracy: float | None = None
    try:
        if not trainer.finished:
            last, accuracy = _train_loop(trainer, log, checkpoint_path, eval_pairs)
            trainer.finished = True
            trainer.save_checkpoint(checkpoint_path)
        status = "finished"
    except NonFiniteLossError as exc:
        status = f"stopped: {exc}"
        raise
    finally:
        trainer.close()
        if status != "finished" and runtime.is_main:
            kept = checkpoint_path if checkpoint_path.exists() else None
            summary = {"run": str(run_dir), "status": status, "head": config.head.name,
                       "last_good_checkpoint": str(kept) if kept else None}
            write_summary(summary, run_dir)

    # Final held-out verification of the probe (and of the EMA gallery net for reference).
    probe_acc = gallery_acc = None
    if runtime.is_main and eval_pairs is not None:
        probe_acc = accuracy if accuracy is not None else _evaluate(trainer, eval_pairs, "probe")
        if trainer.head.requires_gallery:  # baseline heads never update the gallery net
            gallery_acc = _evaluate(trainer, eval_pairs, "gallery")
    runtime.barrier()
    st = trainer.stats
    wall = time.perf_counter() - started
    summary: dict[str, Any] = {
        "run": str(run_dir),
        "status": status,
        "head": config.head.name,
        "backbone": config.model.backbone,
        "held_out_accuracy": probe_acc,
        "held_out_accuracy_gallery_net": gallery_acc,
        "pixel_baseline_accuracy": pixel_baseline,
        "wall_seconds": wall,
        "train_seconds": st.step_seconds,
        "images_per_second": st.images / st.step_seconds if st.step_seconds else None,
        "data_wait_share": st.data_seconds / st.step_seconds if st.step_seconds else None,
        "steps": trainer.global_step,
        "steps_this_process": st.steps,
        "resumed_from_step": resumed_step,
        "epochs": tcfg.epochs,
        "final_loss": last.get("loss"),
        "in_pool_fraction": last.get("in_pool_fraction"),
        "pool_size": trainer.pool_size,
        "num_classes": trainer.num_classes,
        "num_images": len(db),
        "image_size": trainer.image_size[0],
        "batch_size_per_rank": tcfg.batch_size,
        "world_size": runtime.world_size,
        "device": str(runtime.device),
        "checkpoint": str(checkpoint_path),
    }
    if runtime.is_main and log is not None:
        write_summary(summary, run_dir)
        log.write_csv()
        plot_metrics(log.rows(), run_dir / "metrics.png")
    return summary


def _evaluate(trainer: Trainer, pairs_path: str, which: str) -> float:
    from f2c.evaluation.pairs import evaluate_pairs

    net = _unwrap(trainer.nets.probe) if which == "probe" else trainer.nets.gallery
    result = evaluate_pairs(
        net,
        pairs_path,
        device=trainer.device,
        batch_size=trainer.config.train.eval_batch_size,
        flip=trainer.config.train.eval_flip,
        image_size=trainer.image_size[0],
    )
    return float(result["accuracy"])


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


def _train_loop(
    trainer: Trainer, log: MetricsLog | None, checkpoint_path: Path, eval_pairs: str | None
) -> tuple[dict[str, Any], float | None]:
    """Epochs until done; returns the last logged row and the last held-out accuracy."""
    cfg = trainer.config.train
    runtime = trainer.runtime
    st = trainer.stats
    bar = tqdm(
        total=trainer.total_steps, initial=trainer.global_step, unit="step", dynamic_ncols=True,
        disable=not (runtime.is_main and cfg.progress), file=sys.stderr,
    )
    trainer.open_identity_stream()
    last: dict[str, Any] = {}
    accuracy: float | None = None
    window_images, window_seconds, window_data = 0, 0.0, 0.0
    done = False
    try:
        while not trainer.reached_end() and not done:
            t_prev = time.perf_counter()
            for instance, identity, waited in trainer.batches():
                result = trainer.step(instance, identity)
                if runtime.device.type == "cuda":
                    torch.cuda.synchronize(runtime.device)
                now = time.perf_counter()
                elapsed = now - t_prev
                trainer.step_in_epoch += 1
                trainer.global_step += 1
                st.steps += 1
                st.images += result.images
                st.step_seconds += elapsed
                st.data_seconds += waited
                window_images += result.images
                window_seconds += elapsed
                window_data += waited
                bar.update(1)
                if trainer.global_step % cfg.log_every == 0 or trainer.global_step == 1:
                    last = {
                        "kind": "train",
                        "step": trainer.global_step,
                        "epoch": round(trainer.progress_epochs, 4),
                        "loss": result.loss,
                        "lr": trainer.current_lr(),
                        "images_per_second": window_images / max(window_seconds, 1e-9),
                        "data_wait_share": window_data / max(window_seconds, 1e-9),
                        **result.stats,
                    }
                    window_images, window_seconds, window_data = 0, 0.0, 0.0
                    if log is not None:
                        log.append(last)
                    postfix = {"img/s": f"{last['images_per_second']:.0f}",
                               "loss": f"{result.loss:.3f}", "lr": f"{last['lr']:.3g}"}
                    if "in_pool_fraction" in result.stats:
                        postfix["in_pool"] = f"{result.stats['in_pool_fraction']:.2f}"
                    bar.set_postfix(postfix, refresh=False)
                if cfg.checkpoint_every and trainer.global_step % cfg.checkpoint_every == 0:
                    trainer.save_checkpoint(checkpoint_path)
                if cfg.max_steps is not None and trainer.global_step >= cfg.max_steps:
                    done = True
                    break
                t_prev = time.perf_counter()
            if done:
                break
            trainer.epoch += 1
            trainer.step_in_epoch = 0
            if eval_pairs is not None and cfg.eval_every_epoch:
                if runtime.is_main:
                    accuracy = _evaluate(trainer, eval_pairs, "probe")
                    row = {"kind": "eval", "step": trainer.global_step,
                           "epoch": trainer.epoch, "held_out_accuracy": accuracy}
                    if log is not None:
                        log.append(row)
                    bar.write(f"epoch {trainer.epoch}: held-out accuracy {100 * accuracy:.2f}%")
                runtime.barrier()
            trainer.save_checkpoint(checkpoint_path)
    finally:
        bar.close()
    if done:
        accuracy = None  # the last per-epoch accuracy is stale: evaluate the final weights
    return last, accuracy


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
