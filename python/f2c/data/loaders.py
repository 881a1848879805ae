"""F²C's two data loaders over a training db (``KvIndex`` + ``LmdbReader``).

A loader item is a whole batch: the sampler (``f2c.data.samplers``) yields one ``ReadRequest``
per step and the dataset turns it into uint8 arrays with one Rust call (LMDB read, JPEG decode
and flips of the whole batch). Normalisation happens later, on the training device
(``f2c.data.transforms.normalize``).

* ``InstanceDataset``: request → ``(images uint8 [B, H, W, 3], labels int64 [B])``.
* ``IdentityDataset``: request → ``(view1 [B, H, W, 3], view2 [B, H, W, 3], labels [B])``.

The LMDB reader is opened lazily in each process that reads (the main process or a DataLoader
worker), never shared across a fork. Errors raised in a worker reach the training loop with the
worker's traceback (DataLoader re-raises them); nothing is caught here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset

from f2c.data.samplers import (
    DistributedIdentitySampler,
    DistributedInstanceSampler,
    ReadRequest,
)

__all__ = [
    "IdentityDataset",
    "InstanceDataset",
    "TrainingDb",
    "make_loader",
    "open_training_db",
]

PathLike = str | os.PathLike[str]


class TrainingDb:
    """One or more (lmdb, kv) pairs opened together: a ``KvIndex`` and per-process readers."""

    def __init__(self, lmdb_paths: Sequence[PathLike], kv_paths: Sequence[PathLike]) -> None:
        from f2c import KvIndex  # type: ignore[attr-defined]  # issue 3's Rust index

        if len(lmdb_paths) != len(kv_paths) or not lmdb_paths:
            raise ValueError(
                f"need one kv file per lmdb: got {len(lmdb_paths)} lmdb and {len(kv_paths)} kv"
            )
        for lmdb_path in lmdb_paths:
            if not os.path.exists(lmdb_path):
                raise FileNotFoundError(f"training db not found: {os.fspath(lmdb_path)}")
        for kv_path in kv_paths:
            if not os.path.isfile(kv_path):
                raise FileNotFoundError(f"kv file not found: {os.fspath(kv_path)}")
        self.lmdb_paths = [os.fspath(p) for p in lmdb_paths]
        self.kv_paths = [os.fspath(p) for p in kv_paths]
        self.index = KvIndex(self.kv_paths)
        if len(self.index) == 0:
            raise ValueError(f"the kv files hold no images: {', '.join(self.kv_paths)}")
        self._reader: Any = None
        self._reader_pid = -1

    @property
    def reader(self) -> Any:
        """This process's ``LmdbReader`` (opened on first use after a fork)."""
        pid = os.getpid()
        if self._reader is None or self._reader_pid != pid:
            from f2c import LmdbReader  # type: ignore[attr-defined]

            self._reader = LmdbReader(self.lmdb_paths, self.index)
            self._reader_pid = pid
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers re-open everything from the paths.
        return {"lmdb_paths": self.lmdb_paths, "kv_paths": self.kv_paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["lmdb_paths"], state["kv_paths"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_classes(self) -> int:
        return int(self.index.num_classes)

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return np.asarray(self.index.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.reader.image_size
        return int(height), int(width)

    def read(self, rows: npt.NDArray[np.int64], flips: npt.NDArray[np.bool_]) -> np.ndarray:
        images = self.reader.read(rows, flip=flips)
        if images.shape[0] != rows.shape[0]:
            raise RuntimeError(f"reader returned {images.shape[0]} images for {rows.shape[0]} rows")
        return images


def open_training_db(sources: Iterable[Any]) -> TrainingDb:
    """Open ``sources`` (objects or dicts with ``lmdb`` and ``kv``) as one ``TrainingDb``."""
    lmdb_paths, kv_paths = [], []
    for source in sources:
        if isinstance(source, dict):
            lmdb_paths.append(source["lmdb"])
            kv_paths.append(source["kv"])
        else:
            lmdb_paths.append(source.lmdb)
            kv_paths.append(source.kv)
    return TrainingDb(lmdb_paths, kv_paths)


class InstanceDataset(Dataset):
    """Request → ``(uint8 images [B, H, W, 3], int64 labels [B])``."""

    def __init__(self, db: TrainingDb) -> None:
        self.db = db

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, request: ReadRequest) -> tuple[np.ndarray, np.ndarray]:
        images = self.db.read(request.rows, request.flips)
        return images, self.db.labels[request.rows]


class IdentityDataset(Dataset):
    """Request with rows ``[view1; view2]`` → ``(view1, view2, labels [B])``, one read call."""

    def __init__(self, db: TrainingDb) -> None:
        self.db = db

    def __len__(self) -> int:
        return int(self.db.num_classes)

    def __getitem__(self, request: ReadRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = request.rows.shape[0] // 2
        images = self.db.read(request.rows, request.flips)
        labels = self.db.labels[request.rows]
        if not np.array_equal(labels[:half], labels[half:]):
            raise RuntimeError("identity request pairs rows of different labels (index mismatch)")
        return images[:half], images[half:], labels[:half]


def make_loader(
    dataset: Dataset,
    sampler: DistributedInstanceSampler | DistributedIdentitySampler,
    *,
    workers: int,
    prefetch: int = 2,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose items are whole batches (``batch_size=None``).

    Workers persist across epochs (``persistent_workers``): the instance loader is re-iterated
    each epoch after ``sampler.set_epoch``; the identity sampler is endless, so one iterator
    serves the whole run.
    """
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=True)
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
        **kwargs,
    )


def _to_tensors(batch: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in batch)
