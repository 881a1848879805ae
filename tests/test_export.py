"""ONNX export: the graph insightface's model zoo recognises, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_support import save_backbone

from f2c.data.transforms import normalize
from f2c.export import (
    INPUT_NAME,
    MIN_COSINE,
    OUTPUT_NAME,
    ExportError,
    check_parity,
    export_onnx,
    main,
)
from f2c.models import ModelSpec

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")



def test_training_normalisation_is_the_insightface_convention() -> None:
    """f2c trains on (x/255 − 0.5)/0.5; the ONNX input is (x − 127.5)/127.5: the same map, so
    nothing needs baking into the graph."""
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    ours = normalize(values.contiguous()).numpy()
    theirs = (np.arange(256, dtype=np.float64).reshape(16, 16) - 127.5) / 127.5
    assert np.abs(ours[0, 0] - theirs).max() < 1e-6 and np.abs(ours[0, 2] - theirs).max() < 1e-6


def _dims(value_info: object) -> list[int | str]:
    shape = value_info.type.tensor_type.shape  # type: ignore[attr-defined]
    return [d.dim_param or d.dim_value for d in shape.dim]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(
    ("name", "dim"),
    [("tinyfacenet", 32), ("mobilefacenet", 128), ("ir50", 64),
     pytest.param("ir100", 512, marks=pytest.mark.slow)],
)
def test_export_matches_pytorch(name: str, dim: int, tmp_path: Path) -> None:
    spec = ModelSpec(name, dim)  # native size: what the model zoo loads
    probe = save_backbone(tmp_path / "run" / "checkpoint.pt", spec)
    result = export_onnx(tmp_path / "run", tmp_path / f"{name}.onnx")
    parity = result.parity
    assert parity is not None and parity.min_cosine >= MIN_COSINE
    print(f"\n{name} @ {spec.size}px, {dim}-d: {parity}")

    model = onnx.load(str(result.path))
    graph = model.graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    assert _dims(graph.input[0]) == ["batch", 3, spec.size, spec.size]
    assert _dims(graph.output[0]) == ["batch", dim]
    meta = {p.key: p.value for p in model.metadata_props}
    assert ModelSpec.from_dict({k.removeprefix("f2c."): v for k, v in meta.items()
                                if k in ("f2c.backbone", "f2c.embedding_size",
                                         "f2c.input_size")}) == spec
    # insightface treats a graph whose first nodes include both a Sub and a Mul as normalising
    # internally (MXNet style) and would then feed raw pixels.
    first = [n.name for n in graph.node[:8]]
    assert not (any(n.startswith(("Sub", "_minus")) for n in first)
                and any(n.startswith(("Mul", "_mul")) for n in first))

    # A batch of one (not the export's example size, nor specialised away) agrees too.
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    x = normalize(torch.randint(0, 256, (1, spec.size, spec.size, 3), dtype=torch.uint8,
                                generator=g))
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.inference_mode():
        expected = probe(x).numpy()
    assert got.shape == (1, dim)
    assert _cosines(got, expected).min() >= MIN_COSINE


def test_fixed_batch_gallery_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = ModelSpec("tinyfacenet", 16, 32)
    save_backbone(tmp_path / "c.pt", spec)
    out = tmp_path / "g.onnx"
    assert main(["--checkpoint", str(tmp_path / "c.pt"), "--out", str(out), "--net", "gallery",
                 "--batch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "[3, 3, 32, 32]" in printed and "min cosine" in printed
    graph = onnx.load(str(out)).graph
    assert _dims(graph.input[0]) == [3, 3, 32, 32]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["f2c.net"] == "gallery"

    from f2c.models import load_backbone

    gallery = load_backbone(tmp_path / "c.pt", net="gallery").module
    probe = load_backbone(tmp_path / "c.pt", net="probe").module
    assert check_parity(gallery, out, 32, rows=3).min_cosine >= MIN_COSINE
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        check_parity(probe, out, 32, rows=3)  # the other net's weights: not the same function

    assert main(["--checkpoint", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "python -m f2c.export: error: checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "c.pt"), "--out", str(out), "--batch", "0"])
