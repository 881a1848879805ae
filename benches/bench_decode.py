"""The JPEG decoder per core against libjpeg-turbo (simplejpeg), issue "Performance": the f2c
reader (fused strict check + decode, ``rust/jpeg/decode.rs``) on one thread, measured in CPU
seconds, and on two threads in wall seconds, against simplejpeg decoding the same bytes on one
core. Two kinds of content at 112 and 224 px, JPEG q95 4:2:0 (Pillow's default): smooth
rendered faces, and the same faces with Gaussian noise of sigma 8 (high-entropy crops).

The two sides alternate chunk by chunk (the order flipping each chunk), so both see the same
load on a shared machine; ``extra_info`` holds img/s of each side and the ratios:

    pytest benches/bench_decode.py --benchmark-enable              # one small case (smoke)
    pytest benches/bench_decode.py --benchmark-enable -m slow      # the figures of
                                                                   # benches/results/decoder-*.md
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from f2c.data import synthetic
from f2c.data.db import TrainingDbWriter
from f2c.data.sources import open_training_source

simplejpeg = pytest.importorskip("simplejpeg")

IMAGES = {112: 1024, 224: 512}
# Rows per read call: training-sized batches (each call wakes the decode threads once).
CHUNK = {112: 256, 224: 128}


def render_jpegs(size: int, count: int, noise: float) -> list[bytes]:
    """Synthetic face crops, plus Gaussian noise of ``noise`` sigma, as JPEG q95."""
    rng = np.random.default_rng(size)
    ident = synthetic.sample_identities(rng, 16)
    nuis = synthetic.sample_nuisance(rng, count)
    owners = np.arange(count) % 16
    out = []
    for start in range(0, count, 64):
        rows = np.arange(start, min(start + 64, count))
        images = synthetic.render_identity_images(
            synthetic._take(ident, owners[rows]), synthetic._take(nuis, rows), size, rng=rng
        )
        for image in images:
            if noise:
                noisy = image.astype(np.float32) + rng.normal(0, noise, image.shape)
                image = np.clip(noisy, 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=95)
            out.append(buffer.getvalue())
    return out


def build(folder: Path, jpegs: list[bytes]) -> Path:
    with TrainingDbWriter(folder, [f"id{i}" for i in range(16)]) as writer:
        for i, data in enumerate(jpegs):
            writer.add(f"{i:07d}", i % 16, data)
    return folder


def decode_all(jpegs: list[bytes], out: np.ndarray) -> None:
    """libjpeg-turbo through simplejpeg, each image into its slot of ``out``."""
    for i, data in enumerate(jpegs):
        out[i] = simplejpeg.decode_jpeg(data, colorspace="RGB")


def compare(folder: Path, jpegs: list[bytes], size: int, chunk: int, rounds: int) -> dict[str, Any]:
    """img/s of simplejpeg (one core), the reader on one thread (CPU time) and on two threads
    (wall time), alternating chunk by chunk."""
    one = open_training_source(folder, num_threads=1)
    two = open_training_source(folder, num_threads=2)
    out = np.empty((chunk, size, size, 3), np.uint8)
    spent = {
        "simplejpeg_cpu": 0.0,
        "f2c_1thread_cpu": 0.0,
        "simplejpeg_wall": 0.0,
        "f2c_2threads_wall": 0.0,
    }
    images = 0
    for round_ in range(rounds):
        for start in range(0, len(jpegs), chunk):
            rows = np.arange(start, start + chunk)
            batch = jpegs[start : start + chunk]
            runs: dict[str, Callable[[], Any]] = {
                "simplejpeg": lambda batch=batch: decode_all(batch, out),
                "f2c_1thread": lambda rows=rows: one.read(rows),
                "f2c_2threads": lambda rows=rows: two.read(rows),
            }
            flip = (round_ + start // chunk) % 2 == 1
            for (a, b), clock, suffix in [
                (("simplejpeg", "f2c_1thread"), time.process_time, "cpu"),
                (("simplejpeg", "f2c_2threads"), time.perf_counter, "wall"),
            ]:
                for name in (b, a) if flip else (a, b):
                    begin = clock()
                    runs[name]()
                    spent[f"{name}_{suffix}"] += clock() - begin
            images += chunk
    rates = {name: images / seconds for name, seconds in spent.items()}
    return {
        **{f"{name}_img_per_s": round(rate) for name, rate in rates.items()},
        "f2c_1thread_over_simplejpeg": round(rates["f2c_1thread_cpu"] / rates["simplejpeg_cpu"], 3),
        "f2c_2threads_over_simplejpeg_1core": round(
            rates["f2c_2threads_wall"] / rates["simplejpeg_wall"], 3
        ),
        "mean_jpeg_bytes": round(float(np.mean([len(j) for j in jpegs]))),
    }


def run_case(
    benchmark: Any, tmp_path: Path, size: int, noise: float, count: int, rounds: int
) -> None:
    jpegs = render_jpegs(size, count, noise)
    folder = build(tmp_path / "db", jpegs)
    decoded = open_training_source(folder, num_threads=1).read(np.arange(count))
    # The decoder agrees with libjpeg-turbo before it is timed.
    for image, data in zip(decoded[:8], jpegs[:8], strict=True):
        reference = simplejpeg.decode_jpeg(data, colorspace="RGB")
        assert np.abs(image.astype(int) - reference.astype(int)).max() <= 3
    chunk = min(CHUNK[size], count)
    info = benchmark.pedantic(
        compare, args=(folder, jpegs, size, chunk, rounds), rounds=1, iterations=1
    )
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(
        {"size": size, "noise_sigma": noise, "images": count, "rounds": rounds}
    )


@pytest.mark.benchmark(group="decoder")
def bench_decode_small(benchmark: Any, tmp_path: Path) -> None:
    run_case(benchmark, tmp_path, 112, 8.0, 64, 1)


@pytest.mark.slow
@pytest.mark.benchmark(group="decoder")
@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("noise", [0.0, 8.0], ids=["smooth", "noise8"])
def bench_decode(benchmark: Any, tmp_path: Path, size: int, noise: float) -> None:
    run_case(benchmark, tmp_path, size, noise, IMAGES[size], 5)
