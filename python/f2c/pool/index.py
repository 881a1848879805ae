"""``ClassPoolIndex``: the LRU map class id → pool slot, implemented in Rust."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from f2c import _native
from f2c._labels import INT64_MAX, as_label_array

Int64Array = npt.NDArray[np.int64]
#: Largest capacity (slot numbers are 32-bit, one value reserved). Memory follows the classes
#: held, not the capacity.
MAX_CAPACITY = 2**32 - 2
BoolArray = npt.NDArray[np.bool_]


def _state_to_numpy(state: Any) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    out = dict(state)
    for key in ("keys", "slots"):
        value = out.get(key)
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if value is not None:
            arr = np.asarray(value)
            if arr.dtype.kind not in "iu" or arr.ndim != 1:
                raise ValueError(
                    f"corrupt ClassPoolIndex state: entry {key!r} must be a 1-D integer array"
                )
            out[key] = np.ascontiguousarray(arr, dtype=np.int64)
    return out


class ClassPoolIndex(_native.ClassPoolIndex):
    """LRU index of F²C's dynamic class pool: class id → slot in ``[0, capacity)``.

    ``assign(labels)`` processes labels in order exactly as an LRU looked up one label at a
    time would: a present class becomes most recent and keeps its slot; an absent class takes
    the lowest never-used slot while the pool is not full, otherwise it evicts the
    least-recently-used class and takes its slot. Returns ``(slots, hit, evicted)``.

    A call holding more distinct classes than ``capacity`` raises ``ValueError`` and changes
    nothing. ``undo()`` returns to the exact state from just before the most recent
    ``assign(..., undoable=True)`` (plain assigns made after it are reverted with it); undoable
    calls stack, last in first out. Class ids are non-negative 64-bit integers; ids below 2**26
    take a dense fast path.

    Memory follows the classes held, not ``capacity``: a pool of any capacity up to
    ``MAX_CAPACITY`` costs nothing until it fills, so a capacity read from a state dict cannot
    make the process allocate what the state does not hold. A refused allocation raises
    ``MemoryError``.
    """

    def __new__(cls, capacity: int) -> ClassPoolIndex:
        # Checked here so that a bad argument names ``capacity`` (the binding would report a
        # bare conversion error for a huge int or a float).
        if isinstance(capacity, (bool, np.bool_)) or not isinstance(capacity, (int, np.integer)):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if capacity > MAX_CAPACITY:
            raise ValueError(f"capacity must be at most {MAX_CAPACITY} (2**32 - 2), got {capacity}")
        return super().__new__(cls, int(capacity))

    def assign(  # type: ignore[override]
        self, labels: Any, undoable: bool = False
    ) -> tuple[Int64Array, BoolArray, Int64Array]:
        return super().assign(as_label_array(labels), undoable)

    def lookup(self, labels: Any) -> Int64Array:  # type: ignore[override]
        return super().lookup(as_label_array(labels))

    def __contains__(self, label: object) -> bool:
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"class ids are integers, got {type(label).__name__}")
        if label < 0 or label > INT64_MAX:  # a constant: np.iinfo costs ~1 µs a call
            return False
        return super().__contains__(int(label))

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """State as ints and int64 tensors: loads with ``torch.load(weights_only=True)``."""
        import torch

        state = super().state_dict()
        state["keys"] = torch.from_numpy(state["keys"])
        state["slots"] = torch.from_numpy(state["slots"])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        super().load_state_dict(_state_to_numpy(state))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClassPoolIndex:  # type: ignore[override]
        return super().from_state_dict(_state_to_numpy(state))  # type: ignore[return-value]
