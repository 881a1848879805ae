"""Batch loaders over real training sources (LMDB + kv, RecordIO, mixed): contents, flips,
forked and spawned workers, errors; and how ``--data PATH`` is recognised."""

from __future__ import annotations

import gc
import pickle
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from recordio_support import rec_from_rows
from train_support import tiny_dataset

from f2c.data import (
    LmdbSource,
    LmdbSpec,
    MixedSource,
    RecordIOSource,
    RecordIOSpec,
    TrainingSource,
    open_training_source,
    resolve_data_path,
)
from f2c.data.db import STAGING_MARKER
from f2c.data.loaders import IdentityDataset, InstanceDataset, PrefetchLoader, make_loader
from f2c.data.samplers import DistributedIdentitySampler, DistributedInstanceSampler, ReadRequest
from f2c.data.synthetic import SyntheticDataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("loaders") / "tiny")


@pytest.fixture()
def db(data: SyntheticDataset) -> LmdbSource:
    source = open_training_source(data.root)
    assert isinstance(source, LmdbSource)
    return source


@pytest.fixture(scope="module")
def rec(data: SyntheticDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny db as an insightface RecordIO pack, identities in label order."""
    source = open_training_source(data.root)
    offsets, rows = source.identity_offsets, source.identity_rows
    images = [
        source.read_bytes(rows[offsets[c]:offsets[c + 1]]) for c in range(source.num_classes)
    ]
    return rec_from_rows(tmp_path_factory.mktemp("rec") / "train.rec", images)


def test_instance_items_are_uint8_batches_with_labels(db: LmdbSource) -> None:
    rows = np.array([5, 0, 17, 17], dtype=np.int64)
    flips = np.array([False, True, False, True])
    batch, labels = InstanceDataset(db)[ReadRequest(rows, flips, step=0)]
    assert batch.dtype == torch.uint8 and batch.shape == (4, 32, 32, 3)
    images = batch.numpy()
    assert np.array_equal(labels, db.labels[rows])
    # Flips mirror the image horizontally; unflipped rows match a plain read.
    plain = db.reader.read(rows)
    assert np.array_equal(images[0], plain[0])
    assert np.array_equal(images[1], plain[1][:, ::-1])
    assert np.array_equal(images[3], images[2][:, ::-1])


def test_identity_items_are_two_views_of_one_identity(db: LmdbSource) -> None:
    sampler = DistributedIdentitySampler(db.identity_offsets, db.identity_rows, 6, seed=1)
    request = next(iter(sampler))
    view1, view2, labels = IdentityDataset(db)[request]
    assert view1.shape == view2.shape == (6, 32, 32, 3)
    assert view1.dtype == view2.dtype == torch.uint8
    assert np.array_equal(labels, db.labels[request.rows[:6]])
    assert len(set(labels.tolist())) == 6
    assert not torch.equal(view1, view2)  # different images (4 per identity here)


def _drain(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_workers_give_the_same_batches_as_the_main_process(db: LmdbSource) -> None:
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


def test_identity_loader_cycles_without_a_new_iterator(db: LmdbSource) -> None:
    sampler = DistributedIdentitySampler(db.identity_offsets, db.identity_rows, 8, seed=0)
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
    db = LmdbSource([data.lmdb_path], [kv])
    missing = len(db) - 1
    sampler = DistributedInstanceSampler(len(db), len(db), seed=0)  # one batch: every row
    loader = make_loader(InstanceDataset(db), sampler, workers=1)
    with pytest.raises(KeyError, match="no_such_key") as info:
        next(iter(loader))
    assert "DataLoader worker" in str(info.value)
    assert db.index.key(missing) == b"no_such_key"


class _CountingDataset(InstanceDataset):
    """Counts the requests read (from the read-ahead thread)."""

    def __init__(self, source: LmdbSource) -> None:
        super().__init__(source)
        self.reads = 0

    def __getitem__(self, request: ReadRequest) -> tuple[torch.Tensor, np.ndarray]:
        self.reads += 1
        return super().__getitem__(request)


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_prefetch_loader_reads_the_sampler_in_order_and_only_so_far_ahead(db: LmdbSource) -> None:
    sampler = DistributedInstanceSampler(len(db), 8, seed=5)
    sampler.set_epoch(3)
    dataset = _CountingDataset(db)
    loader = make_loader(dataset, sampler, workers=0, prefetch=2)
    assert isinstance(loader, PrefetchLoader)
    it = iter(loader)
    first = next(it)
    # One batch taken, two ready, one read and waiting for room: never more.
    assert _wait_for(lambda: dataset.reads == 4)
    time.sleep(0.2)
    assert dataset.reads == 4
    got = [first, *it]
    want = list(sampler)
    assert len(got) == len(want) == len(sampler)
    for (images, labels), request in zip(got, want, strict=True):
        assert images.dtype == torch.uint8
        assert np.array_equal(images.numpy(), db.read(request.rows, request.flips))
        assert np.array_equal(labels.numpy(), db.labels[request.rows])
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_loader_errors_surface_and_threads_end(data: SyntheticDataset,
                                                        tmp_path: Path) -> None:
    kv = tmp_path / "broken.kv"
    shutil.copy(data.kv_path, kv)
    with open(kv, "a") as f:
        f.write("no_such_key 3\n")
    broken = LmdbSource([data.lmdb_path], [kv])
    sampler = DistributedInstanceSampler(len(broken), len(broken), seed=0)  # one batch
    it = iter(make_loader(InstanceDataset(broken), sampler, workers=0))
    with pytest.raises(KeyError, match="no_such_key"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    assert not any(t.name == "f2c-prefetch" and t.is_alive() for t in threading.enumerate())

    # An endless stream: close() stops its thread; an abandoned iterator's thread stops too.
    source = LmdbSource([data.lmdb_path], [data.kv_path])
    identities = DistributedIdentitySampler(source.identity_offsets, source.identity_rows, 4)
    loader = make_loader(IdentityDataset(source), identities, workers=0)
    endless = iter(loader)
    next(endless)
    endless.close()  # type: ignore[attr-defined]
    abandoned = iter(loader)
    next(abandoned)
    del abandoned
    gc.collect()
    assert _wait_for(
        lambda: not any(t.name == "f2c-prefetch" and t.is_alive() for t in threading.enumerate())
    )


def test_reads_fill_a_callers_buffer(db: LmdbSource, rec: Path) -> None:
    rows = np.array([3, 1, 4], dtype=np.int64)
    flips = np.array([True, False, True])
    for source in (db, open_training_source(rec)):
        want = source.read(rows, flips)
        out = np.full(want.shape, 7, np.uint8)
        assert source.read(rows, flips, out=out) is out
        assert np.array_equal(out, want)
        for bad in (np.empty(want.shape, np.float32), np.empty((2, *want.shape[1:]), np.uint8),
                    np.empty(want.shape[::-1], np.uint8).transpose(3, 2, 1, 0)):
            with pytest.raises(ValueError, match="out must be"):
                source.read(rows, flips, out=bad)
        frozen = np.empty_like(want)
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="out cannot be written"):
            source.read(rows, flips, out=frozen)


def test_lmdb_source_errors_name_the_path(data: SyntheticDataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="training db not found"):
        LmdbSource([tmp_path / "nope.lmdb"], [data.kv_path])
    with pytest.raises(FileNotFoundError, match="kv file not found"):
        open_training_source((data.lmdb_path, tmp_path / "nope.kv"))
    bad = tmp_path / "bad.kv"
    bad.write_text("a 0\nb\n")
    with pytest.raises(ValueError, match="bad.kv"):
        LmdbSource([data.lmdb_path], [bad])
    with pytest.raises(ValueError, match="one kv file per lmdb"):
        LmdbSource([data.lmdb_path], [])


def test_training_db_pickles_by_path(db: LmdbSource) -> None:
    again = pickle.loads(pickle.dumps(db))
    rows = np.arange(4, dtype=np.int64)
    flips = np.zeros(4, dtype=bool)
    assert np.array_equal(again.read(rows, flips), db.read(rows, flips))


# --------------------------------------------------------------------------- RecordIO, mixed


def test_recordio_source_matches_the_lmdb_it_came_from(db: LmdbSource, rec: Path) -> None:
    source = open_training_source(rec)
    assert isinstance(source, RecordIOSource) and isinstance(source, TrainingSource)
    assert len(source) == len(db) and source.num_classes == db.num_classes
    assert source.image_size == db.image_size
    # RecordIO row i is the LMDB's identity_rows[i] (identities written in label order).
    order = db.identity_rows
    assert np.array_equal(source.labels, db.labels[order])
    rows = np.array([0, 5, 95, 40])
    flips = np.array([True, False, True, False])
    assert np.array_equal(source.read(rows, flips), db.read(order[rows], flips))
    assert source.read_bytes(rows) == db.read_bytes(order[rows])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_recordio_source_in_workers(rec: Path, context: str) -> None:
    source = open_training_source(rec)
    sampler = DistributedIdentitySampler(source.identity_offsets, source.identity_rows, 8, seed=2)
    want = [IdentityDataset(source)[r] for _, r in zip(range(3), sampler, strict=False)]
    loader = torch.utils.data.DataLoader(
        IdentityDataset(source), batch_size=None, sampler=sampler,  # type: ignore[arg-type]
        num_workers=2, multiprocessing_context=context,
    )
    got = [batch for _, batch in zip(range(3), loader, strict=False)]
    for w, g in zip(want, got, strict=True):
        for a, b in zip(w, g, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_mixed_sources_offset_labels_and_rows(data: SyntheticDataset, db: LmdbSource,
                                              rec: Path) -> None:
    mixed = open_training_source([data.root, rec])
    assert isinstance(mixed, MixedSource)
    n, c = len(db), db.num_classes
    assert len(mixed) == 2 * n and mixed.num_classes == 2 * c
    assert np.array_equal(mixed.labels[:n], db.labels)
    assert np.array_equal(mixed.labels[n:], db.labels[db.identity_rows] + c)
    offsets, rows = mixed.identity_offsets, mixed.identity_rows
    assert offsets.shape == (2 * c + 1,) and offsets[-1] == 2 * n
    for k in (0, c - 1, c, 2 * c - 1):
        assert (mixed.labels[rows[offsets[k]:offsets[k + 1]]] == k).all()
    picks = np.array([n + 3, 2, n, 7])
    flips = np.array([False, True, True, False])
    batch = mixed.read(picks, flips)
    other = open_training_source(rec)
    assert np.array_equal(batch[0], other.read([3])[0])
    assert np.array_equal(batch[1], db.read([2], [True])[0])
    assert np.array_equal(batch[2], other.read([0], [True])[0])
    assert mixed.read_bytes([n + 3, 7]) == [other.read_bytes([3])[0], db.read_bytes([7])[0]]
    with pytest.raises(IndexError):
        mixed.read([2 * n])
    again = pickle.loads(pickle.dumps(mixed))
    assert np.array_equal(again.read(picks, flips), batch)
    # Several LMDB pairs share one KvIndex (its label offsets).
    two = open_training_source([data.root, (data.lmdb_path, data.kv_path)])
    assert isinstance(two, LmdbSource) and two.num_classes == 2 * c
    assert np.array_equal(two.labels, np.concatenate([db.labels, db.labels + c]))
    assert two.index.label_offsets == [0, c]


def test_data_paths_are_recognised(data: SyntheticDataset, rec: Path, tmp_path: Path) -> None:
    assert resolve_data_path(data.root) == LmdbSpec(str(data.lmdb_path), str(data.kv_path))
    assert resolve_data_path(rec) == RecordIOSpec(str(rec))
    assert resolve_data_path(rec.parent) == RecordIOSpec(str(rec))  # a folder with train.rec
    assert resolve_data_path(rec.with_suffix(".idx")) == RecordIOSpec(
        str(rec), str(rec.with_suffix(".idx")))
    pair = tmp_path / "pair"
    pair.mkdir()
    shutil.copytree(data.lmdb_path, pair / "faces.lmdb")
    shutil.copy(data.kv_path, pair / "faces.kv")
    want = LmdbSpec(str(pair / "faces.lmdb"), str(pair / "faces.kv"))
    assert resolve_data_path(pair / "faces.lmdb") == want
    assert resolve_data_path(pair / "faces.kv") == want
    with pytest.raises(FileNotFoundError, match="nothing"):
        resolve_data_path(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not training data"):
        resolve_data_path(pair)
    with pytest.raises(ValueError, match="not an \\(lmdb, kv\\) pair"):
        open_training_source((rec, rec.with_suffix(".idx")))


def test_staging_folders_never_open(data: SyntheticDataset, tmp_path: Path) -> None:
    staging = tmp_path / "db.tmp-abcd1234"
    shutil.copytree(data.root, staging, ignore=shutil.ignore_patterns("test"))
    with pytest.raises(ValueError, match="staging folder"):
        open_training_source(staging)
    marked = tmp_path / "db"
    staging.rename(marked)
    (marked / STAGING_MARKER).write_text("host 1\n")
    with pytest.raises(ValueError, match="staging folder"):
        open_training_source(marked)
    with pytest.raises(ValueError, match="staging folder"):
        open_training_source((marked / "train.lmdb", marked / "train.kv"))
    (marked / STAGING_MARKER).unlink()
    assert len(open_training_source(marked)) == len(open_training_source(data.root))
