"""FaceEmbedder.embed on the CPU against a bare ``torch.inference_mode()`` forward.

Both see the same backbone and batch: the bare forward gets an already normalised float
``[B, 3, S, S]`` tensor, ``embed`` gets the uint8 ``[B, S, S, 3]`` crops and does everything a
user needs (normalisation, batching, L2 normalisation, numpy out). Target: ``embed`` at least
0.9x the bare images/s. The ONNX path (``FaceEmbedder.from_onnx`` on the exported graph,
onnxruntime with as many threads as torch) is reported beside it when the export extra is
installed. Rates are from the fastest round, in wall time and in this process's CPU time. The
two torch variants run back to back in every round and the ratio is the median over rounds of
the per-round ratio, so a load change on a shared machine (where a process may get half a core)
hits both sides of a pair alike; the target is checked on the CPU-time ratio.

Default: a small smoke run (tinyfacenet at 64 px). ``-m slow``: tinyfacenet at 64 px,
mobilefacenet and ir50 at 112 px, printed as a Markdown table:

    python -m pytest benches/bench_embed.py -m slow -s -p no:cacheprovider
"""

from __future__ import annotations

import statistics
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
FULL = [("tinyfacenet", 64, 64, 40), ("mobilefacenet", 112, 32, 15), ("ir50", 112, 16, 7)]
TARGET = 0.9


def _seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


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
        "bare": batch / min(w for w, _ in bare_t),
        "embed": batch / min(w for w, _ in ours_t),
        "bare_cpu": batch / min(c for _, c in bare_t),
        "embed_cpu": batch / min(c for _, c in ours_t),
    }
    result["ratio"] = statistics.median(b[0] / o[0] for b, o in zip(bare_t, ours_t, strict=True))
    result["cpu_ratio"] = statistics.median(
        b[1] / o[1] for b, o in zip(bare_t, ours_t, strict=True))
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
    result["onnx"] = batch / min(w for w, _ in onnx_t)
    result["onnx_cpu"] = batch / min(c for _, c in onnx_t)
    return result


def _report(rows: list[tuple[str, int, int, dict[str, float]]]) -> str:
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "img/s by wall clock (by this process's CPU time in brackets)",
        "",
        "| backbone | input | batch | bare forward | FaceEmbedder.embed | embed / bare, paired "
        "| ONNX (onnxruntime) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, batch, r in rows:
        onnx = f"{r['onnx']:.1f} ({r['onnx_cpu']:.1f})" if "onnx" in r else "n/a"
        lines.append(f"| {name} | {size} | {batch} | {r['bare']:.1f} ({r['bare_cpu']:.1f}) | "
                     f"{r['embed']:.1f} ({r['embed_cpu']:.1f}) | {r['ratio']:.3f} "
                     f"({r['cpu_ratio']:.3f}) | {onnx} |")
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
        assert r["cpu_ratio"] >= TARGET, (
            f"{name}: embed at {r['cpu_ratio']:.3f}x the bare forward (CPU time)")
