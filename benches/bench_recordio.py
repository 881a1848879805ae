"""RecordIO training packs (issue: real training sets in): reading a ``.rec`` in place against
``LmdbReader`` on the same JPEGs, opening a ``.idx`` + header against ``KvIndex`` on a kv file
of as many lines, and ``.rec`` → LMDB conversion (``f2c.pack``) against ``shutil.copyfile``.

By default each runs once on a small pack (smoke); ``-m slow`` runs the figures quoted in
``benches/results/recordio-*.md``:

    pytest benches/bench_recordio.py --benchmark-enable                 # small, quick
    pytest benches/bench_recordio.py --benchmark-enable -m slow         # 1M/17M-line index,
                                                                        # 20k-image read/pack
Read: batches of 256 random rows with random flips, the same rows for both readers, the two
readers measured alternately (robust to other load on a shared machine); ``extra_info`` holds
img/s of wall time per reader and their ratio. Conversion: MB/s of the ``.rec`` size, page
cache warm for all; the copy is also timed with an fsync, as ``pack`` syncs its output. With
root, ``-m slow`` also runs the conversion from a cold page cache (the ``.rec`` read from disk).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from bench_kv import write_kv
from bench_reader import build_db

import f2c
from f2c.data import RecordIOReader, TrainingDbWriter, open_training_source
from f2c.pack import pack_recordio

# The tests' RecordIO writer, written from the format description (not from f2c's reader).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recordio_support import insightface_payloads, write_pack  # noqa: E402

BATCH = 256
MAGIC = 0xCED7230A


# --------------------------------------------------------------------------- fixtures


def rec_and_lmdb(folder: Path, size: int, unique: int, total: int) -> tuple[Path, Path]:
    """An LMDB db of ``total`` JPEG crops (``unique`` rendered, repeated) and an insightface
    ``.rec`` holding the same JPEG bytes, identities in the same order."""
    db = build_db(folder / "db-unique", size, unique)
    source = open_training_source(db)
    images = source.read_bytes(np.arange(unique))
    repeat = np.arange(total) % unique
    # Identities of 16 images, in row order, as insightface packs lay them out.
    per_identity = 16
    identities = [
        [images[r] for r in repeat[start:start + per_identity]]
        for start in range(0, total, per_identity)
    ]
    rec = folder / "pack" / "train.rec"
    rec.parent.mkdir(parents=True)
    write_pack(rec, insightface_payloads(identities))
    full = folder / "db"
    with TrainingDbWriter(full, [str(c) for c in range(len(identities))]) as writer:
        for row in range(total):
            writer.add(f"{row:09d}", row // per_identity, images[repeat[row]])
    return rec, full


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return rec_and_lmdb(tmp_path_factory.mktemp("rec-small"), 112, 256, 1024)


@pytest.fixture(scope="module")
def moderate_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return rec_and_lmdb(tmp_path_factory.mktemp("rec-moderate"), 112, 2048, 20_480)


def index_only_rec(folder: Path, rows: int, per_identity: int = 47) -> Path:
    """A ``.rec`` + ``.idx`` of ``rows`` image records with empty images (IRHeader only),
    header record 0 and identity records: what opening reads, at 32 bytes per image."""
    classes = -(-rows // per_identity)
    first, end = rows + 1, rows + 1 + classes
    header = _record(struct.pack("<IfQQff", 2, 0.0, 0, 0, first, end))
    image = np.zeros(rows, dtype=[("magic", "<u4"), ("len", "<u4"), ("flag", "<u4"),
                                  ("label", "<f4"), ("id", "<u8"), ("id2", "<u8")])
    image["magic"], image["len"] = MAGIC, 24
    image["label"] = np.arange(rows) // per_identity
    ident = np.zeros(classes, dtype=[("magic", "<u4"), ("len", "<u4"), ("flag", "<u4"),
                                     ("label", "<f4"), ("id", "<u8"), ("id2", "<u8"),
                                     ("start", "<f4"), ("stop", "<f4")])
    ident["magic"], ident["len"], ident["flag"] = MAGIC, 32, 2
    starts = 1 + np.arange(classes) * per_identity
    ident["start"], ident["stop"] = starts, np.minimum(starts + per_identity, first)
    rec = folder / "train.rec"
    with open(rec, "wb") as f:
        f.write(header)
        f.write(image.tobytes())
        f.write(ident.tobytes())
    offsets = np.concatenate([
        [0],
        len(header) + 32 * np.arange(rows, dtype=np.int64),
        len(header) + 32 * rows + 40 * np.arange(classes, dtype=np.int64),
    ])
    pl.DataFrame({"k": np.arange(offsets.size), "o": offsets}).write_csv(
        folder / "train.idx", separator="\t", include_header=False
    )
    return rec


def _record(payload: bytes) -> bytes:
    return struct.pack("<II", MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)


# --------------------------------------------------------------------------- read


def _alternate(readers: dict[str, Callable[[np.ndarray, np.ndarray], Any]], count: int,
               rounds: int) -> dict[str, float]:
    """img/s of each reader, measured alternately on the same random batches."""
    rng = np.random.default_rng(0)
    seconds = {name: [] for name in readers}
    for _ in range(rounds):
        rows = rng.integers(0, count, BATCH)
        flips = rng.uniform(0, 1, BATCH) < 0.5
        for name, read in readers.items():
            start = time.perf_counter()
            read(rows, flips)
            seconds[name].append(time.perf_counter() - start)
    return {name: BATCH / float(np.median(s)) for name, s in seconds.items()}


def _readers(pack: tuple[Path, Path], threads: int) -> dict[str, Any]:
    rec, db = pack
    recordio = RecordIOReader(rec, num_threads=threads)
    lmdb = f2c.LmdbReader(db / "train.lmdb", f2c.KvIndex(db / "train.kv"), num_threads=threads)
    # The same images: row r of both holds the same JPEG bytes.
    last = len(recordio) - 1
    assert recordio.read_bytes([0, last]) == lmdb.read_bytes([0, last])
    return {
        "recordio": lambda rows, flips: recordio.read(rows, flip=flips),
        "lmdb": lambda rows, flips: lmdb.read(rows, flip=flips),
    }


def _read_bench(benchmark: Any, pack: tuple[Path, Path], threads: int, rounds: int) -> None:
    readers = _readers(pack, threads)
    count = len(RecordIOReader(pack[0]))
    rates = benchmark.pedantic(_alternate, args=(readers, count, rounds), rounds=1, iterations=1)
    benchmark.extra_info.update({f"{k}_img_per_s": round(v) for k, v in rates.items()})
    benchmark.extra_info["recordio_over_lmdb"] = round(rates["recordio"] / rates["lmdb"], 3)
    benchmark.extra_info["threads"] = threads


@pytest.mark.benchmark(group="read 112px, recordio vs lmdb")
def bench_read_small(benchmark: Any, small_pack: tuple[Path, Path]) -> None:
    _read_bench(benchmark, small_pack, threads=2, rounds=4)


@pytest.mark.slow
@pytest.mark.benchmark(group="read 112px, recordio vs lmdb")
@pytest.mark.parametrize("threads", [1, 2])
def bench_read_moderate(benchmark: Any, moderate_pack: tuple[Path, Path], threads: int) -> None:
    _read_bench(benchmark, moderate_pack, threads=threads, rounds=60)


# --------------------------------------------------------------------------- open


def _open_bench(benchmark: Any, folder: Path, rows: int, rounds: int) -> None:
    rec = index_only_rec(folder, rows)
    kv = write_kv(folder / "same.kv", rows)
    times: dict[str, list[float]] = {"recordio": [], "kvindex": []}

    def both() -> None:
        for name, open_ in (("recordio", lambda: RecordIOReader(rec)),
                            ("kvindex", lambda: f2c.KvIndex(kv))):
            start = time.perf_counter()
            opened = open_()
            times[name].append(time.perf_counter() - start)
            assert len(opened) == rows
            if name == "recordio":  # identity ranges above 2^24 were stored rounded (f32)
                assert opened.num_classes == -(-rows // 47)
                assert opened.identity_offsets[-1] == rows
            del opened

    benchmark.pedantic(both, rounds=rounds, warmup_rounds=1)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    benchmark.extra_info.update({f"{k}_s": round(v, 4) for k, v in medians.items()})
    benchmark.extra_info["recordio_over_kvindex"] = round(
        medians["recordio"] / medians["kvindex"], 3)
    benchmark.extra_info["idx_mb"] = round((folder / "train.idx").stat().st_size / 2**20, 1)
    benchmark.extra_info["kv_mb"] = round(kv.stat().st_size / 2**20, 1)


@pytest.mark.benchmark(group="open: .idx + header vs KvIndex")
def bench_open_small(benchmark: Any, tmp_path: Path) -> None:
    _open_bench(benchmark, tmp_path, 100_000, rounds=2)


@pytest.mark.slow
@pytest.mark.benchmark(group="open: .idx + header vs KvIndex")
@pytest.mark.parametrize("rows", [1_000_000, 17_000_000], ids=["1M", "17M"])
def bench_open_large(benchmark: Any, tmp_path: Path, rows: int) -> None:
    _open_bench(benchmark, tmp_path, rows, rounds=5)


# --------------------------------------------------------------------------- pack


def _copy_synced(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _drop_page_cache() -> None:
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


DROP_CACHES = "/proc/sys/vm/drop_caches"
can_drop_cache = os.access(DROP_CACHES, os.W_OK)


def _pack_bench(benchmark: Any, rec: Path, out: Path, rounds: int, cold: bool = False) -> None:
    """MB/s of each way of copying ``rec``; ``cold`` drops the page cache before every run
    (the ``.rec`` is then read from disk), else the cache is warm."""
    size_mb = rec.stat().st_size / 2**20
    runs: dict[str, Callable[[Path], Any]] = {
        "copyfile": lambda dst: shutil.copyfile(rec, dst / "copy.rec"),
        "copyfile+fsync": lambda dst: _copy_synced(rec, dst / "copy.rec"),
        "pack --no-verify": lambda dst: pack_recordio(rec, dst / "db", verify=False,
                                                      progress=False),
        "pack": lambda dst: pack_recordio(rec, dst / "db", progress=False),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    counter = iter(range(10**6))

    def all_runs() -> None:
        for name, run in runs.items():
            dst = out / f"{next(counter)}"
            dst.mkdir(parents=True)
            if cold:
                _drop_page_cache()
            start = time.perf_counter()
            run(dst)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(dst)

    benchmark.pedantic(all_runs, rounds=rounds, warmup_rounds=1)
    rates = {name: size_mb / float(np.median(t)) for name, t in times.items()}
    benchmark.extra_info.update({f"{k}_mb_per_s": round(v, 1) for k, v in rates.items()})
    benchmark.extra_info["rec_mb"] = round(size_mb, 1)
    benchmark.extra_info["cache"] = "cold" if cold else "warm"
    for name in ("pack --no-verify", "pack"):
        for base in ("copyfile", "copyfile+fsync"):
            benchmark.extra_info[f"{name} / {base}"] = round(rates[name] / rates[base], 3)


@pytest.mark.benchmark(group="pack: .rec -> lmdb vs copyfile")
def bench_pack_small(benchmark: Any, small_pack: tuple[Path, Path], tmp_path: Path) -> None:
    _pack_bench(benchmark, small_pack[0], tmp_path, rounds=1)


@pytest.mark.slow
@pytest.mark.benchmark(group="pack: .rec -> lmdb vs copyfile")
def bench_pack_moderate(benchmark: Any, moderate_pack: tuple[Path, Path],
                        tmp_path: Path) -> None:
    _pack_bench(benchmark, moderate_pack[0], tmp_path, rounds=3)


@pytest.mark.slow
@pytest.mark.skipif(not can_drop_cache, reason=f"needs write access to {DROP_CACHES} (root)")
@pytest.mark.benchmark(group="pack: .rec -> lmdb vs copyfile, cold cache")
def bench_pack_moderate_cold(benchmark: Any, moderate_pack: tuple[Path, Path],
                             tmp_path: Path) -> None:
    _pack_bench(benchmark, moderate_pack[0], tmp_path, rounds=3, cold=True)
