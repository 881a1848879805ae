"""FaceEmbedder (checkpoint and ONNX) and the ``python -m f2c.embed`` folder CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_support import save_backbone
from PIL import Image

import f2c
from f2c.align import template
from f2c.data.transforms import normalize
from f2c.embed import main as embed_main
from f2c.embedder import FaceEmbedder
from f2c.models import ModelSpec

SPEC = ModelSpec("tinyfacenet", 24, 32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return path, save_backbone(path, SPEC, seed=3)


def _crops(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _reference(module: torch.nn.Module, crops: np.ndarray, flip: bool) -> np.ndarray:
    """What the embedder must compute, written out: normalise, (flip-sum), L2-normalise."""
    x = normalize(torch.from_numpy(crops))
    with torch.inference_mode():
        out = module(x)
        if flip:
            out = out + module(x.flip(3))
    return torch.nn.functional.normalize(out, dim=1).numpy()


def test_embed_from_checkpoint(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, probe = checkpoint
    emb = f2c.FaceEmbedder.from_checkpoint(path.parent, device="cpu", batch_size=3)
    assert (emb.input_size, emb.embedding_size, emb.spec) == (32, 24, SPEC)
    crops = _crops(7)
    feats = emb.embed(crops)
    assert feats.dtype == np.float32 and feats.shape == (7, 24)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(feats, _reference(probe, crops, flip=False), atol=1e-5)
    # Batching does not change the result; lists of crops work too.
    np.testing.assert_allclose(emb.embed(list(crops)), feats, atol=1e-6)
    flipped = emb.embed(crops, flip=True)
    np.testing.assert_allclose(flipped, _reference(probe, crops, flip=True), atol=1e-5)
    assert np.abs(flipped - feats).max() > 1e-3
    assert emb.embed(crops[:0]).shape == (0, 24)
    # Square crops of another size are resized to the backbone's input.
    assert emb.embed(_crops(2, size=64)).shape == (2, 24)
    gallery = FaceEmbedder.from_checkpoint(path, net="gallery", device="cpu")
    assert np.abs(gallery.embed(crops) - feats).max() > 1e-3


def test_reused_input_buffer_holds_the_training_normalisation(
    checkpoint: tuple[Path, torch.nn.Module],
) -> None:
    backend = FaceEmbedder.from_checkpoint(checkpoint[0], device="cpu")._backend
    big, small = _crops(5, seed=7), _crops(2, seed=8)
    for crops, copies in ((big, 1), (small, 2), (big, 2)):  # shrinking, then regrowing
        x = backend._normalised(crops, copies)  # type: ignore[attr-defined]
        assert x.shape == (copies * len(crops), 3, 32, 32)
        assert torch.equal(x[: len(crops)], normalize(torch.from_numpy(crops)))


def test_bad_inputs_are_named(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    emb = FaceEmbedder.from_checkpoint(checkpoint[0], device="cpu")
    with pytest.raises(TypeError, match="uint8"):
        emb.embed(_crops(2).astype(np.float32))
    with pytest.raises(ValueError, match="not a square aligned crop"):
        emb.embed(np.zeros((1, 32, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        emb.embed(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="2 images but 1 landmark"):
        emb.embed_faces([_crops(1)[0]] * 2, np.zeros((1, 5, 2)))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        FaceEmbedder.from_checkpoint(checkpoint[0], batch_size=0)


def test_embed_faces_aligns_first(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    emb = FaceEmbedder.from_checkpoint(checkpoint[0], device="cpu")
    crops = _crops(2, seed=1)
    rng = np.random.default_rng(2)
    images, landmarks = [], []
    for i, (dx, dy) in enumerate([(10, 7), (3, 21)]):
        canvas = rng.integers(0, 256, (70, 60, 3), dtype=np.uint8)
        canvas[dy : dy + 32, dx : dx + 32] = crops[i]
        images.append(canvas)
        landmarks.append(template(32) + [dx, dy])  # the face sits at an integer offset
    aligned = emb.align(images, np.array(landmarks))
    assert np.abs(aligned.astype(int) - crops).max() <= 1  # bilinear at integer shifts
    feats = emb.embed_faces(images, np.array(landmarks))
    np.testing.assert_array_equal(feats, emb.embed(aligned))
    assert (feats * emb.embed(crops)).sum(1).min() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    crops = _crops(9)
    cpu = FaceEmbedder.from_checkpoint(checkpoint[0], device="cpu").embed(crops)
    gpu = FaceEmbedder.from_checkpoint(checkpoint[0], device="cuda", batch_size=4)
    assert gpu.device.startswith("cuda")
    assert (gpu.embed(crops) * cpu).sum(1).min() > 0.9999


def test_checkpoint_and_onnx_give_the_same_embeddings(
    checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from f2c.export import export_onnx

    onnx_path = export_onnx(checkpoint[0], tmp_path / "m.onnx").path
    crops = _crops(5, seed=4)
    plain = {}
    for flip in (False, True):
        a = FaceEmbedder.from_checkpoint(checkpoint[0], device="cpu", flip=flip).embed(crops)
        b = FaceEmbedder.from_onnx(onnx_path, device="cpu", batch_size=2, flip=flip).embed(crops)
        assert b.dtype == np.float32 and b.shape == (5, 24)
        assert (a * b).sum(1).min() >= 0.99999
        np.testing.assert_allclose(a, b, atol=1e-5)
        plain[flip] = a
    # A graph with a fixed batch pads the last chunk.
    fixed = export_onnx(checkpoint[0], tmp_path / "f.onnx", batch=2, check=False).path
    c = FaceEmbedder.from_onnx(fixed, device="cpu", batch_size=5).embed(crops)
    np.testing.assert_allclose(c, plain[False], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        FaceEmbedder.from_onnx(tmp_path / "none.onnx")


def test_embed_cli(
    checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crops = _crops(5, seed=6)
    names = ["b/2.png", "a/1.png", "a/0.jpg.png", "c.png", "b/10.png"]
    for name, crop in zip(names, crops, strict=True):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(tmp_path / "img" / name)
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    out = tmp_path / "o" / "feats.npy"
    assert embed_main([str(tmp_path / "img"), "--checkpoint", str(checkpoint[0]), "--out",
                       str(out), "--batch-size", "2", "--no-progress"]) == 0
    listed = (tmp_path / "o" / "feats.txt").read_text().splitlines()
    assert listed == sorted(names)
    feats = np.load(out)
    order = [names.index(n) for n in listed]
    expected = FaceEmbedder.from_checkpoint(checkpoint[0], device="cpu").embed(crops[order])
    np.testing.assert_allclose(feats, expected, atol=1e-6)
    assert embed_main([str(tmp_path / "img"), "--checkpoint", str(checkpoint[0]), "--out",
                       str(tmp_path / "feats.bin")]) == 2
    assert embed_main([str(tmp_path / "none"), "--checkpoint", str(checkpoint[0]), "--out",
                       str(out)]) == 2
    Image.fromarray(_crops(1, size=20)[0][:, :16]).save(tmp_path / "img" / "wide.png")
    assert embed_main([str(tmp_path / "img"), "--checkpoint", str(checkpoint[0]), "--out",
                       str(out)]) == 2
    assert "wide.png: 16x20 is not a square aligned crop" in capsys.readouterr().err
