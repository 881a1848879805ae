"""Where one gathered gallery batch goes in the pool: a deterministic write plan (numpy, CPU).

The pool keeps two rows per slot (the newest and the second-newest feature of its class) and a
per-slot pointer to the row written next. The plan follows the rule "as if the gathered batch
were written one feature at a time, in gathered (rank) order":

* a class new to the pool (or new in its slot after an eviction) starts with pointer 0;
* each occurrence of a class writes the row its pointer names, then flips the pointer.

So a class that occurs k times in one batch ends with its last occurrence (and, for k ≥ 2, its
second-to-last) in the pool and its pointer flipped k times. Each (row, slot) is written at most
once by a plan, so the device write is a scatter without duplicate indices: no racing writers.

The plan also says where cos2 reads row 1 (docs/design.md §1): every slot that received a *hit*
write, i.e. a write whose class was in the pool at that moment in gathered order — a class
present before the batch, or one that entered earlier in the same batch and occurs again. (The
index refuses a batch with more distinct classes than slots, so a class written in a batch is
never evicted later in it, and each slot holds one class across the batch's writes.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class WritePlan:
    """The writes of one gathered batch, given the slots the LRU assigned to it."""

    rows: Int64Array  # pool row (0 or 1) of each write
    slots: Int64Array  # pool slot of each write
    sources: Int64Array  # index into the gathered batch of the feature written
    pointer_slots: Int64Array  # distinct slots touched, ascending
    new_pointers: npt.NDArray[np.uint8]  # their pointers after the batch
    row1_slots: Int64Array  # slots that received a hit write, ascending: cos2 reads row 1

    def slots_of_row(self, row: int) -> tuple[Int64Array, Int64Array]:
        """(slots, sources) of the writes into pool row ``row``."""
        mask = self.rows == row
        return self.slots[mask], self.sources[mask]


def plan_writes(
    slots: Int64Array, hit: npt.NDArray[np.bool_], pointers: npt.NDArray[np.uint8]
) -> WritePlan:
    """Plan the pool writes for a batch whose i-th feature went to ``slots[i]``.

    ``hit[i]`` is the LRU's hit flag for occurrence i (True when its class was present at that
    point); ``pointers`` is the per-slot row pointer before the batch.
    """
    n = slots.shape[0]
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return WritePlan(empty, empty, empty, empty, np.empty(0, dtype=np.uint8), empty)
    order = np.argsort(slots, kind="stable")  # groups by slot, gathered order inside a group
    sorted_slots = slots[order]
    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_slots[1:], sorted_slots[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    counts = np.diff(np.append(starts, n))
    distinct = sorted_slots[starts]
    # The first occurrence's hit flag says whether the class was present before the batch.
    present = hit[order[starts]]
    first_row = np.where(present, pointers[distinct], 0).astype(np.int64)

    last = starts + counts - 1
    rows = [(first_row + counts - 1) % 2]
    write_slots = [distinct]
    sources = [order[last]]
    two = counts >= 2
    rows.append((first_row[two] + counts[two] - 2) % 2)
    write_slots.append(distinct[two])
    sources.append(order[last[two] - 1])
    return WritePlan(
        rows=np.concatenate(rows),
        slots=np.concatenate(write_slots),
        sources=np.concatenate(sources),
        pointer_slots=distinct,
        new_pointers=((first_row + counts) % 2).astype(np.uint8),
        row1_slots=np.unique(slots[hit]).astype(np.int64, copy=False),
    )
