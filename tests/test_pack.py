"""pack_image_folder → KvIndex → LmdbReader round trips, alignment, bad images, atomicity, CLI."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import f2c
from f2c import pack as pack_module
from f2c.align import align_face, estimate_similarity, template
from f2c.data import LmdbSource, open_training_source
from f2c.data.db import read_label_map
from f2c.pack import BadImageError, pack_image_folder, read_landmarks

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


def open_db(root: Path) -> tuple[f2c.KvIndex, f2c.LmdbReader]:
    source = open_training_source(root)
    assert isinstance(source, LmdbSource)
    return source.index, source.reader


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = make_tree(tmp_path / "faces", rng)
    result = pack_image_folder(tmp_path / "faces", tmp_path / "db", size=SIZE, progress=False)
    assert result.num_classes == 3 and result.num_images == 7
    assert read_label_map(result.labels_path) == {"Mia": 0, "adam": 1, "zoe": 2}
    index, reader = open_db(tmp_path / "db")
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
    _, a = open_db(tmp_path / "one")
    _, b = open_db(tmp_path / "two")
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
    _, reader = open_db(tmp_path / "db")
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
    assert pack_module.main([str(tmp_path / "nothing"), str(tmp_path / "db2")]) == 1
    data = f2c.LmdbReader(tmp_path / "db" / "train.lmdb", index).read_bytes([0])[0]
    assert Image.open(io.BytesIO(data)).size == (32, 32)
