"""kv-file parsing: ``f2c.KvIndex`` (parse + labels + per-identity CSR) against parse-only
baselines (np.loadtxt, polars, pyarrow, a Python loop).

Files look like Glint360K's: 9-digit keys, contiguous labels, ~21 images per identity
(1M lines ≈ 15 MB, 17M lines ≈ 284 MB). The 17M case is marked slow:

    pytest benches/bench_kv.py --benchmark-enable            # 1M lines
    pytest benches/bench_kv.py --benchmark-enable -m slow    # 17M lines (+ peak memory)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import f2c

IMAGES_PER_IDENTITY = 17_000_000 / 360_000


def write_kv(path: Path, lines: int) -> Path:
    identities = max(1, round(lines / IMAGES_PER_IDENTITY))
    bounds = np.linspace(0, lines, identities + 1).astype(np.int64)
    labels = np.repeat(np.arange(identities), np.diff(bounds))
    frame = pl.DataFrame(
        {"key": pl.int_range(0, lines, eager=True).cast(pl.Utf8).str.zfill(9), "label": labels}
    )
    frame.write_csv(path, separator=" ", include_header=False)
    return path


def parse_loadtxt(path: Path) -> Any:
    return np.loadtxt(path, dtype=np.int64, usecols=1, delimiter=" ")


def parse_polars(path: Path) -> Any:
    return pl.read_csv(
        path, separator=" ", has_header=False, new_columns=["key", "label"],
        schema_overrides={"key": pl.Utf8, "label": pl.Int64},
    )


def parse_pyarrow(path: Path) -> Any:
    import pyarrow as pa
    from pyarrow import csv

    return csv.read_csv(
        path,
        read_options=csv.ReadOptions(column_names=["key", "label"], use_threads=False),
        parse_options=csv.ParseOptions(delimiter=" "),
        convert_options=csv.ConvertOptions(column_types={"key": pa.string(), "label": pa.int64()}),
    )


def parse_python(path: Path) -> Any:
    keys, labels = [], []
    with open(path) as f:
        for line in f:
            key, label = line.rsplit(" ", 1)
            keys.append(key)
            labels.append(int(label))
    return keys, labels


PARSERS: dict[str, Callable[[Path], Any]] = {
    "f2c.KvIndex": f2c.KvIndex,
    "pyarrow (1 thread)": parse_pyarrow,
    "polars": parse_polars,
    "np.loadtxt": parse_loadtxt,
    "python loop": parse_python,
}


@pytest.fixture(scope="module")
def kv_1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kv(tmp_path_factory.mktemp("kv") / "1m.kv", 1_000_000)


@pytest.fixture(scope="module")
def kv_17m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kv(tmp_path_factory.mktemp("kv") / "17m.kv", 17_000_000)


@pytest.mark.benchmark(group="kv 1M lines")
@pytest.mark.parametrize("parser", list(PARSERS))
def bench_kv_1m(benchmark: Any, kv_1m: Path, parser: str) -> None:
    result = benchmark.pedantic(PARSERS[parser], args=(kv_1m,), rounds=5, warmup_rounds=1)
    if parser == "f2c.KvIndex":
        assert len(result) == 1_000_000
        assert result.identity_offsets[-1] == 1_000_000


@pytest.mark.slow
@pytest.mark.benchmark(group="kv 17M lines")
@pytest.mark.parametrize("parser", [p for p in PARSERS if p != "python loop"])
def bench_kv_17m(benchmark: Any, kv_17m: Path, parser: str) -> None:
    rounds = 2 if parser == "np.loadtxt" else 5
    result = benchmark.pedantic(PARSERS[parser], args=(kv_17m,), rounds=rounds, warmup_rounds=1)
    if parser == "f2c.KvIndex":
        assert len(result) == 17_000_000
        memory = _peak_memory(kv_17m)
        benchmark.extra_info.update(memory)
        assert memory["keys_mb"] > 0 and memory["peak_rss_growth_mb"] <= memory["bound_mb"]


_MEMORY_PROBE = """
import json, sys
import f2c

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark to the current RSS
before = status("VmRSS")
index = f2c.KvIndex(sys.argv[1])
peak = status("VmHWM") - before
outputs = index.labels.nbytes + index.identity_rows.nbytes + index.identity_offsets.nbytes
# The index keeps its own copy of the keys: their bytes plus one u32 end offset per row.
import numpy as np
text = np.fromfile(sys.argv[1], dtype=np.uint8)
line_starts = np.concatenate([[0], np.flatnonzero(text == 10)[:-1] + 1])
spaces = np.flatnonzero(text == 32)
key_bytes = int((spaces - line_starts).sum()) if len(spaces) == len(line_starts) else -1
print(json.dumps({"peak_rss_growth_mb": peak, "label_csr_mb": outputs / 2**20,
                  "keys_mb": (key_bytes + 4 * len(index)) / 2**20}))
"""


def _peak_memory(path: Path) -> dict[str, float]:
    """Peak RSS growth of a process indexing ``path`` (Linux), with the file size: the mapped
    file counts, so the bound is file size + keys + labels + CSR."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)], capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    info["file_mb"] = path.stat().st_size / 2**20
    info["bound_mb"] = info["file_mb"] + info["keys_mb"] + info["label_csr_mb"]
    return info
