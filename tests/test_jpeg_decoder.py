"""The fused strict decoder (rust/jpeg/decode.rs) against libjpeg-turbo (through Pillow): grey,
4:4:4, 4:2:2 and 4:2:0, smooth and noisy content, sizes that are not multiples of the MCU, with
and without restart intervals; flips, threads, and corrupt files through the fast path."""

from __future__ import annotations

import io
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

import f2c

# Pillow's `subsampling` values, and grey.
KINDS = {"444": 0, "422": 1, "420": 2, "gray": None}


def content(rng: np.random.Generator, height: int, width: int, noise: float) -> np.ndarray:
    """A smooth colour image (bilinear blow-up of a few random pixels), plus Gaussian noise."""
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    smooth = np.asarray(
        Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR), np.float64
    )
    return np.clip(smooth + rng.normal(0, noise, smooth.shape), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, kind: str, restart: int | None, quality: int = 95) -> bytes:
    out = io.BytesIO()
    options: dict[str, object] = {"quality": quality}
    if restart:
        options["restart_marker_blocks"] = restart
    if KINDS[kind] is None:
        Image.fromarray(image).convert("L").save(out, format="JPEG", **options)
    else:
        Image.fromarray(image).save(out, format="JPEG", subsampling=KINDS[kind], **options)
    return out.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def reader(folder: Path, values: list[bytes], threads: int = 1) -> f2c.LmdbReader:
    db, kv = folder / "db.lmdb", folder / "db.kv"
    if not db.exists():
        env = lmdb.open(str(db), map_size=1 << 26)
        with env.begin(write=True) as txn:
            for i, value in enumerate(values):
                txn.put(f"{i:04d}".encode(), value)
        env.close()
        kv.write_text("".join(f"{i:04d} {i % 2}\n" for i in range(len(values))))
    return f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=threads)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("size", [(112, 112), (53, 37), (224, 224), (3, 2), (2, 3)])
@pytest.mark.parametrize("noise", [0.0, 8.0])
@pytest.mark.parametrize("restart", [None, 3])
def test_pixels_match_libjpeg_turbo(
    tmp_path: Path, kind: str, size: tuple[int, int], noise: float, restart: int | None
) -> None:
    rng = np.random.default_rng([len(kind), *size, int(noise), restart or 0])
    values = [encode(content(rng, *size, noise), kind, restart) for _ in range(3)]
    if restart:
        assert all(b"\xff\xdd" in v for v in values)
    batch = reader(tmp_path, values).read(np.arange(len(values)))
    for image, value in zip(batch, values, strict=True):
        diff = np.abs(image.astype(int) - pil_rgb(value).astype(int))
        # Same IDCT, upsampling and colour arithmetic as libjpeg's defaults (equal on every
        # case here with libjpeg-turbo 3.x on x86-64; another build may round differently).
        assert diff.max() <= 3, (kind, size, diff.max())
        assert diff.mean() < 0.5, (kind, size, diff.mean())


@pytest.mark.parametrize("kind", list(KINDS))
def test_flip_and_threads_are_exact(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(7)
    values = [encode(content(rng, 45, 61, 8.0), kind, None) for _ in range(12)]
    rows = np.arange(12)
    flip = rows % 2 == 0
    one = reader(tmp_path, values, threads=1)
    two = reader(tmp_path, values, threads=2)
    plain = one.read(rows)
    flipped = one.read(rows, flip=flip)
    np.testing.assert_array_equal(flipped[flip], plain[flip][:, :, ::-1])
    np.testing.assert_array_equal(flipped[~flip], plain[~flip])
    np.testing.assert_array_equal(two.read(rows, flip=flip), flipped)


def corruptions(data: bytes) -> dict[str, bytes]:
    """Damaged copies of a JPEG with restart markers, each a kind the check refuses."""
    scan = data.index(b"\xff\xda")
    length = int.from_bytes(data[scan + 2 : scan + 4], "big")
    start = scan + 2 + length  # first byte of entropy-coded data
    end = len(data) - 2
    rst = data.index(b"\xff\xd0", start)
    out = {
        "truncated": data[: start + (end - start) // 2] + b"\xff\xd9",
        "no end": data[: start + (end - start) // 2],
        "garbage": data[:start] + bytes([0xFF, 0x00] * 40) + data[start + 80 :],
        "restart order": data[:rst] + b"\xff\xd3" + data[rst + 2 :],
        "left over": data[:end] + b"\x12\x34" + data[end:],
    }
    return out


@pytest.mark.parametrize("kind", ["420", "gray"])
def test_corrupt_files_are_refused_by_the_fast_path(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(3)
    good = encode(content(rng, 64, 64, 8.0), kind, restart=2)
    bad = corruptions(good)
    folder = tmp_path / "db"
    folder.mkdir()
    source = reader(folder, [good, *bad.values()])
    assert source.read([0]).shape == (1, 64, 64, 3)
    expected = {
        "truncated": "ends before its last block|Huffman code|left over|restart",
        "no end": "ends before its last block|end of file|no end-of-image",
        "garbage": "Huffman code|beyond|past the end|restart|left over|DC value",
        "restart order": "restart marker RST",
        "left over": "left over",
    }
    for row, name in enumerate(bad, start=1):
        with pytest.raises(ValueError, match="corrupt JPEG") as info:
            source.read([row])
        assert any(part in str(info.value) for part in expected[name].split("|")), (
            name,
            str(info.value),
        )
