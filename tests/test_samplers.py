"""Distributed samplers: sharding, distinctness across ranks, per-epoch reshuffle, resume."""

from __future__ import annotations

import numpy as np
import pytest

from f2c.data.samplers import DistributedIdentitySampler, DistributedInstanceSampler


def _csr(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fake KvIndex layout: identity i owns ``counts[i]`` rows, rows shuffled."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.random.default_rng(seed).permutation(offsets[-1]).astype(np.int64)
    return offsets, rows


def _row_labels(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    labels = np.empty(rows.size, dtype=np.int64)
    for i in range(offsets.size - 1):
        labels[rows[offsets[i] : offsets[i + 1]]] = i
    return labels


def test_instance_sampler_shards_cover_each_epoch_once() -> None:
    world, batch, n = 3, 4, 50
    samplers = [
        DistributedInstanceSampler(n, batch, rank=r, world_size=world, seed=5) for r in range(world)
    ]
    assert {len(s) for s in samplers} == {n // (world * batch)}
    seen = []
    for s in samplers:
        s.set_epoch(0)
        batches = list(s)
        assert len(batches) == len(s)
        assert all(b.rows.shape == (batch,) and b.flips.shape == (batch,) for b in batches)
        seen.append(np.concatenate([b.rows for b in batches]))
    everything = np.concatenate(seen)
    assert everything.size == len(np.unique(everything)) == (n // (world * batch)) * world * batch
    # Ranks agree on the global order: the concatenation per step is the epoch permutation.
    order = samplers[0].epoch_order(0)
    for step in range(len(samplers[0])):
        global_rows = np.concatenate([list(s)[step].rows for s in samplers])
        assert np.array_equal(global_rows, order[step * world * batch : (step + 1) * world * batch])


def test_instance_sampler_reshuffles_per_epoch_and_is_deterministic() -> None:
    s = DistributedInstanceSampler(64, 8, seed=1)
    s.set_epoch(0)
    e0 = np.concatenate([b.rows for b in s])
    s.set_epoch(1)
    e1 = np.concatenate([b.rows for b in s])
    assert not np.array_equal(e0, e1)
    again = DistributedInstanceSampler(64, 8, seed=1)
    again.set_epoch(1)
    assert np.array_equal(e1, np.concatenate([b.rows for b in again]))
    other_seed = DistributedInstanceSampler(64, 8, seed=2)
    other_seed.set_epoch(1)
    assert not np.array_equal(e1, np.concatenate([b.rows for b in other_seed]))


def test_instance_sampler_resumes_mid_epoch() -> None:
    s = DistributedInstanceSampler(80, 4, rank=1, world_size=2, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_step=4)
    assert len(s) == len(full) - 4
    rest = list(s)
    for a, b in zip(full[4:], rest, strict=True):
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.flips, b.flips)
        assert a.step == b.step


def test_instance_sampler_flips_vary() -> None:
    s = DistributedInstanceSampler(4000, 1000, seed=0)
    flips = np.concatenate([b.flips for b in s])
    assert 0.45 < flips.mean() < 0.55


def test_instance_sampler_too_small_db() -> None:
    with pytest.raises(ValueError, match="needs 16"):
        DistributedInstanceSampler(10, 8, rank=0, world_size=2)


def test_identity_sampler_distinct_within_and_across_ranks() -> None:
    counts = [1, 2, 0, 5, 3, 1, 4, 2, 2, 6, 1, 3, 2]
    offsets, rows = _csr(counts)
    labels = _row_labels(offsets, rows)
    world, batch = 2, 3
    samplers = [
        DistributedIdentitySampler(offsets, rows, batch, rank=r, world_size=world, seed=9)
        for r in range(world)
    ]
    assert samplers[0].num_identities == 12  # identity 2 has no images
    assert samplers[0].steps_per_cycle == 2
    its = [iter(s) for s in samplers]
    for _ in range(7):
        reqs = [next(it) for it in its]
        ids = []
        for req in reqs:
            a, b = req.rows[:batch], req.rows[batch:]
            assert np.array_equal(labels[a], labels[b])  # two views of one identity
            for ra, rb in zip(a, b, strict=True):
                if counts[labels[ra]] > 1:
                    assert ra != rb  # two different images when it has more than one
                else:
                    assert ra == rb
            ids.extend(labels[a].tolist())
        assert len(set(ids)) == world * batch  # distinct within and across ranks
        assert 2 not in ids


def test_identity_sampler_covers_a_cycle_and_reshuffles() -> None:
    offsets, rows = _csr([2] * 12)
    labels = _row_labels(offsets, rows)
    s = DistributedIdentitySampler(offsets, rows, 4, seed=0)
    it = iter(s)
    cycles = []
    for _ in range(3):
        ids = np.concatenate([labels[next(it).rows[:4]] for _ in range(s.steps_per_cycle)])
        assert sorted(ids.tolist()) == list(range(12))  # each identity once per cycle
        cycles.append(ids)
    assert not np.array_equal(cycles[0], cycles[1]) or not np.array_equal(cycles[1], cycles[2])


def test_identity_sampler_resumes_at_position() -> None:
    offsets, rows = _csr([3, 1, 4, 1, 5, 9, 2, 6])
    s = DistributedIdentitySampler(offsets, rows, 2, rank=1, world_size=2, seed=4)
    it = iter(s)
    full = [next(it) for _ in range(10)]
    s.set_position(6)
    it = iter(s)
    for expected in full[6:]:
        got = next(it)
        assert got.step == expected.step
        assert np.array_equal(got.rows, expected.rows)
        assert np.array_equal(got.flips, expected.flips)


def test_identity_sampler_errors() -> None:
    offsets, rows = _csr([2, 2, 0])
    with pytest.raises(ValueError, match="more ranks than identities"):
        DistributedIdentitySampler(offsets, rows, 1, rank=0, world_size=3)
    with pytest.raises(ValueError, match="needs 4 distinct identities"):
        DistributedIdentitySampler(offsets, rows, 2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        DistributedIdentitySampler(offsets, rows, 1, rank=2, world_size=2)
