"""Run outputs on rank 0: per-step metrics (JSONL + CSV), a loss/accuracy plot, the summary."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "format_summary", "plot_metrics", "write_summary"]


class MetricsLog:
    """Append-only ``metrics.jsonl`` in the run folder; one JSON object per row.

    Rows have a ``kind``: ``"train"`` (step, epoch, loss, lr, images/s, …) or ``"eval"``
    (held-out accuracy). On resume, rows written after the checkpoint's step are dropped so the
    log matches the continued trajectory.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in self.rows() if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row), allow_nan=True) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                # A torn last line after a crash: ignore it, anything else is corruption.
                if number == len(self.path.read_text(encoding="utf-8").splitlines()):
                    break
                raise ValueError(f"{self.path}:{number}: bad metrics row: {exc}") from exc
        return out

    def write_csv(self) -> Path:
        """``metrics.csv`` of the train rows (one column per key seen)."""
        rows = [r for r in self.rows() if r.get("kind") == "train"]
        path = self.path.with_suffix(".csv")
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return path


def plot_metrics(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """PNG with the training loss per step and the held-out accuracy per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    if evals:
        ax_acc.plot(
            [r["step"] for r in evals], [100 * r["held_out_accuracy"] for r in evals], "o-"
        )
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("held-out verification accuracy (%)")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_summary(summary: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir) / "summary.json"
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in summary.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A two-column text table of the summary's values."""
    width = max(len(k) for k in summary)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 24}"]
    lines += [f"{k:<{width}}  {_fmt(v)}" for k, v in summary.items()]
    return "\n".join(lines)
