"""Training-db read throughput: ``f2c.LmdbReader`` against the best Python path and a
PIL + torchvision-style path, at 112 and 224 px, on 1 and 2 processes (warm page cache).

Every call reads batches of 256 random rows with random flips into uint8 ``[N, H, W, 3]``
(the PIL path produces the normalised float tensors a torchvision pipeline would).
Images are synthetic face crops stored as JPEG q95. ``extra_info`` holds img/s of wall time
and img per CPU-second (per-core throughput, robust to other load on a shared machine):

    pytest benches/bench_reader.py --benchmark-enable
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import f2c
from f2c.data import synthetic
from f2c.data.db import TrainingDbWriter
from f2c.data.sources import LmdbSource, open_training_source

BATCH = 256
BATCHES_PER_CALL = 2
RECORDS = {112: 1024, 224: 256}


def build_db(folder: Path, size: int, count: int) -> Path:
    rng = np.random.default_rng(size)
    ident = synthetic.sample_identities(rng, 16)
    nuis = synthetic.sample_nuisance(rng, count)
    owners = np.arange(count) % 16
    with TrainingDbWriter(folder, [f"id{i}" for i in range(16)]) as writer:
        for start in range(0, count, 64):
            sl = slice(start, start + 64)
            images = synthetic.render_identity_images(
                synthetic._take(ident, owners[sl]),
                synthetic._take(nuis, np.arange(count)[sl]),
                size,
                rng=rng,
            )
            for k, image in enumerate(images):
                out = io.BytesIO()
                Image.fromarray(image).save(out, format="JPEG", quality=95)
                writer.add(f"{start + k:07d}", int(owners[start + k]), out.getvalue())
    return folder


@pytest.fixture(scope="module", params=[112, 224], ids=lambda s: f"{s}px")
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    size = request.param
    return build_db(tmp_path_factory.mktemp(f"db{size}"), size, RECORDS[size])


def batches(count: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(BATCHES_PER_CALL):
        yield rng.integers(0, count, BATCH), rng.uniform(0, 1, BATCH) < 0.5


# --------------------------------------------------------------------------- readers


class F2cPath:
    def __init__(self, folder: Path, threads: int) -> None:
        source = open_training_source(folder, num_threads=threads)
        assert isinstance(source, LmdbSource)
        self.index, self.reader = source.index, source.reader

    def __call__(self, rows: np.ndarray, flips: np.ndarray) -> Any:
        return self.reader.read(rows, flip=flips)


class _LmdbValues:
    def __init__(self, folder: Path) -> None:
        self.index = f2c.KvIndex(folder / "train.kv")
        self.keys = [self.index.key(r) for r in range(len(self.index))]
        self.env = lmdb.open(
            str(folder / "train.lmdb"), readonly=True, lock=False, readahead=False
        )


class SimplejpegPath(_LmdbValues):
    """Best Python path: libjpeg-turbo decode, flip while copying into a preallocated batch."""

    def __init__(self, folder: Path, size: int) -> None:
        import simplejpeg

        super().__init__(folder)
        self.decode = simplejpeg.decode_jpeg
        self.size = size

    def __call__(self, rows: np.ndarray, flips: np.ndarray) -> Any:
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        with self.env.begin(buffers=True) as txn:
            for i, (row, flip) in enumerate(zip(rows, flips, strict=True)):
                image = self.decode(txn.get(self.keys[row]), colorspace="RGB")
                out[i] = image[:, ::-1] if flip else image
        return out


class PilTorchvisionPath(_LmdbValues):
    """PIL decode, flip, ToTensor-style float CHW / 255, Normalize(0.5, 0.5), stack."""

    def __call__(self, rows: np.ndarray, flips: np.ndarray) -> Any:
        # As in a DataLoader worker: one torch thread (several spin against each other).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            tensors = []
            with self.env.begin() as txn:
                for row, flip in zip(rows, flips, strict=True):
                    image = Image.open(io.BytesIO(txn.get(self.keys[row]))).convert("RGB")
                    if flip:
                        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
                    tensors.append(x.sub_(0.5).div_(0.5))
            return torch.stack(tensors)
        finally:
            torch.set_num_threads(threads)


def make_path(kind: str, folder: Path, size: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    if kind == "f2c-1thread":
        return F2cPath(folder, 1)
    if kind == "f2c-2threads":
        return F2cPath(folder, 2)
    if kind == "simplejpeg":
        return SimplejpegPath(folder, size)
    if kind == "pil-torchvision":
        return PilTorchvisionPath(folder)
    raise ValueError(kind)


# --------------------------------------------------------------------------- processes

_worker_path: Callable[[np.ndarray, np.ndarray], Any] | None = None


def _worker_init(kind: str, folder: str, size: int) -> None:
    global _worker_path
    _worker_path = make_path(kind, Path(folder), size)


def _worker_run(seed: int) -> tuple[int, float]:
    assert _worker_path is not None
    count = 0
    start = time.process_time()
    for rows, flips in batches(RECORDS_IN_WORKER, seed):
        count += len(_worker_path(rows, flips))
    return count, time.process_time() - start


RECORDS_IN_WORKER = 0  # set before the pool forks


def _record(benchmark: Any, images: int, db: Path, cpu: list[float]) -> None:
    """img/s of wall time, and img per CPU-second (robust to other load on the machine)."""
    if benchmark.stats is not None:
        benchmark.extra_info["img_per_s"] = round(images / benchmark.stats.stats.median)
    if cpu:
        benchmark.extra_info["img_per_cpu_s"] = round(images / float(np.median(cpu)))
    benchmark.extra_info["mean_jpeg_bytes"] = round(
        (db / "train.lmdb" / "data.mdb").stat().st_size / RECORDS[_size(db)]
    )


def _size(db: Path) -> int:
    return int(f2c.LmdbReader(db / "train.lmdb", f2c.KvIndex(db / "train.kv")).image_size[0])


@pytest.mark.benchmark(group="reader, 1 process")
@pytest.mark.parametrize("kind", ["f2c-1thread", "f2c-2threads", "simplejpeg", "pil-torchvision"])
def bench_reader_one_process(benchmark: Any, db: Path, kind: str) -> None:
    size = _size(db)
    path = make_path(kind, db, size)
    seeds = iter(range(10**6))
    cpu: list[float] = []

    def run() -> int:
        start = time.process_time()
        count = sum(len(path(rows, flips)) for rows, flips in batches(RECORDS[size], next(seeds)))
        cpu.append(time.process_time() - start)
        return count

    assert benchmark.pedantic(run, rounds=5, warmup_rounds=1) == BATCH * BATCHES_PER_CALL
    _record(benchmark, BATCH * BATCHES_PER_CALL, db, cpu)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.benchmark(group="reader, 2 processes")
@pytest.mark.parametrize("kind", ["f2c-1thread", "simplejpeg"])
def bench_reader_two_processes(benchmark: Any, db: Path, kind: str) -> None:
    global RECORDS_IN_WORKER
    size = _size(db)
    RECORDS_IN_WORKER = RECORDS[size]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=_worker_init, initargs=(kind, os.fspath(db), size)) as pool:
        seeds = iter(range(0, 10**6, 2))
        cpu: list[float] = []

        def run() -> int:
            seed = next(seeds)
            done = pool.map(_worker_run, [seed, seed + 1], chunksize=1)
            # Both processes' CPU time: img per CPU-second is per-core throughput.
            cpu.append(sum(seconds for _, seconds in done))
            return sum(count for count, _ in done)

        assert benchmark.pedantic(run, rounds=5, warmup_rounds=1) == 2 * BATCH * BATCHES_PER_CALL
    _record(benchmark, 2 * BATCH * BATCHES_PER_CALL, db, cpu)
