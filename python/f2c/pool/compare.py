"""Per-label LRU implementations, and the adapter that runs them through batched label streams.

The paper's reference code consults its LRU once per label from Python. Its per-label
interface, which :class:`PerLabelAdapter` drives, is (``Class(capacity)`` builds one):

- ``label in lru`` — whether the class is present (the caller's hit test, asked before ``get``);
- ``get(label) -> slot`` — a present class becomes the most recent and keeps its slot; an absent
  one takes the lowest never-used slot while there is one, else evicts the least recent class
  and takes its slot;
- ``try_get(label) -> slot`` — the same, journaled so that it can be rolled back;
- ``view(label) -> slot`` — the slot, or -1 when absent; recency is unchanged;
- ``rollback_steps(n)`` — undo the most recent ``n`` ``try_get`` calls (all of them when fewer
  are pending), last first, restoring slots, recency and evicted classes exactly.

These are the semantics of ``f2c.ClassPoolIndex`` looked up one label at a time
(docs/design.md §1.4), so any per-label implementation can be checked against the batched Rust
index label by label and then timed on the same streams (``benches/bench_pool_index.py``,
``F2C_LRU_IMPL=module:Class``).
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from f2c._labels import as_label_array
from f2c.pool.index import ClassPoolIndex

__all__ = [
    "ENV_VAR",
    "PER_LABEL_METHODS",
    "LruMismatchError",
    "OrderedDictLRU",
    "PerLabelAdapter",
    "PerLabelLRU",
    "RustPerLabelLRU",
    "check_same_results",
    "load_per_label_class",
    "record_f2c_stream",
    "specs_from_env",
]

ENV_VAR = "F2C_LRU_IMPL"
PER_LABEL_METHODS = ("get", "try_get", "view", "rollback_steps", "__contains__")

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@runtime_checkable
class PerLabelLRU(Protocol):
    """The paper code's per-label LRU interface (see the module docstring)."""

    def __contains__(self, label: int) -> bool: ...
    def get(self, label: int) -> int: ...
    def try_get(self, label: int) -> int: ...
    def view(self, label: int) -> int: ...
    def rollback_steps(self, steps: int) -> None: ...


class OrderedDictLRU:
    """The idiomatic Python LRU: one ``OrderedDict`` (least recent first), per-label calls.

    ``OrderedDict`` cannot put a key back at an arbitrary position, so a hit cannot be undone
    one step at a time: the first ``try_get`` after a clean state copies the dict, and
    ``rollback_steps`` restores that copy and replays the ``try_get`` calls it keeps.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._lru: OrderedDict[int, int] = OrderedDict()
        self._before_try: OrderedDict[int, int] | None = None
        self._tried: list[int] = []

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, label: int) -> bool:
        return label in self._lru

    def _take(self, label: int) -> int:
        lru = self._lru
        slot = lru.get(label)
        if slot is not None:
            lru.move_to_end(label)
            return slot
        if len(lru) < self.capacity:
            slot = len(lru)  # slots are never freed, so the used ones are [0, len)
        else:
            _, slot = lru.popitem(last=False)
        lru[label] = slot
        return slot

    def get(self, label: int) -> int:
        if self._tried:
            # A plain get is not journaled: rolling back across it has no defined meaning.
            raise RuntimeError("get() with try_get calls pending: roll them back first")
        return self._take(label)

    def try_get(self, label: int) -> int:
        if not self._tried:
            self._before_try = OrderedDict(self._lru)
        self._tried.append(label)
        return self._take(label)

    def view(self, label: int) -> int:
        return self._lru.get(label, -1)

    def rollback_steps(self, steps: int) -> None:
        if steps <= 0 or not self._tried:
            return
        assert self._before_try is not None
        keep = self._tried[: max(len(self._tried) - steps, 0)]
        self._lru = self._before_try
        self._before_try = None
        self._tried = []
        for label in keep:
            self.try_get(label)


class RustPerLabelLRU:
    """``f2c.ClassPoolIndex`` called with one label per call, behind the per-label interface.

    ``try_get`` is an undoable one-label ``assign``; ``rollback_steps(n)`` calls ``undo`` n
    times. It shows what per-label calls cost against the same index taking whole batches.
    """

    def __init__(self, capacity: int) -> None:
        self._index = ClassPoolIndex(capacity)
        self._one = np.empty(1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, label: int) -> bool:
        return label in self._index

    def get(self, label: int) -> int:
        if self._index.undo_depth:
            # ClassPoolIndex.undo would revert this plain assign too; the paper's LRU would not.
            raise RuntimeError("get() with try_get calls pending: roll them back first")
        self._one[0] = label
        return int(self._index.assign(self._one)[0][0])

    def try_get(self, label: int) -> int:
        self._one[0] = label
        return int(self._index.assign(self._one, undoable=True)[0][0])

    def view(self, label: int) -> int:
        self._one[0] = label
        return int(self._index.lookup(self._one)[0])

    def rollback_steps(self, steps: int) -> None:
        for _ in range(min(steps, self._index.undo_depth)):
            self._index.undo()


class PerLabelAdapter:
    """A per-label LRU behind the batched API of ``ClassPoolIndex`` (``assign``, ``lookup``,
    ``undo``), calling it as the paper's training step does: for each label, ``label in lru``
    (the hit flag) then ``get`` — or ``try_get`` for an undoable assign, rolled back by
    ``undo`` with ``rollback_steps``; ``lookup`` is ``view`` per label.

    The per-label interface does not report evictions. With ``track_evictions`` the adapter
    keeps a slot → class table and derives them (the evicted class of a miss is the previous
    owner of its slot); without it, ``assign`` returns an empty eviction array and costs only
    the calls the paper's step makes — the timed configuration.
    """

    def __init__(self, lru: Any, capacity: int, *, track_evictions: bool = True) -> None:
        missing = [m for m in PER_LABEL_METHODS if not callable(getattr(lru, m, None))]
        if missing:
            raise TypeError(
                f"{type(lru).__module__}.{type(lru).__qualname__} lacks the per-label LRU "
                f"method(s) {', '.join(missing)} (needs {', '.join(PER_LABEL_METHODS)})"
            )
        self.lru = lru
        self.capacity = int(capacity)
        self.track_evictions = track_evictions
        self._owner: list[int] = [-1] * self.capacity
        self._pending: list[tuple[int, list[int] | None]] = []  # (try_get calls, owner copy)

    @property
    def undo_depth(self) -> int:
        return len(self._pending)

    def assign(
        self, labels: Any, undoable: bool = False
    ) -> tuple[Int64Array, BoolArray, Int64Array]:
        values = as_label_array(labels).tolist()
        if not undoable and self._pending:
            raise RuntimeError(
                "a plain assign with an undoable one pending: the per-label interface cannot "
                "revert plain get() calls, so undo first"
            )
        lru = self.lru
        take = lru.try_get if undoable else lru.get
        slots = [0] * len(values)
        hits = [False] * len(values)
        for i, label in enumerate(values):
            hits[i] = label in lru
            slots[i] = take(label)
        if undoable:
            self._pending.append((len(values), list(self._owner) if self.track_evictions else None))
        evicted = self._evictions(values, slots, hits) if self.track_evictions else []
        return (
            np.asarray(slots, dtype=np.int64),
            np.asarray(hits, dtype=bool),
            np.asarray(evicted, dtype=np.int64),
        )

    def _evictions(self, values: list[int], slots: list[int], hits: list[bool]) -> list[int]:
        owner = self._owner
        evicted = []
        for label, slot, hit in zip(values, slots, hits, strict=True):
            if hit:
                continue
            if not 0 <= slot < self.capacity:
                raise ValueError(f"slot {slot} for class {label} is outside [0, {self.capacity})")
            if owner[slot] >= 0:
                evicted.append(owner[slot])
            owner[slot] = label
        return evicted

    def undo(self) -> None:
        if not self._pending:
            raise RuntimeError("undo() called with no undoable assign to revert")
        steps, owner = self._pending.pop()
        self.lru.rollback_steps(steps)
        if owner is not None:
            self._owner = owner

    def lookup(self, labels: Any) -> Int64Array:
        view = self.lru.view
        return np.asarray([view(v) for v in as_label_array(labels).tolist()], dtype=np.int64)


def load_per_label_class(spec: str) -> type:
    """The class named by ``"package.module:Class"`` (e.g. ``lru_utils:LRU``), checked to have
    the per-label methods."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"LRU implementation {spec!r}: expected 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"LRU implementation {spec!r}: cannot import {module_name!r}: {exc}") \
            from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"LRU implementation {spec!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"LRU implementation {spec!r}: {attr!r} is not a class")
    missing = [m for m in PER_LABEL_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ValueError(
            f"LRU implementation {spec!r} lacks the per-label method(s) {', '.join(missing)} "
            f"(needs {', '.join(PER_LABEL_METHODS)})"
        )
    return obj


def specs_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The ``module:Class`` specs in ``$F2C_LRU_IMPL`` (comma-separated; empty when unset)."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class Record:
    """One call's outputs in a recorded stream."""

    what: str  # e.g. "step 3 pass A assign (undoable)"
    labels: Int64Array
    outputs: tuple[npt.NDArray[Any], ...]  # (slots, hit, evicted) or (slots,)


def record_f2c_stream(
    index: Any, fill: Int64Array, steps: Sequence[tuple[Int64Array, Int64Array]]
) -> list[Record]:
    """Drive ``index`` (batched API) through an F²C-shaped stream and record every output.

    ``fill`` is assigned first; each step then does pass A (undoable assign of ``a``, lookup of
    ``b``, undo) and pass B (assign of ``b``, lookup of ``a``), as the head does per step.
    """
    records = [Record("fill", fill, tuple(index.assign(fill)))]
    for k, (a, b) in enumerate(steps):
        records.append(Record(f"step {k} pass A assign (undoable)", a,
                              tuple(index.assign(a, undoable=True))))
        records.append(Record(f"step {k} pass A lookup", b, (index.lookup(b),)))
        index.undo()
        records.append(Record(f"step {k} pass B assign", b, tuple(index.assign(b))))
        records.append(Record(f"step {k} pass B lookup", a, (index.lookup(a),)))
    return records


class LruMismatchError(AssertionError):
    """An implementation's outputs differ from the reference's on the same stream."""


_OUTPUT_NAMES = ("slot", "hit flag", "evicted class")


def check_same_results(
    implementations: dict[str, Callable[[], Any]],
    fill: Int64Array,
    steps: Sequence[tuple[Int64Array, Int64Array]],
) -> None:
    """Run every implementation (a factory of a fresh batched index) through the same stream
    and raise :class:`LruMismatchError` at the first label where one differs from the first
    implementation: slot, hit flag, evicted class (in eviction order) or looked-up slot."""
    names = list(implementations)
    if len(names) < 2:
        raise ValueError("need at least two implementations to compare")
    expected = record_f2c_stream(implementations[names[0]](), fill, steps)
    for name in names[1:]:
        got = record_f2c_stream(implementations[name](), fill, steps)
        for want, have in zip(expected, got, strict=True):
            for which, (x, y) in enumerate(zip(want.outputs, have.outputs, strict=True)):
                what = "looked-up slot" if len(want.outputs) == 1 else _OUTPUT_NAMES[which]
                _first_difference(name, names[0], want, what, np.asarray(x), np.asarray(y))


def _first_difference(
    name: str, base: str, record: Record, what: str, want: npt.NDArray[Any],
    have: npt.NDArray[Any],
) -> None:
    if want.shape == have.shape and np.array_equal(want, have):
        return
    if what == "evicted class":
        # Evictions are listed in order, one per evicting label, not one per label.
        n = min(len(want), len(have))
        pos = next((i for i in range(n) if want[i] != have[i]), n)
        raise LruMismatchError(
            f"{name} differs from {base} at {record.what}: eviction #{pos} is "
            f"{have[pos] if pos < len(have) else 'missing'}, expected "
            f"{want[pos] if pos < len(want) else 'none'} ({len(have)} evictions, expected "
            f"{len(want)})"
        )
    if want.shape != have.shape:
        raise LruMismatchError(
            f"{name} differs from {base} at {record.what}: {len(have)} {what}s for "
            f"{len(record.labels)} labels, expected {len(want)}"
        )
    pos = int(np.flatnonzero(want != have)[0])
    raise LruMismatchError(
        f"{name} differs from {base} at {record.what}: {what} of class "
        f"{int(record.labels[pos])} (position {pos}) is {have[pos]}, expected {want[pos]}"
    )
