"""FaceEmbedder.embed on the CPU against a bare ``torch.inference_mode()`` forward.

Both see the same backbone and batch: the bare forward gets an already normalised float
``[B, 3, S, S]`` tensor, ``embed`` gets the uint8 ``[B, S, S, 3]`` crops and does everything a
user needs (normalisation, batching, L2 normalisation, numpy out). Target: ``embed`` at least
0.9x the bare images/s. The ONNX path (``FaceEmbedder.from_onnx`` on the exported graph,
onnxruntime with as many threads as torch) is reported beside it when the export extra is
installed. The two torch variants alternate round by round and the fastest round of each
counts (on a shared machine slower rounds measure the other jobs), so a load change hits both
alike.

Default: a small smoke run (tinyfacenet at 64 px). ``-m slow``: tinyfacenet at 64 px,
mobilefacenet and ir50 at 112 px, printed as a Markdown table:

    python -m pytest benches/bench_embed.py -m slow -s -p no:cacheprovider
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from f2c import models
from f2c.data.transforms import normalize
from f2c.embedder import FaceEmbedder
from f2c.models import ModelSpec

SMALL = [("tinyfacenet", 64, 16, 9)]  # backbone, input size, batch, rounds
FULL = [("tinyfacenet", 64, 64, 15), ("mobilefacenet", 112, 32, 11), ("ir50", 112, 16, 7)]
TARGET = 0.9


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name: str, size: int, batch: int, rounds: int, tmp: Path) -> dict[str, float]:
    """Images/s of the bare forward, of ``embed`` and (if available) of the ONNX embedder."""
    torch.manual_seed(0)
    spec = ModelSpec(name, 512, size)
    module = models.build(spec).eval()
    crops = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    x = normalize(torch.from_numpy(crops))
    embedder = FaceEmbedder.from_module(module, spec, device="cpu", batch_size=batch)

    def bare() -> None:
        with torch.inference_mode():
            module(x)

    def ours() -> None:
        embedder.embed(crops)

    bare(), ours()  # warm-up: oneDNN picks its kernels on the first call
    bare_t, ours_t = [], []
    for _ in range(rounds):
        bare_t.append(_seconds(bare))
        ours_t.append(_seconds(ours))
    result = {
        "bare": batch / min(bare_t),
        "embed": batch / min(ours_t),
    }
    result["ratio"] = result["embed"] / result["bare"]
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return result
    from f2c.export import export_module

    path = export_module(module, spec, tmp / f"{name}.onnx")
    onnx_embedder = FaceEmbedder.from_onnx(path, device="cpu", batch_size=batch,
                                           threads=torch.get_num_threads())
    onnx_embedder.embed(crops)
    onnx_t = [_seconds(lambda: onnx_embedder.embed(crops)) for _ in range(rounds)]
    result["onnx"] = batch / min(onnx_t)
    return result


def _report(rows: list[tuple[str, int, int, dict[str, float]]]) -> str:
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| backbone | input | batch | bare forward img/s | FaceEmbedder.embed img/s | ratio "
        "| ONNX (onnxruntime) img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, batch, r in rows:
        onnx = f"{r['onnx']:.1f}" if "onnx" in r else "n/a"
        lines.append(f"| {name} | {size} | {batch} | {r['bare']:.1f} | {r['embed']:.1f} | "
                     f"{r['ratio']:.3f} | {onnx} |")
    return "\n".join(lines)


def _run(grid: list[tuple[str, int, int, int]], tmp: Path) -> list[tuple[str, int, int,
                                                                           dict[str, float]]]:
    rows = []
    for name, size, batch, rounds in grid:
        rows.append((name, size, batch, measure(name, size, batch, rounds, tmp)))
    print("\n" + _report(rows))
    return rows


def bench_embed_small(tmp_path: Path) -> None:
    """Smoke run: every path works and gives positive rates (no timing assertion)."""
    for *_, r in _run(SMALL, tmp_path):
        assert r["bare"] > 0 and r["embed"] > 0


@pytest.mark.slow
def bench_embed_full(tmp_path: Path) -> None:
    rows = _run(FULL, tmp_path)
    for name, *_, r in rows:
        assert r["ratio"] >= TARGET, f"{name}: embed at {r['ratio']:.3f}x the bare forward"
