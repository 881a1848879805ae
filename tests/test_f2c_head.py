"""The F²C head on one process, against a deliberately naive implementation of
docs/design.md §1."""

from __future__ import annotations

import copy
import io
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch

from f2c.heads import (
    DynamicClassPool,
    HeadBatch,
    MarginConfig,
    build_head,
    minimum_pool_size,
    outlier_top_k,
)
from f2c.heads.pool_writes import plan_writes

D = 6


# ---------------------------------------------------------------------------- the naive twin


class NaivePool:
    """docs/design.md §1 with Python loops over a dict pool: class → [row 0, row 1] and a
    pointer."""

    def __init__(self, capacity: int, margin: MarginConfig) -> None:
        self.capacity = capacity
        self.margin = margin
        self.lru: OrderedDict[int, None] = OrderedDict()  # least recent first
        self.rows: dict[int, list[list[float] | None]] = {}
        self.pointer: dict[int, int] = {}

    def write(self, labels: list[int], feats: list[list[float]]) -> set[int]:
        """Write one gathered batch one feature at a time; returns the classes hit-written.

        A write is a hit when its class is in the pool at that moment (a class written in the
        batch cannot be evicted later in it: the index refuses more classes than slots).
        """
        hit: set[int] = set()
        for label, feat in zip(labels, feats, strict=True):
            if label in self.lru:
                hit.add(label)
                self.lru.move_to_end(label)
            else:
                if len(self.lru) == self.capacity:
                    old, _ = self.lru.popitem(last=False)
                    del self.rows[old], self.pointer[old]
                self.lru[label] = None
                self.rows[label] = [None, None]
                self.pointer[label] = 0
            self.rows[label][self.pointer[label]] = feat
            self.pointer[label] ^= 1
        return hit

    def _target_logit(self, cos: float) -> float:
        m = self.margin.margin
        if self.margin.kind == "cosface":
            return cos - m
        theta = math.acos(max(-1.0, min(1.0, cos)))
        return math.cos(theta + m) if cos > math.cos(math.pi - m) else cos - m * math.sin(m)

    def pass_loss(self, probes: list[list[float]], labels: list[int], hit: set[int]) -> float:
        k = min(outlier_top_k(self.capacity), len(self.lru))
        ce_sum = outlier_sum = 0.0
        in_pool_rows = sum(1 for label in labels if label in self.lru)
        for p, label in zip(probes, labels, strict=True):
            for variant in (1, 2):
                cos = {}
                for c in self.lru:
                    row = 1 if variant == 2 and c in hit else 0
                    feat = self.rows[c][row]
                    assert feat is not None
                    cos[c] = sum(a * b for a, b in zip(p, feat, strict=True))
                if label in cos:
                    s = self.margin.scale
                    logits = {c: s * v for c, v in cos.items()}
                    logits[label] = s * self._target_logit(cos[label])
                    top = max(logits.values())
                    lse = top + math.log(sum(math.exp(v - top) for v in logits.values()))
                    ce_sum += lse - logits[label]
                else:
                    best = sorted(cos.values(), reverse=True)[:k]
                    outlier_sum += sum(max(v, 0.0) for v in best) / k
        outlier_rows = len(probes) - in_pool_rows
        return (ce_sum / in_pool_rows if in_pool_rows else 0.0) + (
            outlier_sum / outlier_rows if outlier_rows else 0.0)

    def step(self, px: Any, lx: Any, gx: Any, py: Any, ly: Any, gy: Any) -> float:
        saved = copy.deepcopy((self.lru, self.rows, self.pointer))
        hit = self.write(ly, gy)
        loss = self.pass_loss(px, lx, hit)
        self.lru, self.rows, self.pointer = saved  # pass A rolled back
        hit = self.write(lx, gx)
        return loss + self.pass_loss(py, ly, hit)


def _unit(t: torch.Tensor) -> list[list[float]]:
    return torch.nn.functional.normalize(t.double(), dim=1).tolist()


def _batch(gen: torch.Generator, n: int, num_classes: int) -> dict[str, torch.Tensor]:
    """x and y views of n rows; the first half of the rows are shared identities."""
    ids = torch.randperm(num_classes, generator=gen)[: n // 2]
    lx = torch.cat([ids, torch.randint(0, num_classes, (n - n // 2,), generator=gen)])
    ly = torch.cat([ids, torch.randint(0, num_classes, (n - n // 2,), generator=gen)])
    return {
        "px": torch.randn(n, D, generator=gen), "lx": lx, "gx": torch.randn(n, D, generator=gen),
        "py": torch.randn(n, D, generator=gen), "ly": ly, "gy": torch.randn(n, D, generator=gen),
    }


def _run(head: DynamicClassPool, b: dict[str, torch.Tensor]) -> Any:
    return head(HeadBatch.from_views(b["px"], b["lx"], b["py"], b["ly"], b["gx"], b["gy"]))


def _head(
    pool_size: int, batch_size: int = 4, num_classes: int = 30, **margin: Any,
) -> Any:
    cfg = MarginConfig(**{"kind": "cosface", "margin": 0.4, "scale": 16.0, **margin})
    return build_head(
        "f2c", num_classes=num_classes, embedding_size=D, margin=cfg, batch_size=batch_size,
        pool_size=pool_size,
    )


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_loss_and_pool_match_the_naive_implementation(kind: str) -> None:
    head = _head(pool_size=8, kind=kind, margin=0.3)
    naive = NaivePool(8, head.margin)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):  # small pool, many classes: evictions, duplicates, outliers
        b = _batch(gen, 6, num_classes=30)
        out = _run(head, b)
        expected = naive.step(
            _unit(b["px"]), b["lx"].tolist(), _unit(b["gx"]),
            _unit(b["py"]), b["ly"].tolist(), _unit(b["gy"]),
        )
        assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        # Same classes, same features in the same rows, same pointers.
        assert sorted(head.index.keys().tolist()) == sorted(naive.lru)
        for label, slot in zip(head.index.keys().tolist(), head.index.slots().tolist(),
                               strict=True):
            assert int(head.pointers[slot]) == naive.pointer[label]
            for row in (0, 1):
                want = naive.rows[label][row]
                if want is not None:
                    got = head.prototypes[row, slot].tolist()
                    assert got == pytest.approx(want, abs=1e-6)
    assert 0.0 < out.stats["in_pool_fraction"] < 1.0


def test_pass_a_leaves_no_trace() -> None:
    gen = torch.Generator().manual_seed(2)
    stepped, written = _head(pool_size=10), _head(pool_size=10)
    for _ in range(5):
        b = _batch(gen, 6, num_classes=25)
        _run(stepped, b)
        written.write_gallery(b["lx"], b["gx"])  # what pass B alone keeps
        a, w = stepped.full_state_dict(), written.full_state_dict()
        assert torch.equal(a["prototypes"], w["prototypes"])
        assert torch.equal(a["pointers"], w["pointers"])
        # The LRU holds the same classes in the same slots and the same recency order.
        assert torch.equal(a["index"]["keys"], w["index"]["keys"])
        assert torch.equal(a["index"]["slots"], w["index"]["slots"])
        assert stepped.index.undo_depth == 0


def test_gradients_reach_only_the_probe() -> None:
    head = _head(pool_size=12)
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        b = _batch(gen, 6, num_classes=20)
        for key in ("px", "py", "gx", "gy"):
            b[key].requires_grad_(True)
        out = _run(head, b)
        out.loss.backward()  # plain fp32: no in-place restore of a saved tensor
        assert b["px"].grad is not None and b["px"].grad.abs().sum() > 0
        assert b["py"].grad is not None and b["py"].grad.abs().sum() > 0
        assert b["gx"].grad is None and b["gy"].grad is None
    assert list(head.parameters()) == []
    assert not head.prototypes.requires_grad


def test_probe_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    head = _head(pool_size=12)
    gen = torch.Generator().manual_seed(4)
    _run(head, _batch(gen, 6, num_classes=12))  # fill the pool a little first
    b = _batch(gen, 6, num_classes=12)
    b["px"], b["py"] = b["px"].double(), b["py"].double()
    state = head.full_state_dict()

    def loss_of(px: torch.Tensor) -> torch.Tensor:
        head.load_full_state_dict(state)
        return _run(head, {**b, "px": px}).loss

    px = b["px"].clone().requires_grad_(True)
    loss_of(px).backward()
    assert px.grad is not None
    eps = 1e-3
    for i, j in [(0, 0), (3, 2), (5, 5)]:
        bumped = b["px"].clone()
        bumped[i, j] += eps
        lo = b["px"].clone()
        lo[i, j] -= eps
        numeric = (loss_of(bumped) - loss_of(lo)).item() / (2 * eps)
        assert px.grad[i, j].item() == pytest.approx(numeric, rel=2e-2, abs=2e-3)


def test_runs_under_autocast_in_fp32() -> None:
    head = _head(pool_size=12)
    b = _batch(torch.Generator().manual_seed(5), 6, num_classes=20)
    px = b["px"].bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(head, {**b, "px": px, "gx": b["gx"].bfloat16(), "py": b["py"].bfloat16(),
                          "gy": b["gy"].bfloat16()})
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert px.grad is not None and torch.isfinite(px.grad).all()
    assert head.prototypes.dtype == torch.float32


def test_too_small_pool_is_refused_with_the_minimum() -> None:
    assert minimum_pool_size(128, 8) == 1536  # 8 ranks x 1.5 x 128
    assert minimum_pool_size(5, 2) == 16  # y holds B + ceil(B/2) rows per rank
    with pytest.raises(ValueError, match=r"pool_size >= 192"):
        _head(pool_size=191, batch_size=128)
    _head(pool_size=192, batch_size=128)
    with pytest.raises(ValueError, match="needs a pool_size"):
        build_head("f2c", num_classes=10, embedding_size=D, margin=MarginConfig("cosface", 0.4),
                   batch_size=4, pool_size=None)


def test_oversized_gathered_batch_is_refused_and_changes_nothing() -> None:
    head = _head(pool_size=6, batch_size=4)
    gen = torch.Generator().manual_seed(6)
    b = _batch(gen, 6, num_classes=30)
    _run(head, b)
    before = head.full_state_dict()
    big = _batch(gen, 10, num_classes=30)
    big["ly"] = torch.arange(10)  # 10 distinct classes in one pass > 6 slots
    with pytest.raises(ValueError, match="distinct classes"):
        _run(head, big)
    after = head.full_state_dict()
    assert torch.equal(before["prototypes"], after["prototypes"])
    assert torch.equal(before["index"]["keys"], after["index"]["keys"])


def test_labels_out_of_range_are_refused() -> None:
    head = _head(pool_size=12, num_classes=10)
    b = _batch(torch.Generator().manual_seed(7), 6, num_classes=10)
    b["ly"][0] = 10
    with pytest.raises(ValueError, match="labels_y holds class id 10"):
        _run(head, b)


def test_duplicate_rule_is_one_feature_at_a_time_in_gathered_order() -> None:
    pointers = np.zeros(8, dtype=np.uint8)
    pointers[5] = 1
    # Slot 3: a new class seen three times; slot 5: a present class (pointer 1) seen twice.
    slots = np.array([3, 5, 3, 3, 5], dtype=np.int64)
    hit = np.array([False, True, True, True, True])
    plan = plan_writes(slots, hit, pointers)
    writes = {(int(r), int(s)): int(src)
              for r, s, src in zip(plan.rows, plan.slots, plan.sources, strict=True)}
    # Slot 3 rows 0,1,0 for occurrences 0,2,3: row 0 ← 3, row 1 ← 2; pointer 1.
    # Slot 5 rows 1,0 for occurrences 1,4: row 1 ← 1, row 0 ← 4; pointer 1.
    assert writes == {(0, 3): 3, (1, 3): 2, (1, 5): 1, (0, 5): 4}
    assert dict(zip(plan.pointer_slots.tolist(), plan.new_pointers.tolist(), strict=True)) == {
        3: 1, 5: 1}
    # Both slots received hit writes (slot 3: the new class's second and third occurrences).
    assert plan.row1_slots.tolist() == [3, 5]


class NaiveSlotLru:
    """The paper's per-label bookkeeping, one label at a time: an OrderedDict LRU class → slot
    (least recent first; the lowest free slot first), per-slot row pointers, and the row-1
    mask — every slot that receives a hit write, a hit being a class in the pool right then."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: OrderedDict[int, int] = OrderedDict()
        self.pointer = [0] * capacity

    def write(self, labels: list[int]) -> tuple[list[int], list[bool], set[int], dict[Any, int]]:
        """(slot per label, hit per label, row-1 mask, {(row, slot): source} of final writes)."""
        slots, hits, mask, writes = [], [], set(), {}
        for i, label in enumerate(labels):
            hit = label in self.lru
            if hit:
                slot = self.lru[label]
                self.lru.move_to_end(label)
                mask.add(slot)
            else:
                if len(self.lru) < self.capacity:
                    slot = len(self.lru)
                else:
                    _, slot = self.lru.popitem(last=False)
                self.lru[label] = slot
                self.pointer[slot] = 0
            writes[(self.pointer[slot], slot)] = i
            self.pointer[slot] ^= 1
            slots.append(slot)
            hits.append(hit)
        return slots, hits, mask, writes


def _plan_against_twin(index: Any, twin: NaiveSlotLru, pointers: np.ndarray,
                       labels: list[int]) -> Any:
    """Assign ``labels`` in the index and the twin; check the plan against the twin's writes."""
    slots, hit, _ = index.assign(np.array(labels, dtype=np.int64))
    want_slots, want_hit, want_mask, want_writes = twin.write(labels)
    assert slots.tolist() == want_slots and hit.tolist() == want_hit
    plan = plan_writes(slots, hit, pointers)
    assert plan.row1_slots.tolist() == sorted(want_mask)
    writes = {(int(r), int(s)): int(src)
              for r, s, src in zip(plan.rows, plan.slots, plan.sources, strict=True)}
    assert writes == want_writes
    pointers[plan.pointer_slots] = plan.new_pointers
    assert pointers.tolist() == twin.pointer
    return plan


def test_row1_slots_follow_every_hit_write() -> None:
    from f2c.pool import ClassPoolIndex

    # The example: a class new to the pool, then hit again in the same batch.
    plan = plan_writes(np.array([5, 5]), np.array([False, True]), np.zeros(8, dtype=np.uint8))
    assert plan.row1_slots.tolist() == [5]
    # New then hit, through the index and the twin: both rows written, slot masked.
    index, twin = ClassPoolIndex(2), NaiveSlotLru(2)
    pointers = np.zeros(2, dtype=np.uint8)
    plan = _plan_against_twin(index, twin, pointers, [7, 7, 8])
    assert plan.row1_slots.tolist() == [0]
    # Evicted, then reinserted (the pool is full, 7 least recent): 9 evicts 7 from slot 0, 7
    # comes back as new in slot 1 (evicting 8) and is hit once more there. Only slot 1 is
    # masked: the first write of 7 in this batch was a miss.
    plan = _plan_against_twin(index, twin, pointers, [9, 7, 7])
    assert plan.row1_slots.tolist() == [1]
    # A class present before the batch, hit once: masked.
    plan = _plan_against_twin(index, twin, pointers, [9])
    assert plan.row1_slots.tolist() == [0]


def test_plans_match_the_per_label_twin_on_random_streams() -> None:
    from f2c.pool import ClassPoolIndex

    rng = np.random.default_rng(11)
    capacity = 8
    index, twin = ClassPoolIndex(capacity), NaiveSlotLru(capacity)
    pointers = np.zeros(capacity, dtype=np.uint8)
    masked_new_classes = 0
    for _ in range(300):
        labels = rng.integers(0, 14, size=int(rng.integers(1, 9))).tolist()
        if len(set(labels)) > capacity:
            continue
        present = set(twin.lru)
        plan = _plan_against_twin(index, twin, pointers, labels)
        new_and_hit = {s for s in plan.row1_slots.tolist()
                       if next(c for c, v in twin.lru.items() if v == s) not in present}
        masked_new_classes += len(new_and_hit)
    assert masked_new_classes > 20  # the rule's new case was exercised, not just present hits


def test_state_round_trips_through_weights_only_load() -> None:
    gen = torch.Generator().manual_seed(8)
    head = _head(pool_size=10)
    for _ in range(3):
        _run(head, _batch(gen, 6, num_classes=25))
    buf = io.BytesIO()
    torch.save(head.full_state_dict(), buf)
    buf.seek(0)
    restored = _head(pool_size=10)
    restored.load_full_state_dict(torch.load(buf, weights_only=True))
    # Also through the nn.Module state_dict (extra state carries pointers and the LRU).
    via_module = _head(pool_size=10)
    via_module.load_state_dict(copy.deepcopy(head.state_dict()))
    b = _batch(gen, 6, num_classes=25)
    expected = _run(head, b).loss
    assert torch.equal(_run(restored, b).loss, expected)
    assert torch.equal(_run(via_module, b).loss, expected)
    with pytest.raises(ValueError, match="pool_size=10"):
        _head(pool_size=12).load_full_state_dict(head.full_state_dict())


def test_stats() -> None:
    head = _head(pool_size=12, num_classes=200)
    out = _run(head, _batch(torch.Generator().manual_seed(9), 6, num_classes=200))
    s = out.stats
    assert set(s) >= {"in_pool_fraction", "pool_occupancy", "pool_loss", "outlier_loss"}
    assert all(isinstance(v, float) for v in s.values())
    # First step, 200 classes: the shared identities are in the pool, most instance rows not.
    assert 0.4 <= s["in_pool_fraction"] < 1.0
    assert s["pool_occupancy"] == pytest.approx(len(head.index) / 12)
    assert s["loss_pass_a"] + s["loss_pass_b"] == pytest.approx(out.loss.item(), rel=1e-6)


def test_probe_gallery_ema_and_buffers() -> None:
    from f2c.heads import ProbeGallery

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    nets = ProbeGallery(net, momentum=0.9)
    assert all(not p.requires_grad for p in nets.gallery.parameters())
    g0 = [p.detach().clone() for p in nets.gallery.parameters()]
    with torch.no_grad():
        for p in nets.probe.parameters():
            p.add_(1.0)
    nets.probe(torch.randn(8, 4))  # moves the probe's BN running stats
    nets.update_gallery()
    for g, old, p in zip(nets.gallery.parameters(), g0, nets.probe.parameters(), strict=True):
        assert torch.allclose(g, 0.9 * old + 0.1 * p.detach(), atol=1e-6)
    for g, p in zip(nets.gallery.buffers(), nets.probe.buffers(), strict=True):
        assert torch.equal(g, p)  # copied, not averaged
    x = torch.randn(8, 4, requires_grad=True)
    out = nets.gallery_forward(x)
    assert not out.requires_grad and nets.gallery.training
    nets.probe.eval()
    nets.gallery_forward(x)
    assert not nets.gallery.training
    with pytest.raises(ValueError, match="momentum"):
        ProbeGallery(net, momentum=1.0)
