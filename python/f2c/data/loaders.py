"""F²C's two data loaders over a training source (``f2c.data.sources``).

A loader item is a whole batch: the sampler (``f2c.data.samplers``) yields one ``ReadRequest``
per step and the dataset turns it into uint8 arrays with one read call (decode and flips of the
whole batch, in Rust, GIL released). Normalisation happens later, on the training device
(``f2c.data.transforms.normalize``).

* ``InstanceDataset``: request → ``(images uint8 [B, H, W, 3], labels int64 [B])``.
* ``IdentityDataset``: request → ``(view1 [B, H, W, 3], view2 [B, H, W, 3], labels [B])``.

With ``workers == 0`` a loader reads in the training process, on one background thread that
keeps ``prefetch`` batches ready (:class:`PrefetchLoader`): the reader decodes with its own
threads and without the GIL, so this costs no inter-process copy. With ``workers > 0`` it is a
DataLoader whose workers decode straight into shared memory. Sources open their readers in the
process that reads (the main process or a DataLoader worker, forked or spawned). Errors reach
the training loop with their traceback (re-raised by the loader); nothing is caught here.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from f2c.data.samplers import (
    DistributedIdentitySampler,
    DistributedInstanceSampler,
    ReadRequest,
)
from f2c.data.sources import TrainingSource

__all__ = [
    "IdentityDataset",
    "InstanceDataset",
    "PrefetchLoader",
    "make_loader",
]

PathLike = str | os.PathLike[str]


def _read_batch(source: TrainingSource, request: ReadRequest) -> torch.Tensor:
    """The request's images as a uint8 ``[N, H, W, 3]`` tensor. In a DataLoader worker the
    reader decodes straight into shared memory, so handing the batch to the training process
    copies nothing (a tensor in private memory would be copied into shared memory there)."""
    # torch's own constructor of shared storage (what DataLoader would copy a batch into).
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if get_worker_info() is None or new_shared is None:
        return torch.from_numpy(source.read(request.rows, request.flips))
    height, width = source.image_size
    shape = (int(request.rows.shape[0]), height, width, 3)
    images = torch.empty(0, dtype=torch.uint8).set_(new_shared(shape[0] * height * width * 3),
                                                    0, shape)
    source.read(request.rows, request.flips, out=images.numpy())
    return images


class InstanceDataset(Dataset):
    """Request → ``(uint8 images [B, H, W, 3], int64 labels [B])``."""

    def __init__(self, source: TrainingSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, request: ReadRequest) -> tuple[torch.Tensor, np.ndarray]:
        return _read_batch(self.source, request), self.source.labels[request.rows]


class IdentityDataset(Dataset):
    """Request with rows ``[view1; view2]`` → ``(view1, view2, labels [B])``, one read call."""

    def __init__(self, source: TrainingSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return int(self.source.num_classes)

    def __getitem__(
        self, request: ReadRequest
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        half = request.rows.shape[0] // 2
        images = _read_batch(self.source, request)
        labels = self.source.labels[request.rows]
        if not np.array_equal(labels[:half], labels[half:]):
            raise RuntimeError("identity request pairs rows of different labels (index mismatch)")
        return images[:half], images[half:], labels[:half]


def _offer(ready: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    """Queues ``item`` unless ``stop`` is set meanwhile."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


_END = object()


def _prefetch(ready: queue.Queue[Any], stop: threading.Event, dataset: Dataset,
              requests: Iterator[ReadRequest], pin_memory: bool) -> None:
    """The read-ahead thread: batches, then ``_END`` (or the exception that stopped it). It
    holds no reference to its iterator, so an abandoned iterator is collected and stops it."""
    try:
        for request in requests:
            batch = _to_tensors(dataset[request])
            if pin_memory:
                batch = tuple(t.pin_memory() for t in batch)
            if not _offer(ready, stop, batch):
                return
        _offer(ready, stop, _END)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _offer(ready, stop, exc)


class _PrefetchIterator:
    """Reads the batches of ``requests`` on a daemon thread, at most ``depth`` ahead."""

    def __init__(self, dataset: Dataset, requests: Iterator[ReadRequest], depth: int,
                 pin_memory: bool) -> None:
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_prefetch, args=(self._ready, self._stop, dataset, requests, pin_memory),
            name="f2c-prefetch", daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> _PrefetchIterator:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._stop.is_set():
            raise StopIteration
        item = self._ready.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stops the thread (it finishes the batch it is reading) and drops what was read."""
        self._stop.set()
        while True:
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __del__(self) -> None:
        self._stop.set()


class PrefetchLoader:
    """Batches of ``dataset`` for the requests of ``sampler``, read on a background thread of
    this process, ``prefetch`` ahead. Each ``iter()`` starts a new pass over the sampler (call
    ``sampler.set_epoch`` first); items are tuples of tensors, as from :func:`make_loader`'s
    DataLoader."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: DistributedInstanceSampler | DistributedIdentitySampler,
        *,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.dataset = dataset
        self.sampler = sampler
        self.prefetch = prefetch
        self.pin_memory = pin_memory

    def __iter__(self) -> _PrefetchIterator:
        return _PrefetchIterator(self.dataset, iter(self.sampler), self.prefetch, self.pin_memory)


def make_loader(
    dataset: Dataset,
    sampler: DistributedInstanceSampler | DistributedIdentitySampler,
    *,
    workers: int,
    prefetch: int = 2,
    pin_memory: bool = False,
) -> DataLoader | PrefetchLoader:
    """A loader whose items are whole batches: with ``workers == 0`` a
    :class:`PrefetchLoader` (this process, one read-ahead thread), else a DataLoader
    (``batch_size=None``) with that many worker processes.

    Workers persist across epochs (``persistent_workers``): the instance loader is re-iterated
    each epoch after ``sampler.set_epoch``; the identity sampler is endless, so one iterator
    serves the whole run.
    """
    if workers == 0:
        return PrefetchLoader(dataset, sampler, prefetch=prefetch, pin_memory=pin_memory)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,  # type: ignore[arg-type]  # yields ReadRequest, not int
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=_to_tensors,
        # Own generator: creating an iterator draws a worker base seed, which must not advance
        # the global torch RNG (the training step's randomness) at resume-dependent times.
        # Workers draw nothing random: rows and flips come from the sampler.
        generator=torch.Generator().manual_seed(0),
        prefetch_factor=prefetch,
        persistent_workers=True,
    )


def _to_tensors(batch: tuple[np.ndarray | torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(
        a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        for a in batch
    )
