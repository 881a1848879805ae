"""Distributed batch samplers for F²C's two loaders.

Both samplers run in the main process and yield one ``ReadRequest`` per training step: the rows
this rank reads and a horizontal-flip decision per image. All randomness is counter-based — a
fresh generator seeded from ``(seed, stream, epoch or cycle, step)`` — so a sampler's whole state
is its position: resuming at a position reproduces exactly the batches an uninterrupted run would
have drawn, whatever worker processes did in between.

* ``DistributedInstanceSampler``: every epoch a new permutation of all rows (identities are
  therefore drawn in proportion to their image counts); step ``s`` takes the global slice
  ``perm[s·W·B : (s+1)·W·B]`` and rank ``r`` its ``B`` rows. The epoch has ``N // (W·B)`` steps on
  every rank (the remainder, different rows each epoch, is left out).
* ``DistributedIdentitySampler``: an endless stream. Each cycle is a new permutation of the
  identities that have images; step ``k`` of a cycle gives ``W·B`` distinct identities, ``B`` per
  rank, so identities are distinct across ranks too. Each identity contributes two different
  images (the same one twice if it has only one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DistributedIdentitySampler",
    "DistributedInstanceSampler",
    "ReadRequest",
    "step_generator",
]

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Stream ids keep the generators of different purposes independent.
_INSTANCE_ORDER = 1
_INSTANCE_FLIP = 2
_IDENTITY_ORDER = 3
_IDENTITY_STEP = 4


def step_generator(seed: int, *counters: int) -> np.random.Generator:
    """A generator determined by ``seed`` and ``counters`` alone (no hidden state)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *counters])))


@dataclass(frozen=True)
class ReadRequest:
    """What one rank reads for one step: db rows (int64) and a flip flag per row."""

    rows: Int64Array
    flips: BoolArray
    step: int


def _check_common(batch_size: int, rank: int, world_size: int, seed: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


class DistributedInstanceSampler:
    """Per-epoch shuffled rows, sharded across ranks; ``set_epoch`` before each epoch."""

    def __init__(
        self, num_rows: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        _check_common(batch_size, rank, world_size, seed)
        global_batch = batch_size * world_size
        if num_rows < global_batch:
            raise ValueError(
                f"the training db has {num_rows} images but one step needs "
                f"{global_batch} (batch_size {batch_size} x {world_size} ranks); "
                "lower the batch size or use fewer ranks"
            )
        self.num_rows = int(num_rows)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.steps_per_epoch = self.num_rows // global_batch
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch to iterate and the step to start from (for resuming)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def epoch_order(self, epoch: int) -> Int64Array:
        """The epoch's global row order (identical on every rank)."""
        return step_generator(self.seed, _INSTANCE_ORDER, epoch).permutation(self.num_rows)

    def request(self, order: Int64Array, step: int) -> ReadRequest:
        global_batch = self.batch_size * self.world_size
        lo = step * global_batch + self.rank * self.batch_size
        rows = np.ascontiguousarray(order[lo : lo + self.batch_size], dtype=np.int64)
        flips = step_generator(self.seed, _INSTANCE_FLIP, self.epoch, step).random(global_batch)
        mine = flips[self.rank * self.batch_size : (self.rank + 1) * self.batch_size] < 0.5
        return ReadRequest(rows=rows, flips=mine, step=step)

    def __iter__(self) -> Iterator[ReadRequest]:
        order = self.epoch_order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            yield self.request(order, step)


class DistributedIdentitySampler:
    """Endless identity batches: ``B`` distinct identities per rank, distinct across ranks.

    ``identity_offsets``/``identity_rows`` are the CSR layout of ``KvIndex``: the rows of
    identity ``i`` are ``identity_rows[identity_offsets[i]:identity_offsets[i + 1]]``. Identities
    without images are skipped. A request's rows are ``[view 1 of the B identities; view 2]``.
    """

    def __init__(
        self,
        identity_offsets: npt.ArrayLike,
        identity_rows: npt.ArrayLike,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        _check_common(batch_size, rank, world_size, seed)
        offsets = np.asarray(identity_offsets, dtype=np.int64)
        self.identity_rows = np.asarray(identity_rows, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[-1] != self.identity_rows.size:
            raise ValueError("identity_offsets must be a CSR offset array ending at len(rows)")
        counts = np.diff(offsets)
        if (counts < 0).any():
            raise ValueError("identity_offsets must be non-decreasing")
        self.identities = np.flatnonzero(counts > 0).astype(np.int64)
        self.first_row = offsets[self.identities]
        self.count = counts[self.identities]
        num_ids = self.identities.size
        if world_size > num_ids:
            raise ValueError(
                f"more ranks than identities: {world_size} ranks but the db has {num_ids} "
                "identities with images"
            )
        global_batch = batch_size * world_size
        if global_batch > num_ids:
            raise ValueError(
                f"the identity loader needs {global_batch} distinct identities per step "
                f"(batch_size {batch_size} x {world_size} ranks) but the db has {num_ids}; "
                "lower the batch size or use fewer ranks"
            )
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.steps_per_cycle = num_ids // global_batch
        self.position = 0
        self._cycle_cache: tuple[int, Int64Array] | None = None

    @property
    def num_identities(self) -> int:
        return int(self.identities.size)

    def set_position(self, step: int) -> None:
        """Start the stream at global step ``step`` (steps drawn before, for resuming)."""
        if step < 0:
            raise ValueError(f"position must be >= 0, got {step}")
        self.position = step

    def _cycle_order(self, cycle: int) -> Int64Array:
        if self._cycle_cache is None or self._cycle_cache[0] != cycle:
            order = step_generator(self.seed, _IDENTITY_ORDER, cycle).permutation(
                self.identities.size
            )
            self._cycle_cache = (cycle, order)
        return self._cycle_cache[1]

    def request(self, step: int) -> ReadRequest:
        cycle, k = divmod(step, self.steps_per_cycle)
        global_batch = self.batch_size * self.world_size
        chosen = self._cycle_order(cycle)[k * global_batch : (k + 1) * global_batch]
        # Draw for the whole global batch, then slice: identical on every rank.
        rng = step_generator(self.seed, _IDENTITY_STEP, step)
        u = rng.random((4, global_batch))
        count = self.count[chosen]
        first = np.minimum((u[0] * count).astype(np.int64), count - 1)
        # Second image: uniform over the other count-1 images; itself when count == 1.
        second = np.minimum((u[1] * (count - 1)).astype(np.int64), np.maximum(count - 2, 0))
        second = np.where(count > 1, second + (second >= first), first)
        flips_a, flips_b = u[2] < 0.5, u[3] < 0.5
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        base = self.first_row[chosen][mine]
        rows_a = self.identity_rows[base + first[mine]]
        rows_b = self.identity_rows[base + second[mine]]
        return ReadRequest(
            rows=np.concatenate([rows_a, rows_b]),
            flips=np.concatenate([flips_a[mine], flips_b[mine]]),
            step=step,
        )

    def __iter__(self) -> Iterator[ReadRequest]:
        step = self.position
        while True:
            yield self.request(step)
            step += 1
