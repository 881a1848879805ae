"""F²C's two data loaders over a training source (``f2c.data.sources``).

A loader item is a whole batch: the sampler (``f2c.data.samplers``) yields one ``ReadRequest``
per step and the dataset turns it into uint8 arrays with one read call (decode and flips of the
whole batch, in Rust, GIL released). Normalisation happens later, on the training device
(``f2c.data.transforms.normalize``).

* ``InstanceDataset``: request → ``(images uint8 [B, H, W, 3], labels int64 [B])``.
* ``IdentityDataset``: request → ``(view1 [B, H, W, 3], view2 [B, H, W, 3], labels [B])``.

Sources open their readers in the process that reads (the main process or a DataLoader worker,
forked or spawned). Errors raised in a worker reach the training loop with the worker's
traceback (DataLoader re-raises them); nothing is caught here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from f2c.data.samplers import (
    DistributedIdentitySampler,
    DistributedInstanceSampler,
    ReadRequest,
)
from f2c.data.sources import TrainingSource

__all__ = [
    "IdentityDataset",
    "InstanceDataset",
    "make_loader",
]

PathLike = str | os.PathLike[str]


class InstanceDataset(Dataset):
    """Request → ``(uint8 images [B, H, W, 3], int64 labels [B])``."""

    def __init__(self, source: TrainingSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, request: ReadRequest) -> tuple[np.ndarray, np.ndarray]:
        images = self.source.read(request.rows, request.flips)
        return images, self.source.labels[request.rows]


class IdentityDataset(Dataset):
    """Request with rows ``[view1; view2]`` → ``(view1, view2, labels [B])``, one read call."""

    def __init__(self, source: TrainingSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return int(self.source.num_classes)

    def __getitem__(self, request: ReadRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = request.rows.shape[0] // 2
        images = self.source.read(request.rows, request.flips)
        labels = self.source.labels[request.rows]
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
