"""pack_image_folder / pack_recordio → KvIndex → LmdbReader round trips, WebFace splits,
alignment, bad and hostile inputs, atomicity (staging folders), CLI."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recordio_support import insightface_payloads, ir_payload, smooth_jpeg, write_pack
from train_support import subprocess_env

import f2c
from f2c import pack as pack_module
from f2c.align import align_face, estimate_similarity, template
from f2c.data import LmdbSource, RecordIOReader, open_training_source
from f2c.data.db import STAGING_MARKER, read_label_map
from f2c.pack import BadImageError, pack_image_folder, pack_recordio, read_landmarks

SIZE = 48


def blocky(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def make_tree(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Identities named out of sorted order; PNG and JPEG files; several sizes."""
    images = {}
    for name, count in (("zoe", 2), ("adam", 3), ("Mia", 1)):
        (root / name).mkdir(parents=True)
        for k in range(count):
            pixels = blocky(rng, 60 + 10 * k, 50)
            path = root / name / f"{k}.png"
            Image.fromarray(pixels).save(path)
            images[f"{name}/{k}.png"] = pixels
    # Already at the target size as an RGB JPEG: stored byte for byte.
    Image.fromarray(blocky(rng, SIZE, SIZE)).save(root / "adam" / "z_ready.jpg", quality=90)
    (root / "adam" / "notes.txt").write_text("not an image")  # ignored (extension)
    (root / "empty").mkdir()  # no images: no label
    return images


def reference_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(pixels)
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(image)


def lmdb_parts(root: Path) -> tuple[f2c.KvIndex, f2c.LmdbReader]:
    source = open_training_source(root)
    assert isinstance(source, LmdbSource)
    return source.index, source.reader


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = make_tree(tmp_path / "faces", rng)
    result = pack_image_folder(tmp_path / "faces", tmp_path / "db", size=SIZE, progress=False)
    assert result.num_classes == 3 and result.num_images == 7
    assert read_label_map(result.labels_path) == {"Mia": 0, "adam": 1, "zoe": 2}
    index, reader = lmdb_parts(tmp_path / "db")
    keys = [index.key(r).decode() for r in range(len(index))]
    assert keys == ["Mia/0.png", "adam/0.png", "adam/1.png", "adam/2.png", "adam/z_ready.jpg",
                    "zoe/0.png", "zoe/1.png"]
    assert index.labels.tolist() == [0, 1, 1, 1, 1, 2, 2]
    assert reader.image_size == (SIZE, SIZE)
    batch = reader.read(np.arange(len(index)))
    for key, image in zip(keys, batch, strict=True):
        if key in images:
            want = reference_crop(images[key], SIZE).astype(int)
            # q95 JPEG of a smooth crop: close to the reference crop.
            assert np.abs(image.astype(int) - want).mean() < 3.0
    stored = reader.read_bytes([4])[0]
    assert stored == (tmp_path / "faces" / "adam" / "z_ready.jpg").read_bytes()
    assert not list(tmp_path.glob("db.tmp-*"))


def test_same_db_with_workers(tmp_path: Path) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(1))
    pack_image_folder(tmp_path / "faces", tmp_path / "one", size=SIZE, progress=False)
    pack_image_folder(
        tmp_path / "faces", tmp_path / "two", size=SIZE, workers=2, progress=False
    )
    _, a = lmdb_parts(tmp_path / "one")
    _, b = lmdb_parts(tmp_path / "two")
    rows = np.arange(7)
    assert a.read_bytes(rows) == b.read_bytes(rows)
    kv_one, kv_two = (tmp_path / name / "train.kv" for name in ("one", "two"))
    assert kv_one.read_text() == kv_two.read_text()


def test_bad_image_stops_with_its_path(tmp_path: Path) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(2))
    bad = tmp_path / "faces" / "zoe" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(BadImageError, match=str(bad)):
        pack_image_folder(tmp_path / "faces", tmp_path / "db", size=SIZE, progress=False)
    assert not (tmp_path / "db").exists()
    assert not list(tmp_path.glob("db.tmp-*"))  # nothing half-written left behind


def test_skip_bad_writes_a_report(tmp_path: Path) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(3))
    (tmp_path / "faces" / "zoe" / "broken.png").write_bytes(b"nope")
    result = pack_image_folder(
        tmp_path / "faces", tmp_path / "db", size=SIZE, skip_bad=True, progress=False
    )
    assert result.num_images == 7
    assert [k for k, _ in result.skipped] == ["zoe/broken.png"]
    report = (tmp_path / "db" / "skipped.tsv").read_text().splitlines()
    assert report[0] == "path\treason" and report[1].startswith("zoe/broken.png\tunreadable")


def test_interrupt_leaves_no_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(4))
    calls = {"n": 0}
    real = pack_module._prepare

    def interrupted(*args: object) -> tuple[bytes | None, str]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pack_module, "_prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_image_folder(tmp_path / "faces", tmp_path / "db", size=SIZE, progress=False)
    assert not (tmp_path / "db").exists()
    assert not list(tmp_path.glob("db.tmp-*"))


def test_existing_output_is_not_replaced_silently(tmp_path: Path) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(5))
    (tmp_path / "db").mkdir()
    with pytest.raises(FileExistsError):
        pack_image_folder(tmp_path / "faces", tmp_path / "db", size=SIZE, progress=False)
    result = pack_image_folder(
        tmp_path / "faces", tmp_path / "db", size=SIZE, overwrite=True, progress=False
    )
    assert result.num_images == 7


# --------------------------------------------------------------------------- alignment


def test_similarity_is_recovered_exactly() -> None:
    rng = np.random.default_rng(6)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = estimate_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), dst)


def dotted_face(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A dark image with a bright dot (Gaussian, sigma 1.5 px) at each landmark."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, 3), np.float64)
    for c, (x, y) in enumerate(landmarks):
        image[..., c % 3] += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [112, 224])
def test_alignment_puts_landmarks_on_the_template(size: int) -> None:
    # Landmarks of a rotated, scaled, shifted face in a 300x260 photo.
    angle, scale = -0.35, 1.9
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    photo_points = template(112) @ (scale * rot).T + np.array([70.0, 90.0])
    crop = align_face(dotted_face(photo_points, (260, 300)), photo_points, size)
    assert crop.shape == (size, size, 3)
    # Each dot's intensity centroid (per channel, dots of one channel kept apart) must land
    # on its template point.
    want = template(size)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, (tx, ty) in enumerate(want):
        window = (np.abs(xx - tx) < 6 * size / 112) & (np.abs(yy - ty) < 6 * size / 112)
        weight = crop[..., i % 3].astype(float) * window
        cx, cy = (weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()
        assert abs(cx - tx) < 0.5 and abs(cy - ty) < 0.5, (i, cx, cy, tx, ty)


def test_pack_with_landmarks(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    points = template(112) * 1.5 + np.array([20.0, 10.0])
    Image.fromarray(dotted_face(points, (200, 210))).save(root / "a" / "0.png")
    Image.fromarray(dotted_face(points, (200, 210))).save(root / "a" / "1.png")
    marks = tmp_path / "landmarks.txt"
    coords = " ".join(f"{v:.3f}" for v in points.reshape(-1))
    marks.write_text(f"# relpath x1 y1 ... x5 y5\na/0.png {coords}\n")
    with pytest.raises(BadImageError, match="no landmarks"):
        pack_image_folder(root, tmp_path / "db", size=112, landmarks=marks, progress=False)
    result = pack_image_folder(
        root, tmp_path / "db", size=112, landmarks=marks, skip_bad=True, progress=False
    )
    assert result.num_images == 1 and result.skipped[0][0] == "a/1.png"
    _, reader = lmdb_parts(tmp_path / "db")
    crop = reader.read([0])[0]
    for i, (x, y) in enumerate(template(112)):
        assert crop[int(round(y)), int(round(x)), i % 3] > 100  # a dot is on each point


def test_landmark_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "marks.txt"
    bad.write_text("a/0.png 1 2 3\n")
    with pytest.raises(ValueError, match=f"{bad}:1:"):
        read_landmarks(bad)
    bad.write_text("a/0.png 1 2 3 4 5 6 7 8 9 x\n")
    with pytest.raises(ValueError, match="numbers"):
        read_landmarks(bad)
    good = tmp_path / "good.txt"
    good.write_text("my dir/0.png 1 2 3 4 5 6 7 8 9 10\n")
    assert read_landmarks(good)["my dir/0.png"].shape == (5, 2)


# --------------------------------------------------------------------------- CLI


def test_cli(tmp_path: Path) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(7))
    helped = subprocess.run(
        [sys.executable, "-m", "f2c.pack", "--help"], capture_output=True, text=True, check=True
    )
    assert "--skip-bad" in helped.stdout and "--landmarks" in helped.stdout
    assert pack_module.main(
        [str(tmp_path / "faces"), str(tmp_path / "db"), "--size", "32", "--no-progress"]
    ) == 0
    index = f2c.KvIndex(tmp_path / "db" / "train.kv")
    assert len(index) == 7
    assert pack_module.main([str(tmp_path / "nothing"), str(tmp_path / "db2")]) == 2
    data = f2c.LmdbReader(tmp_path / "db" / "train.lmdb", index).read_bytes([0])[0]
    assert Image.open(io.BytesIO(data)).size == (32, 32)


# --------------------------------------------------------------------------- RecordIO


def _rec_faces(folder: Path, rng: np.random.Generator) -> tuple[Path, list[bytes]]:
    """An insightface pack of 3 identities (3, 1, 2 images of 40 px)."""
    identities = [[smooth_jpeg(rng, 40) for _ in range(n)] for n in (3, 1, 2)]
    folder.mkdir(parents=True, exist_ok=True)
    rec = folder / "train.rec"
    write_pack(rec, insightface_payloads(identities))
    return rec, [image for imgs in identities for image in imgs]


def test_recordio_to_lmdb_keeps_bytes_and_pixels(tmp_path: Path) -> None:
    rec, images = _rec_faces(tmp_path / "ms1m", np.random.default_rng(10))
    result = pack_recordio(rec, tmp_path / "db", progress=False)
    assert (result.num_images, result.num_classes) == (6, 3)
    index, reader = lmdb_parts(tmp_path / "db")
    assert [index.key(r) for r in range(6)] == [b"1", b"2", b"3", b"4", b"5", b"6"]
    assert index.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert read_label_map(result.labels_path) == {"0": 0, "1": 1, "2": 2}
    rows = np.arange(6)
    assert reader.read_bytes(rows) == images  # copied as they are, never re-encoded
    source = RecordIOReader(rec)
    flips = rows % 2 == 0
    assert np.array_equal(reader.read(rows, flip=flips), source.read(rows, flip=flips))


def test_recordio_keys_are_padded_to_sort(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    image = smooth_jpeg(rng, 40)
    rec = tmp_path / "plain.rec"
    write_pack(rec, [ir_payload(float(i % 2), image) for i in range(12)])
    pack_recordio(rec, tmp_path / "db", progress=False)
    keys = (tmp_path / "db" / "train.kv").read_text().split()[::2]
    assert keys == [f"{i:02d}" for i in range(12)]
    # Keys out of order in the .idx: no LMDB append, same content.
    write_pack(rec, [ir_payload(float(i % 2), image) for i in range(3)], keys=[5, 10, 1])
    pack_recordio(rec, tmp_path / "db2", progress=False)
    assert (tmp_path / "db2" / "train.kv").read_text() == "05 0\n10 1\n01 0\n"


def test_recordio_bad_records_stop_or_are_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    good = smooth_jpeg(rng, 40)
    png = io.BytesIO()
    Image.new("RGB", (40, 40)).save(png, format="PNG")
    rec = tmp_path / "bad.rec"
    offsets = write_pack(rec, insightface_payloads([[good, png.getvalue()], [good, b"\xff\xd8x"]]))
    with pytest.raises(BadImageError, match=rf"record 2 at byte {offsets[2]}: .*PNG"):
        pack_recordio(rec, tmp_path / "db", progress=False)
    assert not (tmp_path / "db").exists() and not list(tmp_path.glob("db.tmp-*"))
    result = pack_recordio(rec, tmp_path / "db", skip_bad=True, progress=False)
    assert result.num_images == 2 and [k for k, _ in result.skipped] == ["2", "4"]
    report = (tmp_path / "db" / "skipped.tsv").read_text().splitlines()
    assert report[1].startswith("2\t") and "PNG" in report[1]
    # Without verification the record structure, labels and each JPEG's headers are still
    # checked (a PNG or a header-less JPEG is refused), but not the entropy-coded data.
    with pytest.raises(BadImageError, match=rf"record 2 at byte {offsets[2]}: .*PNG"):
        pack_recordio(rec, tmp_path / "raw", verify=False, progress=False)
    unchecked = pack_recordio(rec, tmp_path / "raw", verify=False, skip_bad=True, progress=False)
    assert [k for k, _ in unchecked.skipped] == ["2", "4"]
    cut = good[: len(good) // 2] + b"\xff\xd9"  # frame header intact, scan data cut short
    rec_cut = tmp_path / "cut.rec"
    write_pack(rec_cut, insightface_payloads([[good, cut]]))
    assert pack_recordio(rec_cut, tmp_path / "cut", verify=False, progress=False).num_images == 2
    with pytest.raises(BadImageError, match="record 2 at byte .*corrupt JPEG"):
        pack_recordio(rec_cut, tmp_path / "cut-verified", progress=False)


def test_recordio_pack_refuses_images_of_another_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    rec = tmp_path / "mixed.rec"
    offsets = write_pack(
        rec, insightface_payloads([[smooth_jpeg(rng, 40)], [smooth_jpeg(rng, 48)]])
    )
    for verify in (False, True):
        with pytest.raises(BadImageError, match=rf"record 2 at byte {offsets[2]}: .*48x48"):
            pack_recordio(rec, tmp_path / f"db-{verify}", verify=verify, progress=False)
    result = pack_recordio(rec, tmp_path / "db", verify=False, skip_bad=True, progress=False)
    assert result.num_images == 1 and [k for k, _ in result.skipped] == ["2"]


def test_cli_packs_a_rec_and_its_folder(tmp_path: Path) -> None:
    rec, images = _rec_faces(tmp_path / "ms1m", np.random.default_rng(13))
    assert pack_module.main([str(rec), str(tmp_path / "a"), "--no-progress"]) == 0
    assert pack_module.main([str(rec.parent), str(tmp_path / "b"), "--no-progress",
                             "--no-verify"]) == 0
    for name in ("a", "b"):
        _, reader = lmdb_parts(tmp_path / name)
        assert reader.read_bytes(np.arange(6)) == images
    assert pack_module.main([str(rec), str(tmp_path / "faces"), str(tmp_path / "c")]) == 2


# --------------------------------------------------------------------------- splits


def _identity(folder: Path, rng: np.random.Generator, count: int = 2) -> None:
    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(blocky(rng, SIZE, SIZE)).save(folder / f"{k}.jpg", quality=90)


def test_webface_splits_under_one_root(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    root = tmp_path / "webface"
    for split, names in (("0", ["m.b", "m.a"]), ("1", ["m.c", "m.a"])):
        for name in names:
            _identity(root / split / name, rng)
    result = pack_image_folder(root, tmp_path / "db", size=SIZE, progress=False)
    assert read_label_map(result.labels_path) == {"0/m.a": 0, "0/m.b": 1, "1/m.a": 2, "1/m.c": 3}
    assert result.num_images == 8
    assert any("m.a in 0, 1" in note for note in result.notes)
    index, _ = lmdb_parts(tmp_path / "db")
    assert index.key(0) == b"0/m.a/0.jpg" and index.key(7) == b"1/m.c/1.jpg"
    # Forcing the flat layout makes the split folders the identities (no images directly).
    with pytest.raises(ValueError, match="no images"):
        pack_image_folder(root, tmp_path / "flat", size=SIZE, layout="flat", progress=False)


def test_several_roots_are_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    _identity(tmp_path / "part_a" / "x", rng)
    _identity(tmp_path / "part_b" / "x", rng, 3)
    assert pack_module.main([str(tmp_path / "part_a"), str(tmp_path / "part_b"),
                             str(tmp_path / "db"), "--size", str(SIZE), "--no-progress"]) == 0
    assert read_label_map(tmp_path / "db" / "labels.tsv") == {"part_a/x": 0, "part_b/x": 1}
    index, _ = lmdb_parts(tmp_path / "db")
    assert index.labels.tolist() == [0, 0, 1, 1, 1]
    (tmp_path / "other").mkdir()
    _identity(tmp_path / "other" / "part_a" / "y", rng)
    with pytest.raises(ValueError, match="both named 'part_a'"):
        pack_image_folder([tmp_path / "part_a", tmp_path / "other" / "part_a"],
                          tmp_path / "db2", size=SIZE, progress=False)


# --------------------------------------------------------------------------- hostile inputs


def _huge_header(jpeg: bytes, height: int, width: int) -> bytes:
    """``jpeg`` with its frame header (SOF0) claiming ``height`` x ``width``."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def test_oversized_and_corrupt_jpegs_are_bad_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    root = tmp_path / "faces"
    _identity(root / "a", rng)
    small = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "huge.jpg").write_bytes(_huge_header(small, 12000, 12000))
    with pytest.raises(BadImageError, match="huge.jpg: bad JPEG"):
        pack_image_folder(root, tmp_path / "db", size=SIZE, progress=False)
    (root / "a" / "huge.jpg").unlink()
    (root / "a" / "cut.jpg").write_bytes(small[: len(small) // 2])
    result = pack_image_folder(root, tmp_path / "db", size=SIZE, skip_bad=True, progress=False)
    assert [k for k, _ in result.skipped] == ["a/cut.jpg"]
    # A PNG (PIL path) above the side limit is refused before it is decoded.
    Image.new("RGB", (300, 20)).save(root / "a" / "wide.png")
    result = pack_image_folder(root, tmp_path / "db", size=SIZE, skip_bad=True, max_side=256,
                               overwrite=True, progress=False)
    assert dict(result.skipped)["a/wide.png"].startswith("image of 300x20 pixels is above")


def test_symlink_loops_are_skipped_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    root = tmp_path / "faces"
    _identity(root / "a", rng)
    _identity(root / "b", rng)
    (root / "a" / "loop.jpg").symlink_to("loop.jpg")
    (root / "spin").symlink_to("spin")
    with pytest.raises(BadImageError, match="spin: cannot examine"):
        pack_image_folder(root, tmp_path / "db", size=SIZE, progress=False)
    result = pack_image_folder(root, tmp_path / "db", size=SIZE, skip_bad=True, progress=False)
    assert result.num_images == 4
    assert sorted(k for k, _ in result.skipped) == ["a/loop.jpg", "spin/"]


def test_non_utf8_names_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(18)
    root = tmp_path / "faces"
    _identity(root / "a", rng)
    bad = os.fsdecode(b"caf\xe9")  # Latin-1 bytes, not UTF-8
    _identity(root / bad, rng)
    with pytest.raises(BadImageError, match=r"caf\\xe9: folder name is not valid UTF-8"):
        pack_image_folder(root, tmp_path / "db", size=SIZE, skip_bad=True, progress=False)
    os.rename(root / bad, root / "b")
    os.rename(root / "b" / "0.jpg", root / "b" / os.fsdecode(b"\xff.jpg"))
    result = pack_image_folder(root, tmp_path / "db", size=SIZE, skip_bad=True, progress=False)
    assert result.num_images == 3
    assert result.skipped[0][0] == "b/\\xff.jpg" and "UTF-8" in result.skipped[0][1]


def test_kv_and_labels_are_fsynced_before_the_rename(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(19))
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    pack_image_folder(tmp_path / "faces", tmp_path / "db", size=SIZE, progress=False)
    names = [Path(p).name for p in synced]
    assert "train.kv" in names and "labels.tsv" in names
    # Both inside the staging folder, before it became db/.
    assert all(".tmp-" in p for p in synced if p.endswith((".kv", ".tsv")))


def test_a_killed_pack_leaves_nothing_that_opens(tmp_path: Path) -> None:
    make_tree(tmp_path / "faces", np.random.default_rng(20))
    script = textwrap.dedent(f"""
        import time, f2c.pack as p
        real = p._prepare
        def slow(*a):
            time.sleep(0.5)
            return real(*a)
        p._prepare = slow
        p.pack_image_folder({str(tmp_path / "faces")!r}, {str(tmp_path / "db")!r}, size=32,
                            progress=False)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env())
    try:
        for _ in range(200):
            staged = list(tmp_path.glob("db.tmp-*"))
            if staged and (staged[0] / "train.kv").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the pack never started writing")
    finally:
        child.kill()
        child.wait()
    (leftover,) = tmp_path.glob("db.tmp-*")
    with pytest.raises(ValueError, match="staging folder"):
        open_training_source(leftover)
    renamed = tmp_path / "renamed"
    leftover.rename(renamed)  # even under another name, its marker refuses it
    with pytest.raises(ValueError, match="staging folder"):
        open_training_source(renamed)
    renamed.rename(leftover)
    # A pack of the same output removes it (its writer is dead) and says so.
    with pytest.warns(UserWarning, match=r"removed .*db\.tmp-.*interrupted pack"):
        pack_image_folder(tmp_path / "faces", tmp_path / "db", size=32, progress=False)
    assert not list(tmp_path.glob("db.tmp-*"))
    # A staging folder of a live pack is left alone, and named.
    live = tmp_path / "db2.tmp-abcd1234"
    live.mkdir()
    (live / STAGING_MARKER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    with pytest.warns(UserWarning, match="running pack"):
        pack_image_folder(tmp_path / "faces", tmp_path / "db2", size=32, progress=False)
    assert live.exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "broken.rec"
    rec.write_bytes(b"\x0a\x23\xd7\xce\x10\x00\x00\x00short")
    rec.with_suffix(".idx").write_text("0\t0\n")
    assert pack_module.main([str(rec), str(tmp_path / "db"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m f2c.pack: error: {rec}: record 0")
    assert "truncated" in err[0]
    with pytest.raises(ValueError, match="truncated"):
        pack_module.main([str(rec), str(tmp_path / "db"), "--debug"])


def test_writer_add_many_refuses_duplicates_and_disorder(tmp_path: Path) -> None:
    from f2c.data import TrainingDbWriter

    with pytest.raises(ValueError, match="duplicate record key 'b'"), \
            TrainingDbWriter(tmp_path / "dup", ["x"]) as writer:
        writer.add_many(["a", "b"], [0, 0], [b"1", b"2"])
        writer.add_many(["b"], [0], [b"3"])
        writer.close()
    with pytest.raises(ValueError, match="'a' is not after 'b'"), \
            TrainingDbWriter(tmp_path / "order", ["x"], append=True) as writer:
        writer.add_many(["b", "a"], [0, 0], [b"1", b"2"])
        writer.close()
    with pytest.raises(ValueError, match="label 1 outside 0..0"), \
            TrainingDbWriter(tmp_path / "label", ["x"]) as writer:
        writer.add_many(["a"], [1], [b"1"])
    with TrainingDbWriter(tmp_path / "ok", ["x", "y"], append=True) as writer:
        writer.add_many(["a", "b"], [1, 0], [b"1", b"2"])
    assert (tmp_path / "ok" / "train.kv").read_text() == "a 1\nb 0\n"
