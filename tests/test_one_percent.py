"""benches/one_percent.py end to end: a tiny CPU smoke run in the default suite, the full
experiment under ``-m slow``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benches" / "one_percent.py"
CONFIGS = ["f2c-1%", "f2c-10%", "fc", "pfc-0.1"]


def _run(tmp_path: Path, *options: str, timeout: int) -> dict[str, dict[str, str]]:
    out = tmp_path / "one-percent"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--work", str(tmp_path / "work"),
         "--threads", "1", *options],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for suffix in (".csv", ".md", ".png"):
        assert out.with_suffix(suffix).stat().st_size > 0
    with out.with_suffix(".csv").open() as f:
        rows = {row["config"]: row for row in csv.DictReader(f)}
    assert list(rows) == CONFIGS
    for config in CONFIGS:
        summary = json.loads((out / f"summary-{config}.json").read_text())
        assert summary["status"] == "finished"
    markdown = out.with_suffix(".md").read_text()
    assert all(f"| {config} |" in markdown for config in CONFIGS)
    return rows


def _check_shapes(rows: dict[str, dict[str, str]], classes: int, dim: int, pairs: int) -> None:
    """Pool sizes, evaluation size and the exactly countable head state."""
    assert int(rows["f2c-1%"]["pool_size"]) == round(0.01 * classes)
    assert int(rows["f2c-10%"]["pool_size"]) == round(0.1 * classes)
    assert rows["fc"]["pool_size"] == ""
    for row in rows.values():
        assert int(row["num_classes"]) == classes
        assert int(row["pairs"]) == pairs
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and float(row["accuracy_std"]) >= 0.0
        assert float(row["head_step_ms"]) > 0.0
    # FC heads: the centres and their momentum; F²C: the two-row pool, far smaller.
    centres_mb = classes * dim * 4 / 2**20
    assert float(rows["fc"]["head_state_mb"]) == pytest.approx(2 * centres_mb)
    assert float(rows["pfc-0.1"]["head_state_mb"]) == pytest.approx(2 * centres_mb)
    pool_mb = 2 * round(0.01 * classes) * dim * 4 / 2**20
    assert pool_mb <= float(rows["f2c-1%"]["head_state_mb"]) < 1.1 * pool_mb + 0.01


def test_smoke_runs_every_configuration(tmp_path: Path) -> None:
    rows = _run(tmp_path, "--smoke", "--jobs", "2", timeout=600)
    _check_shapes(rows, classes=600, dim=32, pairs=100)
    for row in rows.values():
        assert int(row["steps"]) == 3


@pytest.mark.slow
def test_full_experiment(tmp_path: Path) -> None:
    """The committed experiment's sizes (about 35 min on a quiet 2-core machine)."""
    rows = _run(tmp_path, timeout=4 * 3600)
    _check_shapes(rows, classes=5_000, dim=128, pairs=3_000)
    for config, row in rows.items():
        summary = json.loads(
            (tmp_path / "one-percent" / f"summary-{config}.json").read_text()
        )
        # Every head learned something: above raw-pixel cosine on the held-out identities.
        assert float(row["accuracy"]) > summary["pixel_baseline_accuracy"], config
