"""Feature extraction: flip-sum, batching, normalisation contract, the feature store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_support import PixelNet, face_images, save_png

from f2c.data.transforms import normalize
from f2c.evaluation.features import (
    ArrayImages,
    EncodedImages,
    ImageFiles,
    cached_features,
    extract_features,
    load_features,
    save_features,
)


@pytest.fixture
def images() -> np.ndarray:
    return face_images(np.random.default_rng(0), 5, 3)[0]


def test_flip_sum_and_normalisation(images: np.ndarray) -> None:
    net = PixelNet()
    feats = extract_features(net, ArrayImages(images), batch_size=4, flip=True)
    with torch.no_grad():
        x = normalize(torch.from_numpy(images))
        expected = net(x) + net(torch.flip(x, dims=[3]))
        plain = net(x)
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-5, atol=1e-5)
    no_flip = extract_features(net, ArrayImages(images), flip=False)
    np.testing.assert_allclose(no_flip, plain.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats, 2 * no_flip, atol=1e-3)  # the flip really changes the input


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_batch_size_does_not_change_features(images: np.ndarray, batch_size: int) -> None:
    net = PixelNet()
    ref = extract_features(net, ArrayImages(images), batch_size=7)
    got = extract_features(net, ArrayImages(images), batch_size=batch_size, workers=3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (15, 16)


def test_model_mode_is_restored_and_amp_refused_on_cpu(images: np.ndarray) -> None:
    net = PixelNet().train()
    extract_features(net, ArrayImages(images))
    assert net.training
    with pytest.raises(ValueError, match="CUDA"):
        extract_features(net, ArrayImages(images), amp=True)


def test_files_bytes_and_arrays_agree(tmp_path: Path, images: np.ndarray) -> None:
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        save_png(img, paths[-1])
    net = PixelNet()
    a = extract_features(net, ArrayImages(images))
    b = extract_features(net, ImageFiles(paths))
    blobs = [p.read_bytes() for p in paths]
    c = extract_features(net, EncodedImages(blobs, ids=[str(i) for i in range(len(blobs))]))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c)
    big = ImageFiles(paths, image_size=32).load(0)
    assert big.shape == (32, 32, 3)


def test_image_errors_name_the_image(tmp_path: Path, images: np.ndarray) -> None:
    net = PixelNet()
    with pytest.raises(FileNotFoundError, match="nope.png"):
        extract_features(net, ImageFiles([tmp_path / "nope.png"]))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.png"):
        extract_features(net, ImageFiles([tmp_path / "bad.png"]))
    save_png(images[0], tmp_path / "a.png")
    save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "small.png")
    with pytest.raises(ValueError, match="small.png"):
        extract_features(net, ImageFiles([tmp_path / "a.png", tmp_path / "small.png"]))
    save_png(np.zeros((8, 12, 3), np.uint8), tmp_path / "wide.png")
    with pytest.raises(ValueError, match="not square"):
        ImageFiles([tmp_path / "wide.png"], image_size=16).load(0)


def test_model_output_shape_checked(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        extract_features(torch.nn.Identity(), ArrayImages(images))


def test_store_roundtrip_and_cache(tmp_path: Path, images: np.ndarray) -> None:
    net = PixelNet()
    src = ArrayImages(images)
    stem = tmp_path / "feats" / "lfw"
    f1 = cached_features(stem, net, src, model_id="m1", flip=True)
    calls = net.calls
    manifest = json.loads((tmp_path / "feats" / "lfw.json").read_text())
    assert manifest["images"] == src.ids() and manifest["model"] == "m1"
    assert manifest["flip"] is True and manifest["count"] == 15 and "date" in manifest
    f2 = cached_features(stem, net, src, model_id="m1", flip=True)
    assert net.calls == calls  # re-used, not recomputed
    np.testing.assert_array_equal(f1, f2)
    cached_features(stem, net, src, model_id="m1", flip=False)
    assert net.calls > calls  # a different protocol choice re-extracts
    feats, man = load_features(stem, mmap=True)
    assert man["flip"] is False and feats.shape == (15, 16)
    with pytest.raises(ValueError, match="one id per feature row"):
        save_features(stem, f1, {"images": ["x"]})
    np.save(tmp_path / "feats" / "lfw.npy", np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match="count"):
        load_features(stem)
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_features(tmp_path / "missing")


def test_store_is_keyed_on_content(tmp_path: Path, images: np.ndarray) -> None:
    """The same ids with other pixels must never be served the stored features."""
    net = PixelNet()
    stem = tmp_path / "feats" / "set"
    blobs = []
    for i, img in enumerate(images):
        save_png(img, tmp_path / f"{i}.png")
        blobs.append((tmp_path / f"{i}.png").read_bytes())
    ids = [f"set.bin#{i}" for i in range(len(blobs))]
    first = cached_features(stem, net, EncodedImages(blobs, ids), model_id="m")
    other = blobs[::-1]  # same ids and count, other content
    got = cached_features(stem, net, EncodedImages(other, ids), model_id="m")
    np.testing.assert_allclose(got, first[::-1], rtol=1e-6)
    # files: replaced under the same name (a new inode), or rewritten in place
    files = ImageFiles([tmp_path / f"{i}.png" for i in range(len(images))])
    before = cached_features(stem, net, files, model_id="m")
    calls = net.calls
    cached_features(stem, net, files, model_id="m")
    assert net.calls == calls  # unchanged files: re-used
    save_png(images[1], tmp_path / "new.png")
    os.replace(tmp_path / "new.png", tmp_path / "0.png")
    after = cached_features(stem, net, files, model_id="m")
    np.testing.assert_allclose(after[0], before[1], rtol=1e-6)
    (tmp_path / "2.png").write_bytes(blobs[3] + b"\0" * 7)  # a size the old file cannot have
    after = cached_features(stem, net, files, model_id="m")
    np.testing.assert_allclose(after[2], before[3], rtol=1e-6)
    manifest = json.loads((tmp_path / "feats" / "set.json").read_text())
    assert manifest["content"].startswith("stat:")


def test_source_without_fingerprint_is_not_stored(tmp_path: Path, images: np.ndarray) -> None:
    class Plain:
        def __len__(self) -> int:
            return len(images)

        def ids(self) -> list[str]:
            return [str(i) for i in range(len(images))]

        def load(self, index: int) -> np.ndarray:
            return images[index]

    cached_features(tmp_path / "f", PixelNet(), Plain(), model_id="m")  # type: ignore[arg-type]
    assert not (tmp_path / "f.npy").exists()
