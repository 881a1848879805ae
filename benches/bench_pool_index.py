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


@pytest.mark.benchmark(group="assign")
@pytest.mark.parametrize("kind", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("capacity", POOL_SIZES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("hit_share", [0.0, 0.5], ids=["uniform", "half-hits"])
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
