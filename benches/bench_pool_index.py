"""ClassPoolIndex (Rust) vs ReferenceClassPoolIndex (pure Python).

Glint360K-sized label space (360,232 classes), pools of 1% and 10% of it, batches of 768 and
3,072 labels (one F²C pass at 8 ranks × 64 and 8 × 256 × 1.5). Run with
``pytest benches/bench_pool_index.py --benchmark-enable``; per-label times are in extra_info.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from f2c import ClassPoolIndex, ReferenceClassPoolIndex

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
