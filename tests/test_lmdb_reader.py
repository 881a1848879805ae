"""LmdbReader: decoding against a reference decoder, flips, Datum values, errors naming the key
and the db, several dbs, threads and forked DataLoader workers."""

from __future__ import annotations

import io
import os
import pickle
import threading
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import f2c
from f2c.data.db import encode_datum

SIZE = 48


def jpeg(image: np.ndarray, quality: int = 92, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).convert(mode).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def smooth_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A blocky colour image (JPEG-friendly, so decoders agree closely)."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))


def make_db(
    folder: Path, values: dict[str, bytes], labels: dict[str, int] | None = None
) -> tuple[Path, Path]:
    """An LMDB written by py-lmdb and its kv file (keys in insertion order)."""
    db = folder / "db.lmdb"
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key.encode(), value)
    env.close()
    kv = folder / "db.kv"
    labels = labels or {k: i % 3 for i, k in enumerate(values)}
    kv.write_text("".join(f"{k} {labels[k]}\n" for k in values))
    return db, kv


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    rng = np.random.default_rng(0)
    values = {f"id{i % 3}/{i:03d}": jpeg(smooth_image(rng)) for i in range(24)}
    db, kv = make_db(tmp_path, values)
    return db, kv, list(values.values())


def test_read_matches_reference_decoder(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, values = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv))
    assert reader.image_size == (SIZE, SIZE)
    rows = np.array([5, 0, 23, 5, 11])
    batch = reader.read(rows)
    assert batch.dtype == np.uint8
    assert batch.shape == (5, SIZE, SIZE, 3)
    for image, row in zip(batch, rows, strict=True):
        diff = np.abs(image.astype(int) - pil_decode(values[row]).astype(int))
        # Different IDCT/upsampling implementations: a few levels apart at most.
        assert diff.max() <= 8
        assert diff.mean() < 1.0


def test_flip_mirrors_exactly(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, _ = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=2)
    rows = np.arange(24)
    flip = rows % 3 == 0
    plain = reader.read(rows)
    flipped = reader.read(rows, flip=flip)
    np.testing.assert_array_equal(flipped[flip], plain[flip][:, :, ::-1])
    np.testing.assert_array_equal(flipped[~flip], plain[~flip])
    # One thread decodes the same bytes as several.
    single = f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=1).read(rows, flip=flip)
    np.testing.assert_array_equal(single, flipped)


def test_read_bytes_returns_stored_values(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, values = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv))
    assert reader.read_bytes([3, 1]) == [values[3], values[1]]
    assert reader.read([]).shape == (0, SIZE, SIZE, 3)


def test_datum_values_written_by_py_lmdb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [smooth_image(rng) for _ in range(3)]
    raw = [jpeg(im) for im in images]
    values = {
        "caffe": encode_datum(raw[0], label=7, shape=(3, SIZE, SIZE)),  # field 4 (Caffe)
        "field1": encode_datum(raw[1], image_field=1),  # the reference writer's field 1
        "plain": raw[2],
    }
    db, kv = make_db(tmp_path, values)
    batch = f2c.LmdbReader(db, f2c.KvIndex(kv)).read([0, 1, 2])
    for image, data in zip(batch, raw, strict=True):
        assert np.abs(image.astype(int) - pil_decode(data).astype(int)).max() <= 8


def test_grayscale_jpeg_becomes_rgb(tmp_path: Path) -> None:
    grey = smooth_image(np.random.default_rng(2))
    db, kv = make_db(tmp_path, {"g": jpeg(grey, mode="L")})
    image = f2c.LmdbReader(db, f2c.KvIndex(kv)).read([0])[0]
    assert np.array_equal(image[..., 0], image[..., 1])
    assert np.array_equal(image[..., 0], image[..., 2])


def test_several_dbs_in_kv_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    va = {"x": jpeg(smooth_image(rng)), "y": jpeg(smooth_image(rng))}
    vb = {"x": jpeg(smooth_image(rng))}  # same key, other db
    db_a, kv_a = make_db(tmp_path / "a", va, {"x": 0, "y": 1})
    db_b, kv_b = make_db(tmp_path / "b", vb, {"x": 0})
    index = f2c.KvIndex([kv_a, kv_b])
    assert index.labels.tolist() == [0, 1, 2]
    reader = f2c.LmdbReader([db_a, db_b], index)
    assert reader.read_bytes([2, 0]) == [vb["x"], va["x"]]
    with pytest.raises(ValueError, match="one lmdb per kv file"):
        f2c.LmdbReader([db_a], index)


def test_missing_key_names_key_and_db(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    db, kv = make_db(tmp_path, {"here": jpeg(smooth_image(rng))})
    kv.write_text("here 0\ngone 1\n")
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv))
    with pytest.raises(KeyError, match=f"gone.*{db}"):
        reader.read([0, 1])
    with pytest.raises(KeyError, match="gone"):
        reader.read_bytes([1])


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b"definitely not an image", "neither a JPEG nor a Datum"),
        (b"\xff\xd8\xff\xe0garbage", "corrupt JPEG"),
        (encode_datum(b"PNG pretending"), "not a JPEG"),
        ("truncated", "corrupt JPEG"),
        ("other size", "is 32x32"),
    ],
)
def test_bad_values_name_key_and_db(tmp_path: Path, value: bytes | str, needle: str) -> None:
    rng = np.random.default_rng(5)
    good = jpeg(smooth_image(rng))
    if value == "truncated":
        value = good[: len(good) // 2]
    elif value == "other size":
        value = jpeg(smooth_image(rng, 32))
    assert isinstance(value, bytes)
    db, kv = make_db(tmp_path, {"good": good, "bad/key": value})
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv))
    with pytest.raises(ValueError, match=needle) as info:
        reader.read([0, 1])
    assert "bad/key" in str(info.value) and str(db) in str(info.value)
    assert reader.read([0]).shape == (1, SIZE, SIZE, 3)  # the good record still reads


def test_argument_errors(sample: tuple[Path, Path, list[bytes]], tmp_path: Path) -> None:
    db, kv, _ = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv))
    with pytest.raises(IndexError):
        reader.read([24])
    with pytest.raises(IndexError):
        reader.read([-1])
    with pytest.raises(ValueError, match="flip has 1 entries for 2 rows"):
        reader.read([0, 1], flip=[True])
    with pytest.raises(ValueError, match="integer rows"):
        reader.read(np.array([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        reader.read(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(OSError, match="nowhere"):
        f2c.LmdbReader(tmp_path / "nowhere", f2c.KvIndex(kv))
    with pytest.raises(ValueError, match="num_threads"):
        f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=0)


def test_readers_share_an_environment(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, _ = sample
    index = f2c.KvIndex(kv)
    first = f2c.LmdbReader(db, index)
    second = f2c.LmdbReader(str(db), index)
    want = first.read([1, 2])
    np.testing.assert_array_equal(second.read([1, 2]), want)
    del first, second
    np.testing.assert_array_equal(f2c.LmdbReader(db, index).read([1, 2]), want)


def test_concurrent_python_threads(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, _ = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=2)
    want = reader.read(np.arange(24))
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(reader.read(np.arange(24))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for got in results:
        np.testing.assert_array_equal(got, want)


def test_pickles_for_spawned_workers(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, _ = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.num_threads == 1
    np.testing.assert_array_equal(clone.read([3]), reader.read([3]))


class _Batches(torch.utils.data.Dataset):
    def __init__(self, reader: f2c.LmdbReader, batches: list[np.ndarray]) -> None:
        self.reader = reader
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.reader.read(self.batches[i])), os.getpid()


@pytest.mark.skipif(
    "fork" not in torch.multiprocessing.get_all_start_methods(), reason="needs fork"
)
def test_forked_dataloader_workers(sample: tuple[Path, Path, list[bytes]]) -> None:
    db, kv, _ = sample
    reader = f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=2)
    batches = [np.arange(i, i + 6) for i in range(0, 24, 6)] * 2
    want = reader.read(np.concatenate(batches))  # the parent opens its environment first
    loader = torch.utils.data.DataLoader(
        _Batches(reader, batches),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
    )
    got = list(loader)
    pids = {pid for _, pid in got}
    assert os.getpid() not in pids and len(pids) == 2
    np.testing.assert_array_equal(torch.cat([b for b, _ in got]).numpy(), want)
    # The parent's reader still works after its children exited.
    np.testing.assert_array_equal(reader.read(batches[0]), want[:6])
