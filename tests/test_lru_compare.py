"""The LRU comparison machinery (f2c.pool.compare): per-label implementations, the adapter that
drives a third-party per-label LRU named as ``module:Class``, and the pre-timing equality check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f2c import ClassPoolIndex, ReferenceClassPoolIndex
from f2c.pool.compare import (
    ENV_VAR,
    LruMismatchError,
    OrderedDictLRU,
    PerLabelAdapter,
    RustPerLabelLRU,
    check_same_results,
    load_per_label_class,
    specs_from_env,
)


class NaiveListLRU:
    """A deliberately plain per-label LRU with the paper code's interface: a Python list of
    classes in recency order (least recent first), and for every ``try_get`` a journal entry
    holding what it changed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.order: list[int] = []
        self.slot_of: dict[int, int] = {}
        # per try_get: (label, its old position or -1, evicted class or -1, its position, slot)
        self.journal: list[tuple[int, int, int, int, int]] = []

    def __contains__(self, label: int) -> bool:
        return label in self.slot_of

    def victim_position(self) -> int:
        return 0  # the least recent class

    def _touch(self, label: int) -> tuple[int, int, int, int, int]:
        if label in self.slot_of:
            pos = self.order.index(label)
            self.order.append(self.order.pop(pos))
            return label, pos, -1, -1, self.slot_of[label]
        evicted = victim = -1
        if len(self.order) < self.capacity:
            slot = len(self.order)
        else:
            victim = self.victim_position()
            evicted = self.order.pop(victim)
            slot = self.slot_of.pop(evicted)
        self.order.append(label)
        self.slot_of[label] = slot
        return label, -1, evicted, victim, slot

    def get(self, label: int) -> int:
        return self._touch(label)[4]

    def try_get(self, label: int) -> int:
        entry = self._touch(label)
        self.journal.append(entry)
        return entry[4]

    def view(self, label: int) -> int:
        return self.slot_of.get(label, -1)

    def rollback_steps(self, steps: int) -> None:
        for _ in range(min(steps, len(self.journal))):
            self.undo_one(*self.journal.pop())

    def undo_one(self, label: int, pos: int, evicted: int, victim: int, slot: int) -> None:
        self.order.remove(label)  # (the most recent class, when rolled back in order)
        if pos >= 0:
            self.order.insert(pos, label)
            return
        del self.slot_of[label]
        if evicted >= 0:
            self.order.insert(victim, evicted)
            self.slot_of[evicted] = slot


class MostRecentEvictingLRU(NaiveListLRU):
    """A broken LRU: when full it evicts the most recent class instead of the least recent."""

    def victim_position(self) -> int:
        return len(self.order) - 1


class NoRecencyRollbackLRU(NaiveListLRU):
    """A broken LRU: rolling back a hit leaves the class as the most recent."""

    def undo_one(self, label: int, pos: int, evicted: int, victim: int, slot: int) -> None:
        if pos < 0:
            super().undo_one(label, pos, evicted, victim, slot)


def _stream(
    capacity: int, batch: int, steps: int, universe: int, seed: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    fill = rng.choice(universe, size=capacity, replace=False).astype(np.int64)
    pairs = [
        (rng.integers(0, universe, batch), rng.integers(0, universe, batch))
        for _ in range(steps)
    ]
    return fill, pairs


def _factories(capacity: int, *specs: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rust": lambda: ClassPoolIndex(capacity)}
    for spec in specs:
        cls = load_per_label_class(spec)
        out[spec] = lambda cls=cls: PerLabelAdapter(cls(capacity), capacity)
    return out


def test_third_party_class_by_module_colon_class_matches_the_rust_index() -> None:
    spec = f"{__name__}:NaiveListLRU"
    assert load_per_label_class(spec) is NaiveListLRU
    # 12 slots, 9 labels per batch from 40 classes: hits, evictions and repeats in every step.
    fill, steps = _stream(capacity=12, batch=9, steps=40, universe=40, seed=1)
    check_same_results(_factories(12, spec), fill, steps)


def test_builtin_implementations_match_the_rust_index() -> None:
    fill, steps = _stream(capacity=16, batch=10, steps=30, universe=50, seed=2)
    factories = _factories(16)
    factories["reference"] = lambda: ReferenceClassPoolIndex(16)
    factories["ordereddict"] = lambda: PerLabelAdapter(OrderedDictLRU(16), 16)
    factories["rust-per-label"] = lambda: PerLabelAdapter(RustPerLabelLRU(16), 16)
    check_same_results(factories, fill, steps)


def test_adapter_reports_what_the_index_reports() -> None:
    # The hit flag comes from `in` before get, and evictions from the slot's previous owner.
    adapter = PerLabelAdapter(NaiveListLRU(3), 3)
    index = ClassPoolIndex(3)
    for labels in ([1, 2, 3], [2, 4, 4, 5], [1, 2]):
        for got, want in zip(adapter.assign(labels), index.assign(labels), strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(adapter.lookup([1, 3, 4, 5]), index.lookup([1, 3, 4, 5]))


def test_untracked_adapter_gives_the_same_slots_and_hits_without_evictions() -> None:
    tracked = PerLabelAdapter(OrderedDictLRU(4), 4)
    plain = PerLabelAdapter(OrderedDictLRU(4), 4, track_evictions=False)
    for labels in ([1, 2, 3, 4], [5, 1, 6], [7, 7, 2]):
        slots, hit, evicted = tracked.assign(labels)
        p_slots, p_hit, p_evicted = plain.assign(labels)
        np.testing.assert_array_equal(slots, p_slots)
        np.testing.assert_array_equal(hit, p_hit)
        assert len(p_evicted) == 0
    assert len(evicted) > 0


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("MostRecentEvictingLRU", r"step 0 pass A assign \(undoable\): slot of class"),
        ("NoRecencyRollbackLRU", "pass B assign"),
    ],
)
def test_the_check_catches_a_wrong_lru_and_says_where(broken: str, message: str) -> None:
    fill, steps = _stream(capacity=8, batch=6, steps=20, universe=24, seed=3)
    with pytest.raises(LruMismatchError, match=message) as caught:
        check_same_results(_factories(8, f"{__name__}:{broken}"), fill, steps)
    assert f"{__name__}:{broken} differs from rust" in str(caught.value)


# Per-label operation streams: get only while no try_get is pending (the interface leaves get
# between try_get and rollback undefined; f2c's per-label classes refuse it).
per_label_ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.integers(0, 9)),
        st.tuples(st.just("try_get"), st.integers(0, 9)),
        st.tuples(st.just("view"), st.integers(0, 9)),
        st.tuples(st.just("rollback_steps"), st.integers(0, 6)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=per_label_ops, capacity=st.integers(1, 5))
def test_per_label_classes_agree_with_a_naive_lru_on_any_stream(
    ops: list[tuple[str, int]], capacity: int
) -> None:
    naive = NaiveListLRU(capacity)
    others = [OrderedDictLRU(capacity), RustPerLabelLRU(capacity)]
    for op, arg in ops:
        if op == "get" and naive.journal:
            for lru in others:
                with pytest.raises(RuntimeError, match="roll them back first"):
                    lru.get(arg)
            continue
        want = getattr(naive, op)(arg)
        for lru in others:
            assert getattr(lru, op)(arg) == want, (type(lru).__name__, op, arg)
    for label in range(10):
        assert [label in lru for lru in others] == [label in naive] * 2
        assert [lru.view(label) for lru in others] == [naive.view(label)] * 2


def test_load_errors_name_the_spec() -> None:
    with pytest.raises(ValueError, match="expected 'module:Class'"):
        load_per_label_class("lru_utils.LRU")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_f2c'"):
        load_per_label_class("no_such_module_f2c:LRU")
    with pytest.raises(ValueError, match="has no 'Missing'"):
        load_per_label_class(f"{__name__}:Missing")
    with pytest.raises(ValueError, match="is not a class"):
        load_per_label_class(f"{__name__}:_stream")
    with pytest.raises(ValueError, match="lacks the per-label method.*try_get, view, rollback"):
        load_per_label_class("collections:OrderedDict")


def test_specs_from_env() -> None:
    assert specs_from_env({}) == []
    assert specs_from_env({ENV_VAR: " lru_utils:LRU, my.mod:Cls ,"}) == [
        "lru_utils:LRU",
        "my.mod:Cls",
    ]
