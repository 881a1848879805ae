"""One head step: F²C (Q = 1% and 0.1% of C) vs FullFC vs PartialFC (sample rate 0.1).

A step is the trainer's own :func:`f2c.training.step.train_step` with the backbone replaced by a
table of 3·B = 384 trainable embeddings (per-rank batch B = 128, D = 512): the EMA update and
gallery "forward" (F²C only), the head's forward and backward (for F²C including the pool
writes), and the SGD step (lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4, docs/design.md §1)
on the centres (FC heads) and the table. Every head sees the views x and y of 1.5·B = 192 rows
each, as in training. F²C's pool is full before timing, and every step brings freshly drawn
labels (40 pre-drawn label batches, more than the steps of a case).

Q is clamped up to the head's minimum (192 for B = 128 on one rank); ``extra_info`` records the Q
used. Peak memory: with ``--benchmark-enable``, each case is re-run in a fresh subprocess that
reports ``peak_rss_mb`` = peak resident set size (VmHWM) minus the RSS before the case is
built (after a tiny warm-up case has faulted in the library code it runs): the head's state,
inputs (< 2 MB) and the step's temporaries. For F²C, ``bookkeeping_share`` is the share of
the step spent in the pool bookkeeping (index assign / undo / lookup, write plans, the pool
writes and pass A's override views).

On a shared machine, run with ``OMP_NUM_THREADS=1``: multi-threaded BLAS under contention
varies by 10× from run to run.

    pytest benches/bench_heads.py --benchmark-enable                # C = 10k, 100k
    pytest benches/bench_heads.py --benchmark-enable -m slow -k 1M  # C = 1M (~14 GB for fc)
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from f2c.config import OptimConfig
from f2c.heads import MarginConfig, ProbeGallery, build_head, minimum_pool_size
from f2c.training.step import StepInput, StepModel, build_optimizer, train_step

B, D = 128, 512
ROWS = B + (B + 1) // 2  # rows of one F²C view
LABEL_BATCHES = 40  # more than the steps of one case: every step draws fresh labels
HEADS = {  # id → (head name, pool ratio or sample rate)
    "f2c-1%": ("f2c", 0.01),
    "f2c-0.1%": ("f2c", 0.001),
    "fc": ("fc", None),
    "pfc-0.1": ("partial_fc", 0.1),
}
SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: that keeps the high-water mark of the
    forked parent across exec, so a small case run after a big one would report the big one."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (needs Linux)")


class EmbeddingTable(torch.nn.Module):
    """A stand-in probe network whose output is a trainable table of embeddings, one row per
    input row: the step around the head stays the trainer's, at a negligible cost."""

    def __init__(self, rows: int, generator: torch.Generator) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(rows, D, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.table.shape[0]:
            raise ValueError(f"expected {self.table.shape[0]} rows, got {x.shape[0]}")
        return self.table


class HeadStep:
    """A head with fixed inputs; calling it runs one training step (``train_step``)."""

    def __init__(self, head_id: str, num_classes: int, seed: int = 0) -> None:
        name, rate = HEADS[head_id]
        gen = torch.Generator().manual_seed(seed)
        self.name = name
        self.info: dict[str, Any] = {"head": head_id, "num_classes": num_classes, "B": B, "D": D}
        self.step_count = 0
        pool = None
        if name == "f2c":
            assert rate is not None
            pool = max(round(rate * num_classes), minimum_pool_size(B, 1))
            self.info["pool_size"] = pool
        else:
            self.info["sample_rate"] = rate
        # Every head gets the trainer's layout: views x and y, identity rows shared.
        # numpy's choice without replacement is O(k); a randperm of C per batch is O(C).
        rng = np.random.default_rng(seed)
        self.labels = []
        for _ in range(LABEL_BATCHES):
            ids = torch.from_numpy(rng.choice(num_classes, size=B, replace=False))
            inst = torch.randint(0, num_classes, (2, ROWS - B), generator=gen)
            self.labels.append(torch.cat([ids, inst[0], ids, inst[1]]))
        self.rows = torch.empty(2 * ROWS, 0)  # the stand-in probe only reads the row count
        nets = ProbeGallery(EmbeddingTable(2 * ROWS, gen))
        self.head = build_head(
            name, num_classes=num_classes, embedding_size=D,
            margin=MarginConfig("cosface", 0.4, scale=32.0), batch_size=B, pool_size=pool,
            sample_rate=rate or 0.1,
        )
        if name == "f2c":
            # A full pool: Q distinct classes with random features.
            assert pool is not None
            self.head.write_gallery(  # type: ignore[operator]
                torch.from_numpy(rng.choice(num_classes, size=pool, replace=False)),
                torch.randn(pool, D, generator=gen),
            )
        # The paper's optimiser (docs/design.md §1): SGD lr 0.1, momentum 0.9, Nesterov, wd 1e-4.
        self.model = StepModel(nets, self.head, build_optimizer(nets.probe, self.head,
                                                                OptimConfig()))
        self.last_stats: dict[str, float] = {}

    def __call__(self) -> None:
        labels = self.labels[self.step_count % LABEL_BATCHES]
        self.step_count += 1
        result = train_step(self.model, StepInput(self.rows, labels, ROWS))
        self.last_stats = result.stats


def _time_bookkeeping(step: HeadStep, steps: int) -> float:
    """Share of ``steps`` F²C steps spent in the head's ``_prepare`` (the pool bookkeeping)."""
    head: Any = step.head
    spent = [0.0]
    original: Callable[..., Any] = head._prepare

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    head._prepare = timed
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - t0
    finally:
        del head._prepare
    return spent[0] / total


def _peak_rss_in_subprocess(head_id: str, size: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--peak", head_id, size],
        check=True, capture_output=True, text=True, timeout=1800,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _rounds(head_id: str, num_classes: int) -> int:
    cost = num_classes * (1 if head_id.startswith("f2c") else 40)
    return max(2, min(20, int(4e7 / cost)))


def _run(benchmark: Any, head_id: str, size: str) -> None:
    if not benchmark.disabled:
        # First, so that the big cases never hold two copies of their state at once.
        benchmark.extra_info.update(_peak_rss_in_subprocess(head_id, size))
    step = HeadStep(head_id, SIZES[size])
    if not benchmark.disabled:
        step()  # warm-up (allocations, PartialFC's gradient buffer)
    benchmark.extra_info.update(step.info)
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    benchmark.extra_info["load_average_1min"] = os.getloadavg()[0]
    benchmark.pedantic(step, rounds=_rounds(head_id, SIZES[size]), iterations=1)
    assert step.last_stats is not None
    if step.name == "f2c":
        assert step.last_stats["pool_occupancy"] == 1.0
        benchmark.extra_info["in_pool_fraction"] = step.last_stats["in_pool_fraction"]
    if not benchmark.disabled and step.name == "f2c":
        benchmark.extra_info["bookkeeping_share"] = _time_bookkeeping(step, 10)


@pytest.mark.benchmark(group="head-step", min_rounds=1)
@pytest.mark.parametrize("size", ["10k", "100k"])
@pytest.mark.parametrize("head_id", list(HEADS))
def bench_head_step(benchmark: Any, head_id: str, size: str) -> None:
    _run(benchmark, head_id, size)


@pytest.mark.slow
@pytest.mark.benchmark(group="head-step", min_rounds=1)
@pytest.mark.parametrize("size", ["1M"])
@pytest.mark.parametrize("head_id", list(HEADS))
def bench_head_step_1m(benchmark: Any, head_id: str, size: str) -> None:
    _run(benchmark, head_id, size)


def _peak_main(head_id: str, size: str) -> None:
    torch.manual_seed(0)
    # Fault in the code the step runs (torch / BLAS pages count in RSS) with a tiny case first,
    # then reset the high-water mark to the current RSS (Linux >= 4.0).
    warm = HeadStep(head_id, 2_000)
    warm()
    warm()
    del warm
    base = _rss_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step = HeadStep(head_id, SIZES[size])
    for _ in range(2):
        step()
    peak = _peak_rss_mb()
    print(json.dumps({"peak_rss_mb": round(peak - base, 1), "base_rss_mb": round(base, 1)}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        _peak_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} --peak HEAD_ID SIZE")
