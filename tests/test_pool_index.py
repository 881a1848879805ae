"""ClassPoolIndex (Rust) against its pure-Python twin, plus its contract on bad input."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from f2c import ClassPoolIndex, ReferenceClassPoolIndex

# --- property tests: random operation streams drive both implementations ---------------------

# Small id universes force hits and evictions; a few huge ids exercise the sparse path.
label_values = st.one_of(
    st.integers(0, 12),
    st.sampled_from([2**26 - 1, 2**26, 2**40 + 3, 2**63 - 1]),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("assign"), st.lists(label_values, max_size=12), st.booleans()),
        st.tuples(st.just("lookup"), st.lists(label_values, max_size=8)),
        st.tuples(st.just("undo")),
        st.tuples(st.just("roundtrip")),
    ),
    max_size=40,
)


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args, **kwargs)
    except (ValueError, RuntimeError) as exc:
        return type(exc).__name__, str(exc)


def _same(a: Any, b: Any) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] != "ok":
        assert a[1] == b[1]
        return
    if isinstance(a[1], tuple):
        for x, y in zip(a[1], b[1], strict=True):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
    elif a[1] is not None:
        np.testing.assert_array_equal(a[1], b[1])


def _assert_same_state(rust: ClassPoolIndex, ref: ReferenceClassPoolIndex) -> None:
    np.testing.assert_array_equal(rust.keys(), ref.keys())
    np.testing.assert_array_equal(rust.slots(), ref.slots())
    assert len(rust) == len(ref)
    assert rust.undo_depth == ref.undo_depth


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 8), ops=operations)
def test_matches_reference_on_random_streams(capacity: int, ops: list[tuple[Any, ...]]) -> None:
    rust = ClassPoolIndex(capacity)
    ref = ReferenceClassPoolIndex(capacity)
    for op in ops:
        if op[0] == "assign":
            labels = np.asarray(op[1], dtype=np.int64)
            _same(
                _outcome(rust.assign, labels, undoable=op[2]),
                _outcome(ref.assign, labels, undoable=op[2]),
            )
        elif op[0] == "lookup":
            labels = np.asarray(op[1], dtype=np.int64)
            _same(_outcome(rust.lookup, labels), _outcome(ref.lookup, labels))
        elif op[0] == "undo":
            _same(_outcome(rust.undo), _outcome(ref.undo))
        elif rust.undo_depth == 0:  # round-trip through torch.save / torch.load(weights_only)
            buffer = io.BytesIO()
            torch.save(rust.state_dict(), buffer)
            buffer.seek(0)
            rust = ClassPoolIndex.from_state_dict(torch.load(buffer, weights_only=True))
            ref = ReferenceClassPoolIndex.from_state_dict(ref.state_dict())
        _assert_same_state(rust, ref)
        for label in range(13):
            assert (label in rust) == (label in ref)


@settings(max_examples=50, deadline=None)
@given(
    capacity=st.integers(1, 64),
    batches=st.lists(st.lists(st.integers(0, 200), max_size=64), min_size=1, max_size=10),
)
def test_undo_stack_restores_every_intermediate_state(
    capacity: int, batches: list[list[int]]
) -> None:
    index = ClassPoolIndex(capacity)
    index.assign(np.arange(capacity // 2))
    history = [(index.keys(), index.slots())]
    for batch in batches:
        if len(set(batch)) > capacity:
            continue
        index.assign(batch, undoable=True)
        history.append((index.keys(), index.slots()))
    history.pop()
    while index.undo_depth:
        index.undo()
        keys, slots = history.pop()
        np.testing.assert_array_equal(index.keys(), keys)
        np.testing.assert_array_equal(index.slots(), slots)


# --- the documented behaviour, case by case --------------------------------------------------


def test_lru_order_slots_and_evictions() -> None:
    index = ClassPoolIndex(3)
    slots, hit, evicted = index.assign([7, 8, 9])
    assert slots.tolist() == [0, 1, 2] and not hit.any() and evicted.size == 0
    slots, hit, evicted = index.assign([7, 10, 11])
    # 7 is refreshed; 10 evicts the LRU (8, slot 1); 11 then evicts 9 (slot 2).
    assert slots.tolist() == [0, 1, 2]
    assert hit.tolist() == [True, False, False]
    assert evicted.tolist() == [8, 9]
    assert index.keys().tolist() == [11, 10, 7]
    assert index.lookup([8, 7, 11]).tolist() == [-1, 0, 2]
    assert slots.dtype == np.int64 and evicted.dtype == np.int64 and hit.dtype == np.bool_


def test_lookup_changes_nothing() -> None:
    index = ClassPoolIndex(2)
    index.assign([1, 2])
    index.lookup([1])
    _, _, evicted = index.assign([3])
    assert evicted.tolist() == [1]  # the lookup did not refresh 1


def test_overflowing_call_is_refused_and_leaves_no_trace() -> None:
    index = ClassPoolIndex(4)
    index.assign([1, 2, 3, 4])
    before = index.keys(), index.slots()
    with pytest.raises(ValueError, match=r"5 distinct classes.*capacity is 4"):
        index.assign([10, 11, 12, 13, 14])
    np.testing.assert_array_equal(index.keys(), before[0])
    np.testing.assert_array_equal(index.slots(), before[1])
    assert index.undo_depth == 0


def test_undo_without_undoable_assign_raises() -> None:
    index = ClassPoolIndex(2)
    index.assign([1])
    with pytest.raises(RuntimeError, match="no undoable assign"):
        index.undo()


def test_accepts_torch_and_unsigned_inputs() -> None:
    index = ClassPoolIndex(4)
    slots, _, _ = index.assign(torch.tensor([3, 1, 3]))
    assert slots.tolist() == [0, 1, 0]
    assert index.lookup(np.array([1, 3], dtype=np.uint16)).tolist() == [1, 0]
    assert index.assign([])[0].size == 0


def test_sparse_ids_work() -> None:
    index = ClassPoolIndex(2)
    big = [2**62 + 5, 2**40]
    slots, _, _ = index.assign(big)
    assert slots.tolist() == [0, 1]
    assert 2**62 + 5 in index and 5 not in index
    assert index.keys().tolist() == big[::-1]


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        ([1, -2], ValueError, "non-negative, got -2 at position 1"),
        (np.array([1.0, 2.0]), TypeError, "integers, got dtype float64"),
        (np.array([1, "a"], dtype=object), TypeError, "integers"),
        (np.array([True, False]), TypeError, "integers"),
        (np.zeros((2, 2), dtype=np.int64), ValueError, r"1-D.*\(2, 2\)"),
        (np.array([2**64 - 1], dtype=np.uint64), ValueError, "above"),
    ],
)
def test_bad_labels_are_rejected(labels: Any, error: type[Exception], message: str) -> None:
    index = ClassPoolIndex(4)
    with pytest.raises(error, match=message):
        index.assign(labels)
    with pytest.raises(error, match=message):
        index.lookup(labels)
    assert len(index) == 0


def test_contains_rejects_non_integers() -> None:
    index = ClassPoolIndex(2)
    index.assign([1])
    assert 1 in index and np.int32(1) in index and -1 not in index
    with pytest.raises(TypeError):
        _ = 1.0 in index


@pytest.mark.parametrize("capacity", [0, -5])
def test_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        ClassPoolIndex(capacity)


def test_state_dict_refuses_pending_undo() -> None:
    index = ClassPoolIndex(2)
    index.assign([1], undoable=True)
    with pytest.raises(ValueError, match="undo them first"):
        index.state_dict()


def test_state_round_trip_through_torch_weights_only(tmp_path: Any) -> None:
    index = ClassPoolIndex(5)
    index.assign([4, 8, 15, 16])
    index.assign([23, 8])
    path = tmp_path / "index.pt"
    torch.save(index.state_dict(), path)
    restored = ClassPoolIndex.from_state_dict(torch.load(path, weights_only=True))
    assert isinstance(restored, ClassPoolIndex)
    assert restored.capacity == 5
    stream = [[42, 4], [7, 9, 8], [1, 2, 3, 4, 5]]
    for batch in stream:
        for a, b in zip(index.assign(batch), restored.assign(batch), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index.keys(), restored.keys())


def _valid_state() -> dict[str, Any]:
    index = ClassPoolIndex(4)
    index.assign([10, 20, 30])
    return index.state_dict()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"version": 99}, "unsupported state version"),
        ({"capacity": 2}, "exceed capacity"),
        ({"capacity": 0}, "capacity"),
        ({"slots": torch.tensor([0, 1, 1])}, "out of range|repeated"),
        ({"slots": torch.tensor([0, 1, 3])}, "out of range"),
        ({"keys": torch.tensor([10, 10, 30])}, "appears twice"),
        ({"keys": torch.tensor([10, -20, 30])}, "negative"),
        ({"keys": torch.tensor([10, 20])}, "3 slots"),
        ({"keys": torch.tensor([1.0, 2.0, 3.0])}, "integer array"),
        ({"keys": None}, "keys"),
    ],
)
def test_corrupt_states_are_rejected(edit: dict[str, Any], message: str) -> None:
    state = _valid_state()
    state.update(edit)
    state = {k: v for k, v in state.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        ClassPoolIndex.from_state_dict(state)
    index = ClassPoolIndex(4)
    index.assign([1])
    with pytest.raises(ValueError, match=message):
        index.load_state_dict(state)
    assert index.keys().tolist() == [1]  # a failed load changes nothing
