"""A plain Python LRU with the API of ``ClassPoolIndex``: the test oracle and bench baseline."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from f2c._labels import as_label_array


class ReferenceClassPoolIndex:
    """Pure-Python twin of :class:`f2c.ClassPoolIndex` (same outputs, same errors)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = int(capacity)
        # class id → slot, least recent first (OrderedDict.move_to_end makes it most recent).
        self._lru: OrderedDict[int, int] = OrderedDict()
        self._undo: list[OrderedDict[int, int]] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def undo_depth(self) -> int:
        return len(self._undo)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, label: object) -> bool:
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"class ids are integers, got {type(label).__name__}")
        return int(label) in self._lru

    def __repr__(self) -> str:
        return f"ReferenceClassPoolIndex(capacity={self._capacity}, len={len(self)})"

    def assign(
        self, labels: Any, undoable: bool = False
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        values = as_label_array(labels).tolist()
        distinct = len(set(values))
        if distinct > self._capacity:
            raise ValueError(
                f"one assign call holds {distinct} distinct classes but the pool capacity is "
                f"{self._capacity}; classes of the same call would evict each other (raise the "
                f"pool size to at least {distinct})"
            )
        if undoable:
            self._undo.append(OrderedDict(self._lru))
        slots: list[int] = []
        hits: list[bool] = []
        evicted: list[int] = []
        lru = self._lru
        for label in values:
            slot = lru.get(label)
            if slot is not None:
                lru.move_to_end(label)
                hits.append(True)
            else:
                if len(lru) < self._capacity:
                    slot = len(lru)
                else:
                    old, slot = lru.popitem(last=False)
                    evicted.append(old)
                lru[label] = slot
                hits.append(False)
            slots.append(slot)
        return (
            np.asarray(slots, dtype=np.int64),
            np.asarray(hits, dtype=bool),
            np.asarray(evicted, dtype=np.int64),
        )

    def undo(self) -> None:
        """Return to the state from before the most recent undoable assign."""
        if not self._undo:
            raise RuntimeError("undo() called with no undoable assign to revert")
        self._lru = self._undo.pop()

    def lookup(self, labels: Any) -> npt.NDArray[np.int64]:
        values = as_label_array(labels).tolist()
        return np.asarray([self._lru.get(v, -1) for v in values], dtype=np.int64)

    def keys(self) -> npt.NDArray[np.int64]:
        return np.asarray(list(reversed(self._lru.keys())), dtype=np.int64)

    def slots(self) -> npt.NDArray[np.int64]:
        return np.asarray(list(reversed(self._lru.values())), dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        import torch

        if self._undo:
            raise ValueError(
                f"state_dict() with {len(self._undo)} undoable assign(s) pending: undo them first"
            )
        return {
            "version": 1,
            "capacity": self._capacity,
            "keys": torch.from_numpy(self.keys()),
            "slots": torch.from_numpy(self.slots()),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ReferenceClassPoolIndex:
        index = cls(int(state["capacity"]))
        keys = np.asarray(state["keys"]).tolist()
        slots = np.asarray(state["slots"]).tolist()
        for key, slot in zip(reversed(keys), reversed(slots), strict=True):
            index._lru[int(key)] = int(slot)
        return index
