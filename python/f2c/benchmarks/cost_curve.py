"""The F²C cost curve: training throughput and memory of each head against the class count.

For every class count C and head, the trainer's own step (:func:`f2c.training.step.train_step`)
is timed on synthetic uint8 images made on the device (no data loading in the measurement):
normalisation, one probe forward of the two views [x; y] (3·B images: B identity pairs plus B
instance images, docs/design.md §1), the EMA update and the gallery forward of [x; y] for F²C,
the head, backward and the SGD step, under bf16 autocast on a GPU. Heads:

- ``backbone``: the probe forward + backward with no head (the floor);
- ``f2c:R``: the two-pass pool head with Q = R·C;
- ``fc`` / ``partial_fc:R``: a margin softmax over all C classes or a sample of them at rate R.

Warm-up steps are excluded; each figure is the median over several timed windows. A head that
runs out of memory is recorded as ``oom``, not a crash. Results: a polars table (CSV + Markdown)
and a PNG of images/s and peak memory against C, one line per head and batch size.

GPU:  python -m f2c.benchmarks.cost_curve --device cuda --out benches/results/gpu-cost-curve
CPU smoke (tiny): python -m f2c.benchmarks.cost_curve --smoke --out /tmp/cost-curve
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch
from torch import nn

from f2c.config import OptimConfig
from f2c.heads import (
    HeadBatch,
    HeadOutput,
    MarginConfig,
    ProbeGallery,
    build_head,
    minimum_pool_size,
)
from f2c.models import create, input_size
from f2c.training.step import StepModel, build_optimizer, f2c_views, train_step

DEFAULT_CLASSES = (100_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)
DEFAULT_HEADS = ("backbone", "f2c:0.01", "f2c:0.001", "fc", "partial_fc:0.1")


@dataclass(frozen=True)
class Measurement:
    device: str
    backbone: str
    head: str
    num_classes: int
    batch_size: int
    images_per_step: int
    pool_size: int | None  # f2c only: the Q used (at least the one-pass minimum)
    status: str  # "ok" or "oom"
    step_seconds: float | None
    steps_per_second: float | None
    images_per_second: float | None
    peak_memory_gib: float | None


def _parse_head(spec: str) -> tuple[str, float | None]:
    name, _, rate = spec.partition(":")
    if name not in {"backbone", "f2c", "fc", "partial_fc"}:
        raise ValueError(f"unknown head {spec!r}: use backbone, f2c:RATIO, fc or partial_fc:RATE")
    return name, float(rate) if rate else None


class _NoHead(nn.Module):
    """The floor: a loss on the probe embeddings alone, so the step is backbone-only."""

    requires_gallery = False

    def forward(self, batch: HeadBatch) -> HeadOutput:
        return HeadOutput(loss=batch.embeddings.float().pow(2).mean())


class _Step:
    """One configured training step; building it allocates everything (so OOM shows here).

    Built as the trainer builds its own (probe and gallery networks, head, the optimiser of the
    paper's recipe) and run through the trainer's :func:`~f2c.training.step.train_step`.
    """

    def __init__(
        self,
        head_spec: str,
        *,
        backbone_name: str,
        num_classes: int,
        batch_size: int,
        embedding_size: int,
        device: torch.device,
        amp: bool,
    ) -> None:
        self.head_name, rate = _parse_head(head_spec)
        size = input_size(backbone_name)
        gen = torch.Generator(device=device).manual_seed(0)

        def images(n: int) -> torch.Tensor:
            return torch.randint(
                0, 256, (n, size, size, 3), dtype=torch.uint8, device=device, generator=gen
            )

        # One instance batch (B images, independent labels) and one identity batch (two images
        # of B distinct identities), laid out into the views x and y as in training.
        ids = torch.randperm(num_classes, device=device, generator=gen)[:batch_size]
        inst = torch.randint(0, num_classes, (batch_size,), device=device, generator=gen)
        self.input = f2c_views(
            (images(batch_size), inst), (images(batch_size), images(batch_size), ids), device
        )
        self.images_per_step = self.input.images.shape[0]

        backbone = create(backbone_name, embedding_size=embedding_size)
        nets = ProbeGallery(backbone).to(device)
        head: nn.Module = _NoHead()
        self.pool_size: int | None = None
        if self.head_name != "backbone":
            if self.head_name == "f2c":
                assert rate is not None, "f2c needs a pool ratio, e.g. f2c:0.01"
                # A pool below one pass's inserts is refused by the head: tiny C is clamped up
                # to that minimum, and the table records the Q actually used.
                self.pool_size = max(int(rate * num_classes), minimum_pool_size(batch_size, 1))
            head = build_head(
                self.head_name,
                num_classes=num_classes,
                embedding_size=embedding_size,
                margin=MarginConfig(kind="cosface", margin=0.4, scale=32.0),
                batch_size=batch_size,
                pool_size=self.pool_size,
                sample_rate=rate if rate is not None else 0.1,
                device=device,
            )
        self.model = StepModel(
            nets=nets,
            head=head,
            optimizer=build_optimizer(nets.probe, head, OptimConfig()),
            amp_dtype=torch.bfloat16 if amp else None,
        )

    def __call__(self) -> None:
        train_step(self.model, self.input)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_windows(
    step: Callable[[], None], device: torch.device, warmup: int, windows: int, steps_per_window: int
) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    per_step = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        _sync(device)
        per_step.append((time.perf_counter() - start) / steps_per_window)
    return statistics.median(per_step)


def measure(
    head_spec: str,
    *,
    backbone: str,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    amp: bool,
    embedding_size: int = 512,
    warmup: int = 5,
    windows: int = 5,
    steps_per_window: int = 5,
) -> Measurement:
    """Time one head at one size; out-of-memory becomes a row with status ``oom``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    common = dict(
        device=str(device),
        backbone=backbone,
        head=head_spec,
        num_classes=num_classes,
        batch_size=batch_size,
        images_per_step=3 * batch_size,
    )
    step: _Step | None = None
    try:
        step = _Step(
            head_spec,
            backbone_name=backbone,
            num_classes=num_classes,
            batch_size=batch_size,
            embedding_size=embedding_size,
            device=device,
            amp=amp,
        )
        images, pool_size = step.images_per_step, step.pool_size
        seconds = _time_windows(step, device, warmup, windows, steps_per_window)
    except Exception as exc:  # only out-of-memory is a result; anything else is a bug
        if not _is_oom(exc):
            raise
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return Measurement(
            **common,
            pool_size=None,
            status="oom",
            step_seconds=None,
            steps_per_second=None,
            images_per_second=None,
            peak_memory_gib=None,
        )
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del step
    gc.collect()
    return Measurement(
        **common,
        pool_size=pool_size,
        status="ok",
        step_seconds=seconds,
        steps_per_second=1.0 / seconds,
        images_per_second=images / seconds,
        peak_memory_gib=peak,
    )


def run(
    *,
    classes: Sequence[int],
    heads: Sequence[str],
    batch_sizes: Sequence[int],
    backbone: str,
    device: torch.device,
    amp: bool,
    warmup: int,
    windows: int,
    steps_per_window: int,
    log: Callable[[str], None] = print,
) -> list[Measurement]:
    rows = []
    for batch_size in batch_sizes:
        for num_classes in classes:
            for head in heads:
                if head == "backbone" and num_classes != classes[0]:
                    # The floor does not depend on C; measure it once and repeat it per C.
                    floor = next(
                        r for r in rows if r.head == "backbone" and r.batch_size == batch_size
                    )
                    rows.append(Measurement(**{**asdict(floor), "num_classes": num_classes}))
                    continue
                row = measure(
                    head,
                    backbone=backbone,
                    num_classes=num_classes,
                    batch_size=batch_size,
                    device=device,
                    amp=amp,
                    warmup=warmup,
                    windows=windows,
                    steps_per_window=steps_per_window,
                )
                rows.append(row)
                speed = f"{row.images_per_second:,.0f} img/s" if row.images_per_second else "-"
                memory = f"{row.peak_memory_gib:.2f} GiB" if row.peak_memory_gib else "-"
                log(
                    f"C={num_classes:>10,} B={batch_size:<4} {head:<15} {row.status:<4} "
                    f"{speed:>14} {memory:>10}"
                )
    return rows


def write_report(rows: Sequence[Measurement], out: Path, title: str) -> None:
    """CSV + Markdown table and a PNG of images/s and peak memory against C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    table = pl.DataFrame([asdict(r) for r in rows])
    table.write_csv(out / "cost_curve.csv")
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=40,
    ):
        (out / "cost_curve.md").write_text(f"# {title}\n\n{table}\n")
    figure, (speed_ax, memory_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (head, batch), group in table.group_by(["head", "batch_size"], maintain_order=True):
        ok = group.filter(pl.col("status") == "ok")
        label = f"{head} (B={batch})"
        speed_ax.plot(ok["num_classes"], ok["images_per_second"], marker="o", label=label)
        if ok["peak_memory_gib"].null_count() < len(ok):
            memory_ax.plot(ok["num_classes"], ok["peak_memory_gib"], marker="o", label=label)
    for ax, ylabel in ((speed_ax, "images / s"), (memory_ax, "peak memory (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("identities C")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    speed_ax.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out / "cost_curve.png", dpi=120)
    plt.close(figure)


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m f2c.benchmarks.cost_curve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--classes", type=_ints, default=list(DEFAULT_CLASSES))
    parser.add_argument("--heads", type=lambda s: s.split(","), default=list(DEFAULT_HEADS))
    parser.add_argument("--batch-sizes", type=_ints, default=[128, 256])
    parser.add_argument("--backbone", default="ir50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps-per-window", type=int, default=5)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU-sized run (C <= 10K, mobilefacenet, a few steps)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.smoke:
        args.classes, args.batch_sizes, args.backbone = [1_000, 10_000], [4], "mobilefacenet"
        args.warmup, args.windows, args.steps_per_window = 1, 1, 1
    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.no_amp
    rows = run(
        classes=args.classes,
        heads=args.heads,
        batch_sizes=args.batch_sizes,
        backbone=args.backbone,
        device=device,
        amp=amp,
        warmup=args.warmup,
        windows=args.windows,
        steps_per_window=args.steps_per_window,
    )
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    title = (
        f"F²C cost curve, {args.backbone}, {'bf16' if amp else 'fp32'}, {card}, "
        f"{date.today().isoformat()}"
    )
    write_report(rows, args.out, title)
    (args.out / "environment.json").write_text(
        json.dumps(
            {
                "device": card,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "date": date.today().isoformat(),
                "argv": list(sys.argv[1:] if argv is None else argv),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}/cost_curve.{{csv,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
