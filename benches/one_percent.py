"""The 1% experiment: F²C with a pool of about 1% of the identities, against FC and Partial FC.

Synthetic identities, enough of them that a pool of ~1% of them is above the pool-size minimum
``world × (B + ⌈B/2⌉)`` (docs/design.md §1); the same backbone, epochs, data and seed for every
configuration:

- ``f2c-1%``: F²C, Q ≈ 1% of C;
- ``f2c-10%``: F²C, Q ≈ 10% of C;
- ``fc``: the full softmax over all C classes;
- ``pfc-0.1``: Partial FC, 10% of the negative centres sampled per step.

Each configuration is one ``python -m f2c.train`` process (``--train.out_dir``,
``--data.synthetic.*``, ``--head.*``). Its final checkpoint is then scored on the synthetic
set's held-out pairs — identities disjoint from training, 10 contiguous folds, threshold chosen
on the other nine (docs/design.md §4) — with ``f2c.evaluation``. The head's own cost is measured
in a fresh process per configuration: the trainer's ``train_step`` with the backbone replaced by
a table of embeddings (so only the head's forward, backward, pool writes and optimiser update
count), on the run's shapes (C, Q, B, D); step time is the median of timed steps, peak memory the
rise of the process's peak RSS (CPU) or of CUDA's peak allocation over a warmed-up baseline.

    python benches/one_percent.py --out benches/results/one-percent-<date>   # ~35 min, quiet 2-core
    python benches/one_percent.py --smoke --out /tmp/one-percent              # seconds of training

Writes ``<out>.csv``, ``<out>.md`` (sizes, machine, wall time, the table), ``<out>.png`` and
``<out>/summary-<config>.json`` (each run's own summary). Runs go to ``--work`` (default
``/tmp/f2c-one-percent``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_WORK = Path("/tmp/f2c-one-percent")


@dataclass(frozen=True)
class Sizes:
    identities: int
    images_per_identity: int
    test_identities: int
    pairs_per_fold: int
    image_size: int
    batch_size: int
    epochs: int
    seed: int = 0
    backbone: str = "tinyfacenet"
    embedding_size: int = 128
    max_steps: int | None = None  # smoke only: stop each run early


# About 35 minutes on a quiet 2-core machine: 5,000 identities (Q = 50 at 1%, twice the
# minimum 24 of B = 16), 25,000 images, 2 epochs = 3,124 steps per configuration.
FULL = Sizes(identities=5_000, images_per_identity=5, test_identities=300, pairs_per_fold=300,
             image_size=48, batch_size=16, epochs=2)
# Seconds per configuration: 600 identities, B = 4 (minimum pool 6 = 1% of 600).
SMOKE = Sizes(identities=600, images_per_identity=2, test_identities=20, pairs_per_fold=10,
              image_size=32, batch_size=4, epochs=1, embedding_size=32, max_steps=3)


@dataclass(frozen=True)
class Configuration:
    id: str
    head: str
    pool_ratio: float | None = None
    sample_rate: float | None = None

    def options(self) -> list[str]:
        out = ["--head.name", self.head]
        if self.pool_ratio is not None:
            out += ["--head.pool_ratio", str(self.pool_ratio)]
        if self.sample_rate is not None:
            out += ["--head.sample_rate", str(self.sample_rate)]
        return out


CONFIGURATIONS = [
    Configuration("f2c-1%", "f2c", pool_ratio=0.01),
    Configuration("f2c-10%", "f2c", pool_ratio=0.1),
    Configuration("fc", "fc"),
    Configuration("pfc-0.1", "partial_fc", sample_rate=0.1),
]


def train_options(sizes: Sizes, work: Path, device: str, threads: int | None) -> list[str]:
    """The options every configuration shares (data, backbone, budget, seed, output)."""
    s = sizes
    out = [
        "--train.out_dir", str(work / "runs"),
        "--data.synthetic.cache_dir", str(work / "cache"),
        "--data.synthetic.num_identities", str(s.identities),
        "--data.synthetic.images_per_identity", str(s.images_per_identity),
        "--data.synthetic.num_test_identities", str(s.test_identities),
        "--data.synthetic.pairs_per_fold", str(s.pairs_per_fold),
        "--data.synthetic.image_size", str(s.image_size),
        "--data.synthetic.seed", str(s.seed),
        "--model.backbone", s.backbone,
        "--model.embedding_size", str(s.embedding_size),
        "--train.batch_size", str(s.batch_size),
        "--train.epochs", str(s.epochs),
        "--train.seed", str(s.seed),
        "--train.device", device,
        "--train.progress", "false",
        "--train.eval_every_epoch", "false",
    ]
    if s.max_steps is not None:
        out += ["--train.max_steps", str(s.max_steps)]
    if threads is not None:
        out += ["--train.threads", str(threads)]
    return out


def run_argv(config: Configuration, shared: list[str]) -> list[str]:
    """One configuration's ``python -m f2c.train`` options (it starts over in its folder)."""
    return [*shared, *config.options(), "--train.name", config.id, "--fresh"]


def prepare_data(argv: list[str]) -> Path:
    """Build (once, cached) the synthetic set the runs will use; returns its pairs file."""
    from f2c.train import build_config, build_parser
    from f2c.training.default_job import prepare_synthetic
    from f2c.training.runtime import init_runtime

    config, _ = build_config(build_parser().parse_args(argv))
    return Path(prepare_synthetic(config, init_runtime("cpu")).pairs_path)


def train(config: Configuration, argv: list[str], log: Path) -> tuple[dict[str, Any], float]:
    """One ``python -m f2c.train`` process; returns its summary and wall seconds."""
    cmd = [sys.executable, "-m", "f2c.train", *argv]
    started = time.perf_counter()
    with log.open("w") as out:
        out.write(shlex.join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{config.id}: training failed (status {done.returncode}); see {log}")
    run_dir = Path(argv[argv.index("--train.out_dir") + 1]) / config.id
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") != "finished":
        raise RuntimeError(f"{config.id}: run ended with status {summary.get('status')!r}")
    return summary, wall


def held_out_accuracy(run_dir: Path, pairs: Path, device: str) -> dict[str, float]:
    """10-fold accuracy (mean, std) of the run's probe network on the held-out pairs."""
    from f2c.evaluate import load_checkpoint_model
    from f2c.evaluation.pairs import evaluate_pairs

    model = load_checkpoint_model(run_dir / "checkpoint.pt", device=device)
    result = evaluate_pairs(model.module, pairs, device=device, batch_size=250, flip=True,
                            image_size=model.image_size)
    return {"accuracy": float(result["accuracy"]), "accuracy_std": float(result["accuracy_std"]),
            "pairs": int(result["pairs"])}


# --------------------------------------------------------------------------- head cost


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (needs Linux)")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS (Linux >= 4.0)


class _HeadOnly:
    """The trainer's ``train_step`` on fixed shapes, with a table of embeddings as the network:
    what remains is the head's forward, backward, pool writes and optimiser update."""

    def __init__(self, run_dir: Path, *, tiny: bool = False, steps_of_labels: int = 64) -> None:
        import numpy as np
        import torch

        from f2c.config import load_config
        from f2c.heads import ProbeGallery, minimum_pool_size
        from f2c.training.build import build_head
        from f2c.training.step import StepInput, StepModel, build_optimizer

        summary = json.loads((run_dir / "summary.json").read_text())
        config = load_config(run_dir / "config.yaml")
        self.device = torch.device(summary.get("device", "cpu"))
        b, d = config.train.batch_size, config.model.embedding_size
        rows = b + (b + 1) // 2  # one view
        classes, pool = int(summary["num_classes"]), summary.get("pool_size")
        if tiny:  # the same code on a head of negligible size (to fault the code pages in)
            classes = 4 * rows
            pool = minimum_pool_size(b, 1) if pool else None
        gen = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)

        class Table(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rows = torch.nn.Parameter(torch.randn(2 * rows, d, generator=gen))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.rows

        nets = ProbeGallery(Table()).to(self.device)
        self.head = build_head(config, classes, pool, self.device)
        model = StepModel(nets, self.head, build_optimizer(nets.probe, self.head, config.optim))
        self.inputs = []
        placeholder = torch.empty(2 * rows, 0, device=self.device)
        for _ in range(steps_of_labels):  # the trainer's layout: B identities in both views
            ids = torch.from_numpy(rng.choice(classes, size=b, replace=False))
            inst = torch.from_numpy(rng.integers(0, classes, size=(2, rows - b)))
            labels = torch.cat([ids, inst[0], ids, inst[1]]).to(self.device)
            self.inputs.append(StepInput(placeholder, labels, rows))
        self.model = model
        self.count = 0
        self.pool = pool

    def __call__(self) -> None:
        from f2c.training.step import train_step

        train_step(self.model, self.inputs[self.count % len(self.inputs)])
        self.count += 1

    def state_mb(self) -> float:
        """Head parameters, buffers and their optimiser state (exact, not sampled)."""
        import torch

        tensors = [*self.head.parameters(), *self.head.buffers()]
        head_params = {id(p) for p in self.head.parameters()}
        for param, state in self.model.optimizer.state.items():
            if id(param) in head_params:
                tensors += [v for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def head_cost(run_dir: Path, timed_steps: int) -> dict[str, float]:
    """Run in a fresh process (``--head-cost``): step time and peak memory of the run's head."""
    import torch

    cuda = torch.device(json.loads((run_dir / "summary.json").read_text())
                        .get("device", "cpu")).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        # Fault in the code a step runs with a throwaway instance, then measure from there.
        warm = _HeadOnly(run_dir, tiny=True, steps_of_labels=2)
        for _ in range(3):
            warm()
        del warm
        _reset_peak_rss()
        with open("/proc/self/statm") as f:
            base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    step = _HeadOnly(run_dir)
    # Fill the pool (each F²C pass inserts at most 1.5 B classes) and warm the allocator.
    warmup = 3 + (math.ceil(step.pool / 8) if step.pool else 0)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed_steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    return {
        "head_step_ms": 1e3 * statistics.median(times),
        "head_step_ms_min": 1e3 * min(times),
        "head_peak_mb": peak - base,
        "head_state_mb": step.state_mb(),
        "head_timed_steps": timed_steps,
    }


def measure_head(run_dir: Path, timed_steps: int, threads: int | None) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--head-cost", str(run_dir),
           "--timed-steps", str(timed_steps)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"head cost of {run_dir} failed:\n{done.stderr[-4000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_configuration(config: Configuration, argv: list[str], work: Path, out: Path, pairs: Path,
                      device: str, timed_steps: int, threads: int | None) -> dict[str, Any]:
    """Train one configuration, score it on the held-out pairs, measure its head: one table
    row."""
    print(f"[{time.strftime('%H:%M:%S')}] {config.id}: python -m f2c.train "
          f"{shlex.join(config.options())} …", flush=True)
    summary, wall = train(config, argv, work / f"{config.id}.log")
    run_dir = work / "runs" / config.id
    (out / f"summary-{config.id}.json").write_text(json.dumps(summary, indent=2) + "\n")
    row: dict[str, Any] = {"config": config.id, "head": config.head,
                           "sample_rate": config.sample_rate}
    pool = summary.get("pool_size")
    row["pool_size"] = pool
    row["pool_share"] = pool / summary["num_classes"] if pool else None
    row.update(held_out_accuracy(run_dir, pairs, device))
    row["trainer_held_out_accuracy"] = summary.get("held_out_accuracy")
    row["gallery_net_held_out_accuracy"] = summary.get("held_out_accuracy_gallery_net")
    row.update(measure_head(run_dir, timed_steps, threads))
    for key in ("images_per_second", "train_seconds", "steps", "epochs", "final_loss",
                "in_pool_fraction", "num_classes", "num_images"):
        row[key] = summary.get(key)
    row["run_wall_seconds"] = wall
    print(f"[{time.strftime('%H:%M:%S')}] {config.id}: accuracy {row['accuracy']:.2%} ± "
          f"{row['accuracy_std']:.2%}, head step {row['head_step_ms']:.2f} ms, run {wall:.0f} s",
          flush=True)
    return row


# --------------------------------------------------------------------------- report

COLUMNS = [  # (CSV key, Markdown header, format)
    ("config", "configuration", "{}"),
    ("pool_size", "Q", "{}"),
    ("pool_share", "Q / C", "{:.1%}"),
    ("accuracy", "held-out accuracy (10-fold)", "{:.2%}"),
    ("accuracy_std", "± std", "{:.2%}"),
    ("head_step_ms", "head step ms (median)", "{:.2f}"),
    ("head_peak_mb", "head peak MB", "{:.1f}"),
    ("head_state_mb", "head state MB", "{:.2f}"),
    ("images_per_second", "train img/s", "{:.0f}"),
    ("run_wall_seconds", "run wall s", "{:.0f}"),
    ("in_pool_fraction", "in-pool fraction", "{:.2f}"),
]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import csv

    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["config"] for r in rows]
    colours = ["tab:blue" if r["head"] == "f2c" else "tab:grey" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(names, [100 * r["accuracy"] for r in rows],
                yerr=[100 * r["accuracy_std"] for r in rows], color=colours, capsize=3)
    axes[0].set_ylabel("held-out accuracy, % (10-fold, ± std)")
    low = min(100 * (r["accuracy"] - r["accuracy_std"]) for r in rows)
    axes[0].set_ylim(max(0.0, 5 * math.floor(low / 5) - 5), 100)
    axes[1].bar(names, [r["head_step_ms"] for r in rows], color=colours)
    axes[1].set_ylabel("head step, ms (median)")
    axes[2].bar(names, [r["head_state_mb"] for r in rows], color=colours)
    axes[2].set_ylabel("head state (+ optimiser), MB")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def write_report(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    s = meta["sizes"]
    title = (f"{s['identities']:,} identities × {s['images_per_identity']}, B = {s['batch_size']}, "
             f"{s['epochs']} epoch(s), {s['backbone']} {s['image_size']} px")
    write_csv(rows, out.with_suffix(".csv"))
    plot(rows, out.with_suffix(".png"), title)
    text: list[str | None] = [
        f"# The 1% experiment — {meta['date']}",
        "",
        f"- **Command**: `{meta['command']}`",
        f"- **Machine**: {meta['machine']}; torch threads per run: {meta['threads'] or 'default'}"
        f", {meta['jobs']} configuration(s) at a time;"
        f" load average (1 min) at start {meta['load_start']:.1f}, at end {meta['load_end']:.1f}.",
        f"- **Note**: {meta['note']}" if meta["note"] else None,
        f"- **Sizes**: {title}; held-out: {s['test_identities']} identities, "
        f"{10 * s['pairs_per_fold']:,} pairs; seed {s['seed']}; embedding {s['embedding_size']}"
        + (f"; max {s['max_steps']} steps per run" if s["max_steps"] else "") + ".",
        f"- **Wall time**: {meta['wall_seconds'] / 60:.1f} min in all (data "
        f"{meta['data_seconds']:.0f} s, training runs, evaluation and head costs).",
        "- **Commit**: " + meta["commit"],
        "",
        markdown_table(rows),
        "",
        "Held-out accuracy: the final probe network on identities disjoint from training, "
        "10 contiguous folds, threshold exact on the other nine (`f2c.evaluation`). Head step: "
        "the trainer's `train_step` with the backbone replaced by a table of embeddings, on the "
        f"run's shapes, median of {meta['timed_steps']} steps after the pool is full. Head peak "
        "MB: rise of a fresh process's peak RSS over its warmed-up baseline (allocator noise of a "
        "few MB at these sizes); head state MB: the head's parameters and buffers plus their "
        "optimiser state, counted exactly. Each run's own summary is in "
        f"[`{out.name}/`]({out.name}/).",
    ]
    out.with_suffix(".md").write_text("\n".join(line for line in text if line is not None) + "\n")


def _commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=here,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{rev}`" + (" (tree not clean)" if dirty else " (clean tree)")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benches/one_percent.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output prefix: <out>.csv/.md/.png and <out>/")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="runs and the synthetic data cache (default %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps per run")
    for field, value in asdict(FULL).items():
        if field in ("backbone",):
            continue
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=None,
                       help=f"default {value} (smoke: {getattr(SMOKE, field)})")
    p.add_argument("--configs", default=",".join(c.id for c in CONFIGURATIONS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1,
                   help="configurations run at once (1 for the committed timings: concurrent "
                        "runs slow each other down)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's)")
    p.add_argument("--timed-steps", type=int, default=None, help="head-cost steps (default 50)")
    p.add_argument("--extra", default="", metavar="OPTIONS",
                   help="more python -m f2c.train options for every run, e.g. "
                        "'--optim.warmup_epochs 0.1'")
    p.add_argument("--note", default="", help="a line for the report (e.g. machine load)")
    p.add_argument("--head-cost", type=Path, metavar="RUN_DIR", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.head_cost is not None:
        print(json.dumps(head_cost(args.head_cost, args.timed_steps or 50)))
        return 0
    if args.out is None:
        sys.exit("one_percent.py: --out is required")
    sizes = SMOKE if args.smoke else FULL
    sizes = replace(sizes, **{k: getattr(args, k) for k in asdict(sizes)
                              if getattr(args, k, None) is not None})
    timed_steps = args.timed_steps or (5 if args.smoke else 50)
    wanted = args.configs.split(",")
    unknown = sorted(set(wanted) - {c.id for c in CONFIGURATIONS})
    if unknown:
        sys.exit(f"one_percent.py: unknown configuration(s) {unknown}")
    configs = [c for c in CONFIGURATIONS if c.id in wanted]

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    commit = _commit()  # before this run writes its outputs into the tree
    args.work.mkdir(parents=True, exist_ok=True)
    shared = train_options(sizes, args.work, args.device, args.threads) + shlex.split(args.extra)
    pairs = prepare_data(run_argv(configs[0], shared))
    data_seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    def one(config: Configuration) -> dict[str, Any]:
        return run_configuration(config, run_argv(config, shared), args.work, args.out, pairs,
                                 args.device, timed_steps, args.threads)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one, configs))
    meta = {
        "jobs": args.jobs,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benches/one_percent.py",
                               *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "threads": args.threads,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "note": args.note,
        "sizes": asdict(sizes),
        "wall_seconds": time.perf_counter() - started,
        "data_seconds": data_seconds,
        "commit": commit,
        "timed_steps": timed_steps,
    }
    write_report(args.out, rows, meta)
    print(markdown_table(rows))
    print(f"wrote {args.out}.csv, .md, .png and {args.out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
