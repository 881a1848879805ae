"""Export a trained backbone to ONNX, in the form insightface's model zoo recognises.

    python -m f2c.export --checkpoint runs/f2c-ir50 --out ir50.onnx [--net probe|gallery]
        [--batch dynamic|N] [--opset 18]

The graph has one input ``input`` ``[N, 3, S, S]`` (float32 RGB, ``(x − 127.5) / 127.5``) and
one output ``embedding`` ``[N, D]`` (raw, not L2-normalised): docs/design.md §3. That input
convention is exactly f2c's own (``f2c.data.transforms.normalize`` maps uint8 x to
``x · 2/255 − 1``), so the exported graph is the backbone alone — no normalisation node, which
also keeps insightface from mistaking it for an MXNet model that normalises internally. After
export the file is run with onnxruntime on the same batch as PyTorch; the export fails unless
every row's cosine similarity is at least 0.99999.

insightface's model zoo routes a graph to its recognition model by the input side (112, or
≥ 112 and a multiple of 16 in newer versions), so backbones trained at other sizes export fine
but must be loaded by hand there. Needs the optional ``export`` extra (``onnx``, ``onnxscript``,
``onnxruntime``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f2c.cli import UserError, add_debug_option, positive_int, run_cli
from f2c.data.transforms import normalize
from f2c.models import LoadedModel, ModelSpec, load_backbone

__all__ = [
    "INPUT_NAME",
    "MIN_COSINE",
    "OUTPUT_NAME",
    "ExportError",
    "ExportResult",
    "Parity",
    "check_parity",
    "export_module",
    "export_onnx",
    "main",
]

PROG = "python -m f2c.export"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
MIN_COSINE = 0.99999
DEFAULT_OPSET = 18
NORMALISATION = "RGB, (x - 127.5) / 127.5"


class ExportError(UserError, RuntimeError):
    """The export failed, or the exported graph does not reproduce the PyTorch outputs."""


@dataclass(frozen=True)
class Parity:
    """onnxruntime vs PyTorch on one batch."""

    rows: int
    min_cosine: float
    max_abs_diff: float
    max_abs_value: float  # largest |PyTorch output|, to put the difference in scale

    def __str__(self) -> str:
        relative = self.max_abs_diff / max(self.max_abs_value, 1e-30)
        return (f"{self.rows} rows: min cosine {self.min_cosine:.8f}, max |diff| "
                f"{self.max_abs_diff:.3g} (outputs up to {self.max_abs_value:.3g}, relative "
                f"{relative:.2g})")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    spec: ModelSpec
    net: str
    batch: int | None  # None: dynamic
    opset: int
    parity: Parity | None


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs {module!r}: pip install 'f2c[export]' (onnx, onnxscript, "
            f"onnxruntime)"
        ) from exc


def _sample_batch(size: int, rows: int, seed: int = 0) -> torch.Tensor:
    """Normalised random RGB images: the input range a real crop has."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (rows, size, size, 3), dtype=torch.uint8, generator=g)
    return normalize(images)


def export_module(
    module: torch.nn.Module,
    spec: ModelSpec,
    out: str | os.PathLike[str],
    *,
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``module`` (traced in eval mode on the CPU; its mode and device are restored) to
    ``out`` as a single-file ONNX graph."""
    _require("onnxscript")
    onnx = _require("onnx")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive or None (dynamic), got {batch}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    device = next(module.parameters()).device
    module.cpu().eval()
    example = _sample_batch(spec.size, batch or 2)
    dynamic = None if batch is not None else ({0: torch.export.Dim("batch")},)
    # The exporter warns once per torchvision operator it cannot register when torchvision is
    # absent; face backbones use none of them.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        torch.onnx.export(
            module, (example,), str(out), dynamo=True, external_data=False, optimize=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic,
            opset_version=opset, verbose=False,
        )
    except Exception as exc:  # the exporter raises many types; say which model failed
        raise ExportError(f"torch.onnx.export of {spec.backbone} failed: {exc}") from exc
    finally:
        registry_log.setLevel(level)
        module.to(device).train(was_training)
    model = onnx.load(str(out))
    props = {
        "f2c.backbone": spec.backbone,
        "f2c.embedding_size": str(spec.embedding_size),
        "f2c.input_size": str(spec.size),
        "f2c.input_normalisation": NORMALISATION,
        **(metadata or {}),
    }
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def check_parity(
    module: torch.nn.Module,
    onnx_path: str | os.PathLike[str],
    size: int,
    *,
    rows: int = 4,
    seed: int = 0,
    min_cosine: float = MIN_COSINE,
) -> Parity:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch on one batch; raise unless every
    row's cosine similarity is at least ``min_cosine``."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = _sample_batch(size, rows, seed)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            expected = module(x.to(next(module.parameters()).device)).float().cpu().numpy()
    finally:
        module.train(was_training)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"{onnx_path}: ONNX output {got.shape}, PyTorch {expected.shape}")
    e, g = expected.astype(np.float64), got.astype(np.float64)
    cos = (e * g).sum(1) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(g, axis=1),
                                      1e-30)
    parity = Parity(rows, float(cos.min()), float(np.abs(e - g).max()), float(np.abs(e).max()))
    if not parity.min_cosine >= min_cosine:
        raise ExportError(f"{onnx_path}: onnxruntime disagrees with PyTorch ({parity}; need "
                          f"cosine >= {min_cosine})")
    return parity


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    net: str = "probe",
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    backbone: str | None = None,
    embedding_size: int | None = None,
    check: bool = True,
) -> ExportResult:
    """Export ``net`` of a checkpoint (file or run folder) to ``out``; checked with onnxruntime.

    ``batch=None`` gives a dynamic batch dimension; an int fixes it.
    """
    loaded: LoadedModel = load_backbone(checkpoint, net=net, backbone=backbone,
                                        embedding_size=embedding_size)
    assert loaded.spec is not None
    path = export_module(loaded.module, loaded.spec, out, batch=batch, opset=opset,
                         metadata={"f2c.net": net, "f2c.checkpoint": Path(checkpoint).name})
    parity = check_parity(loaded.module, path, loaded.spec.size, rows=batch or 4) if check \
        else None
    return ExportResult(path, loaded.spec, net, batch, opset, parity)


def _batch_arg(text: str) -> int | None:
    """``--batch``: ``dynamic`` (None) or a fixed batch size."""
    return None if text == "dynamic" else positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a checkpoint file or a training run folder")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--net", choices=("probe", "gallery"), default="probe")
    p.add_argument("--batch", type=_batch_arg, default=None, metavar="dynamic|N",
                   help="batch dimension of the graph (default: dynamic)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--model", help="backbone name, if the checkpoint does not record it")
    p.add_argument("--embedding-size", type=positive_int)
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the onnxruntime parity check")
    add_debug_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m f2c.export``: 0 on success; a user error (a missing or unfit checkpoint, the
    export extra not installed, a failed parity check) prints one line and returns 2."""
    return run_cli(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    result = export_onnx(args.checkpoint, args.out, net=args.net, batch=args.batch,
                         opset=args.opset, backbone=args.model,
                         embedding_size=args.embedding_size, check=args.check)
    s = result.spec
    n = "N" if result.batch is None else str(result.batch)
    print(f"wrote {result.path}: {s.backbone} ({result.net}), input {INPUT_NAME} "
          f"[{n}, 3, {s.size}, {s.size}] float32 {NORMALISATION}, output {OUTPUT_NAME} "
          f"[{n}, {s.embedding_size}], opset {result.opset}")
    if result.parity is not None:
        print(f"onnxruntime vs PyTorch: {result.parity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
