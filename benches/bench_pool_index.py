"""ClassPoolIndex (Rust) vs ReferenceClassPoolIndex (pure Python), and LRU comparisons.

Glint360K-sized label space (360,232 classes), pools of 1% and 10% of it, batches of 768 and
3,072 labels (one F²C pass at 8 ranks × 64 and 8 × 256 × 1.5). Run with
``pytest benches/bench_pool_index.py --benchmark-enable``; per-label times are in extra_info.

The ``compare`` groups time, on the same streams, the Rust index taking whole batches, the
pure-Python reference, an idiomatic per-label ``OrderedDict`` LRU, the Rust index called one
label at a time, and any implementation of the paper code's per-label interface (``get``,
``try_get``, ``view``, ``rollback_steps``, ``in``) named in ``$F2C_LRU_IMPL`` as
``module:Class`` (comma-separated for several; see ``f2c.pool.compare``). Every implementation
is first checked label by label (slots, hit flags, evicted classes, looked-up slots) against the
batched Rust index on the same stream; a difference fails the case before anything is timed::

    F2C_LRU_IMPL=lru_utils:LRU pytest benches/bench_pool_index.py --benchmark-enable \
        -k compare --benchmark-json=compare.json
    python benches/bench_pool_index.py --table compare.json [more runs]   # ns/label, median
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from f2c import ClassPoolIndex, ReferenceClassPoolIndex
from f2c.pool.compare import (
    OrderedDictLRU,
    PerLabelAdapter,
    RustPerLabelLRU,
    check_same_results,
    load_per_label_class,
    specs_from_env,
)

NUM_CLASSES = 360_232
POOL_SIZES = [3_602, 36_023]
BATCHES = [768, 3_072]
IMPLEMENTATIONS = {"rust": ClassPoolIndex, "reference": ReferenceClassPoolIndex}


def _full_index(kind: str, capacity: int, rng: np.random.Generator) -> Any:
    index = IMPLEMENTATIONS[kind](capacity)
    labels = rng.choice(NUM_CLASSES, size=capacity, replace=False)
    for start in range(0, capacity, 2048):
        index.assign(labels[start : start + 2048])
    return index


def _batch(index: Any, size: int, hit_share: float, rng: np.random.Generator) -> np.ndarray:
    """`size` labels: a `hit_share` of them resident classes, the rest uniform over all."""
    n_hit = int(size * hit_share)
    resident = index.keys()
    labels = np.concatenate(
        [rng.choice(resident, size=n_hit), rng.integers(0, NUM_CLASSES, size=size - n_hit)]
    )
    rng.shuffle(labels)
    return labels


def _assign_cases(bench: Any) -> Any:
    """Every (implementation, pool size, batch size, share of resident labels) combination."""
    for name, values, ids in [
        ("hit_share", [0.0, 0.5], ["uniform", "half-hits"]),
        ("batch", BATCHES, None),
        ("capacity", POOL_SIZES, None),
        ("kind", list(IMPLEMENTATIONS), None),
    ]:
        bench = pytest.mark.parametrize(name, values, ids=ids)(bench)
    return bench


@pytest.mark.benchmark(group="assign")
@_assign_cases
def bench_assign(
    benchmark: Any, kind: str, capacity: int, batch: int, hit_share: float, rng: Any
) -> None:
    index = _full_index(kind, capacity, rng)

    def setup() -> tuple[tuple[np.ndarray], dict[str, Any]]:
        return (_batch(index, batch, hit_share, rng),), {}

    slots, hit, _ = benchmark.pedantic(
        index.assign, setup=setup, rounds=200 if kind == "rust" else 20, warmup_rounds=1
    )
    assert len(slots) == batch and slots.max() < capacity
    if benchmark.stats is not None:
        benchmark.extra_info["ns_per_label"] = benchmark.stats.stats.median / batch * 1e9
    if hit_share == 0.5:
        assert hit.mean() >= 0.3  # some resident picks are evicted earlier in the batch


def _stream(size: int, count: int, hit_share: float, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` batches to assign in a cycle: batch k takes a `hit_share` of its labels from the
    fresh (uniform) part of batch k-1, which that batch has just made resident."""
    n_hit = int(size * hit_share)
    fresh = [rng.integers(0, NUM_CLASSES, size=size - n_hit) for _ in range(count)]
    batches = []
    for k in range(count):
        labels = np.concatenate([rng.choice(fresh[k - 1], size=n_hit), fresh[k]])
        rng.shuffle(labels)
        batches.append(labels)
    return batches


@pytest.mark.benchmark(group="assign-stream")
@_assign_cases
def bench_assign_stream(
    benchmark: Any, kind: str, capacity: int, batch: int, hit_share: float, rng: Any
) -> None:
    """Back-to-back assigns of pre-built batches: the throughput figure (no per-round setup
    between calls, which `bench_assign` has and which evicts the index from the caches)."""
    index = _full_index(kind, capacity, rng)
    batches = _stream(batch, 64, hit_share, rng)
    position = iter(range(1 << 62))
    hits: list[np.ndarray] = []

    def assign_next() -> None:
        hits.append(index.assign(batches[next(position) % len(batches)])[1])

    for _ in range(len(batches)):  # one full cycle first, so the stream's hits are resident
        assign_next()
    hits.clear()
    benchmark.pedantic(assign_next, rounds=500 if kind == "rust" else 20, warmup_rounds=0)
    if benchmark.stats is not None:
        benchmark.extra_info["ns_per_label"] = benchmark.stats.stats.median / batch * 1e9
    # resident picks may be evicted earlier in the batch
    assert min(float(h.mean()) for h in hits) >= hit_share * 0.6


@pytest.mark.benchmark(group="f2c-iteration")
@pytest.mark.parametrize("kind", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("capacity", POOL_SIZES)
@pytest.mark.parametrize("batch", BATCHES)
def bench_f2c_iteration(benchmark: Any, kind: str, capacity: int, batch: int, rng: Any) -> None:
    """Pass A (undoable assign, lookup, undo) then pass B (assign, lookup) of one step."""
    index = _full_index(kind, capacity, rng)

    def setup() -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
        return (_batch(index, batch, 0.5, rng), _batch(index, batch, 0.5, rng)), {}

    def iteration(gallery_a: np.ndarray, gallery_b: np.ndarray) -> np.ndarray:
        index.assign(gallery_a, undoable=True)
        index.lookup(gallery_b)
        index.undo()
        index.assign(gallery_b)
        return index.lookup(gallery_a)

    benchmark.pedantic(
        iteration, setup=setup, rounds=100 if kind == "rust" else 10, warmup_rounds=1
    )
    assert index.undo_depth == 0 and len(index) == capacity


@pytest.mark.benchmark(group="state_dict")
@pytest.mark.parametrize("kind", list(IMPLEMENTATIONS))
def bench_state_dict(benchmark: Any, kind: str, rng: Any) -> None:
    index = _full_index(kind, POOL_SIZES[-1], rng)
    state = benchmark(index.state_dict)
    assert len(state["keys"]) == POOL_SIZES[-1]


# --- LRU comparisons: batched and per-label implementations on the same streams -------------

# Batched implementations take the whole batch per call; per-label ones are driven by
# PerLabelAdapter as the paper's step drives its LRU (`in`, then get / try_get, view).
BATCHED = {"rust": ClassPoolIndex, "reference": ReferenceClassPoolIndex}
PER_LABEL: dict[str, type] = {"ordereddict": OrderedDictLRU, "rust-per-label": RustPerLabelLRU}
COMPARE_KINDS = [*BATCHED, *PER_LABEL, *specs_from_env()]
# (pool size, batch): 10% of the labels with the large batch, 1% with the small one.
COMPARE_SIZES = [(36_023, 3_072), (3_602, 768)]
CHECK_STEPS = 6  # F²C steps of the pre-timing check (12 of the 16 batches, after the fill)


def _per_label_class(kind: str) -> type:
    return PER_LABEL[kind] if kind in PER_LABEL else load_per_label_class(kind)


def _compare_index(kind: str, capacity: int, track_evictions: bool) -> Any:
    if kind in BATCHED:
        return BATCHED[kind](capacity)
    return PerLabelAdapter(
        _per_label_class(kind)(capacity), capacity, track_evictions=track_evictions
    )


def _compare_stream(
    capacity: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pool's first `capacity` distinct classes, then 16 half-hit batches (`_stream`)."""
    fill = rng.choice(NUM_CLASSES, size=capacity, replace=False).astype(np.int64)
    return fill, _stream(batch, 16, 0.5, rng)


def _checked_index(
    benchmark: Any, kind: str, capacity: int, batch: int, rng: np.random.Generator
) -> tuple[Any, list[np.ndarray]]:
    """Check `kind` against the batched Rust index on the stream, then return a fresh, filled
    index of `kind` (without eviction tracking) and the stream to time it on."""
    if benchmark.disabled and (capacity, batch) != COMPARE_SIZES[-1]:
        # The default test run executes each bench once: the small size covers the same code.
        pytest.skip("timing size: runs with --benchmark-enable")
    fill, batches = _compare_stream(capacity, batch, rng)
    steps = [(batches[2 * k], batches[2 * k + 1]) for k in range(CHECK_STEPS)]
    if kind != "rust":
        factories: dict[str, Callable[[], Any]] = {
            "rust": lambda: ClassPoolIndex(capacity),
            kind: lambda: _compare_index(kind, capacity, track_evictions=True),
        }
        check_same_results(factories, fill, steps)
    index = _compare_index(kind, capacity, track_evictions=False)
    index.assign(fill)
    return index, batches


def _compare_info(benchmark: Any, kind: str, labels_per_round: int) -> None:
    benchmark.extra_info["kind"] = kind
    benchmark.extra_info["calls"] = "batched" if kind in BATCHED else "per-label"
    if benchmark.stats is not None:
        benchmark.extra_info["ns_per_label"] = (
            benchmark.stats.stats.median / labels_per_round * 1e9
        )


def _compare_rounds(kind: str, batched_rounds: int, other_rounds: int) -> int:
    return batched_rounds if kind == "rust" else other_rounds


@pytest.mark.benchmark(group="compare-stream")
@pytest.mark.parametrize(("capacity", "batch"), COMPARE_SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", COMPARE_KINDS)
def bench_compare_stream(
    benchmark: Any, kind: str, capacity: int, batch: int, rng: Any
) -> None:
    """Back-to-back plain assigns of half-hit batches (per label: `in`, then `get`)."""
    index, batches = _checked_index(benchmark, kind, capacity, batch, rng)
    position = iter(range(1 << 62))
    hits: list[np.ndarray] = []

    def assign_next() -> None:
        hits.append(index.assign(batches[next(position) % len(batches)])[1])

    for _ in range(len(batches)):  # one cycle first, so the stream's hits are resident
        assign_next()
    hits.clear()
    benchmark.pedantic(assign_next, rounds=_compare_rounds(kind, 500, 50), warmup_rounds=0)
    _compare_info(benchmark, kind, batch)
    assert min(float(h.mean()) for h in hits) >= 0.3


@pytest.mark.benchmark(group="compare-f2c-step")
@pytest.mark.parametrize(("capacity", "batch"), COMPARE_SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", COMPARE_KINDS)
def bench_compare_f2c_step(
    benchmark: Any, kind: str, capacity: int, batch: int, rng: Any
) -> None:
    """One F²C step's LRU work: pass A (undoable assign, lookup, undo) and pass B (assign,
    lookup). ns_per_label is per gallery label of the two passes (2 × batch)."""
    index, batches = _checked_index(benchmark, kind, capacity, batch, rng)
    position = iter(range(1 << 62))

    def step() -> None:
        k = next(position) % (len(batches) // 2)
        a, b = batches[2 * k], batches[2 * k + 1]
        index.assign(a, undoable=True)
        index.lookup(b)
        index.undo()
        index.assign(b)
        index.lookup(a)

    benchmark.pedantic(step, rounds=_compare_rounds(kind, 200, 25), warmup_rounds=1)
    _compare_info(benchmark, kind, 2 * batch)
    assert index.undo_depth == 0


def compare_table(reports: Sequence[dict[str, Any]]) -> str:
    """Markdown ns/label table of the compare groups of ``--benchmark-json`` reports: each cell
    is the median over the reports (runs), with its ratio to the batched Rust index."""
    runs: dict[tuple[str, str], dict[str, list[float]]] = {}
    order: list[str] = []
    for report in reports:
        for bench in report["benchmarks"]:
            if not str(bench["group"]).startswith("compare-"):
                continue
            info, params = bench["extra_info"], bench["params"]
            scenario = bench["group"][len("compare-"):]
            column = f"{scenario} Q={params['capacity']:,} B={params['batch']:,}"
            if column not in order:
                order.append(column)
            cells = runs.setdefault((info["kind"], info["calls"]), {})
            cells.setdefault(column, []).append(info["ns_per_label"])
    rows = {key: {c: statistics.median(v) for c, v in cells.items()} for key, cells in runs.items()}
    rust = rows.get(("rust", "batched"), {})
    lines = [
        "| implementation | calls | " + " | ".join(order) + " |",
        "|---|---|" + "---:|" * len(order),
    ]
    for (kind, calls), values in rows.items():
        cells = []
        for column in order:
            if column not in values:
                cells.append("–")
                continue
            ratio = f" ({values[column] / rust[column]:.0f}×)" if column in rust else ""
            cells.append(f"{values[column]:,.0f}{ratio}")
        lines.append(f"| {kind} | {calls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--table":
        loaded = []
        for path in sys.argv[2:]:
            with open(path) as f:
                loaded.append(json.load(f))
        print(compare_table(loaded))
    else:
        sys.exit(f"usage: python {sys.argv[0]} --table BENCHMARK_JSON [MORE_RUNS_JSON ...]")
