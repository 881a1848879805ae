"""Batch loaders over the real KvIndex + LmdbReader: contents, flips, workers, errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import tiny_dataset

from f2c.data.loaders import IdentityDataset, InstanceDataset, TrainingDb, make_loader
from f2c.data.samplers import DistributedIdentitySampler, DistributedInstanceSampler, ReadRequest
from f2c.data.synthetic import SyntheticDataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("loaders") / "tiny")


@pytest.fixture()
def db(data: SyntheticDataset) -> TrainingDb:
    return TrainingDb([data.lmdb_path], [data.kv_path])


def test_instance_items_are_uint8_batches_with_labels(db: TrainingDb) -> None:
    rows = np.array([5, 0, 17, 17], dtype=np.int64)
    flips = np.array([False, True, False, True])
    images, labels = InstanceDataset(db)[ReadRequest(rows, flips, step=0)]
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    assert np.array_equal(labels, db.labels[rows])
    # Flips mirror the image horizontally; unflipped rows match a plain read.
    plain = db.reader.read(rows)
    assert np.array_equal(images[0], plain[0])
    assert np.array_equal(images[1], plain[1][:, ::-1])
    assert np.array_equal(images[3], images[2][:, ::-1])


def test_identity_items_are_two_views_of_one_identity(db: TrainingDb) -> None:
    sampler = DistributedIdentitySampler(
        db.index.identity_offsets, db.index.identity_rows, 6, seed=1
    )
    request = next(iter(sampler))
    view1, view2, labels = IdentityDataset(db)[request]
    assert view1.shape == view2.shape == (6, 32, 32, 3)
    assert np.array_equal(labels, db.labels[request.rows[:6]])
    assert len(set(labels.tolist())) == 6
    assert not np.array_equal(view1, view2)  # different images (4 per identity here)


def _drain(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_workers_give_the_same_batches_as_the_main_process(db: TrainingDb) -> None:
    sampler = DistributedInstanceSampler(len(db), 8, seed=3)
    sampler.set_epoch(1)
    in_main = _drain(make_loader(InstanceDataset(db), sampler, workers=0))
    forked = make_loader(InstanceDataset(db), sampler, workers=2)
    in_workers = _drain(forked)
    assert len(in_main) == len(in_workers) == len(sampler)
    for a, b in zip(in_main, in_workers, strict=True):
        assert a[0].dtype == torch.uint8
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Persistent workers: a second epoch reuses them and follows set_epoch.
    sampler.set_epoch(2)
    epoch2 = _drain(forked)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(in_main, epoch2, strict=True))


def test_identity_loader_cycles_without_a_new_iterator(db: TrainingDb) -> None:
    sampler = DistributedIdentitySampler(
        db.index.identity_offsets, db.index.identity_rows, 8, seed=0
    )
    loader = make_loader(IdentityDataset(db), sampler, workers=1)
    it = iter(loader)
    per_cycle = sampler.steps_per_cycle  # 24 identities / 8 = 3 steps
    cycles = []
    for _ in range(3):
        seen = torch.cat([next(it)[2] for _ in range(per_cycle)])
        assert sorted(seen.tolist()) == list(range(24))  # every identity once per cycle
        cycles.append(seen)
    assert not all(torch.equal(cycles[0], c) for c in cycles[1:])  # reshuffled per cycle
    del it


def test_worker_errors_surface_with_their_cause(data: SyntheticDataset, tmp_path: Path) -> None:
    kv = tmp_path / "broken.kv"
    shutil.copy(data.kv_path, kv)
    with open(kv, "a") as f:
        f.write("no_such_key 3\n")
    db = TrainingDb([data.lmdb_path], [kv])
    missing = len(db) - 1
    sampler = DistributedInstanceSampler(len(db), len(db), seed=0)  # one batch: every row
    loader = make_loader(InstanceDataset(db), sampler, workers=1)
    with pytest.raises(KeyError, match="no_such_key") as info:
        next(iter(loader))
    assert "DataLoader worker" in str(info.value)
    assert db.index.key(missing) == b"no_such_key"


def test_training_db_errors_name_the_path(data: SyntheticDataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="training db not found"):
        TrainingDb([tmp_path / "nope.lmdb"], [data.kv_path])
    with pytest.raises(FileNotFoundError, match="kv file not found"):
        TrainingDb([data.lmdb_path], [tmp_path / "nope.kv"])
    bad = tmp_path / "bad.kv"
    bad.write_text("a 0\nb\n")
    with pytest.raises(ValueError, match="bad.kv"):
        TrainingDb([data.lmdb_path], [bad])
    with pytest.raises(ValueError, match="one kv file per lmdb"):
        TrainingDb([data.lmdb_path], [])


def test_training_db_pickles_by_path(db: TrainingDb) -> None:
    again = pickle.loads(pickle.dumps(db))
    rows = np.arange(4, dtype=np.int64)
    flips = np.zeros(4, dtype=bool)
    assert np.array_equal(again.read(rows, flips), db.read(rows, flips))
