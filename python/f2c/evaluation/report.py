"""Results as one table: a polars DataFrame with one row per model × benchmark × metric.

Every choice that moves a number is a column (``protocol``, ``flip``, ``data``), so rows from
different runs stay comparable. Written as CSV and Markdown; ROC curves as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "SCHEMA",
    "ResultTable",
    "plot_roc",
    "to_markdown",
    "write_csv",
    "write_markdown",
    "write_results",
]

SCHEMA: dict[str, Any] = {
    "model": pl.String,  # checkpoint / net that produced the features
    "benchmark": pl.String,  # lfw, cfp_fp, ytf, ijbc, megaface, ...
    "metric": pl.String,  # accuracy, tar@far=1e-04, rank1, cmc@5, ...
    "value": pl.Float64,
    "std": pl.Float64,  # over folds where the protocol has folds, else null
    "n": pl.Int64,  # pairs / probe searches behind the value
    "flip": pl.Boolean,  # flip-sum test-time augmentation
    "protocol": pl.String,  # folds and threshold rule, pooling, FAR rule, ...
    "data": pl.String,  # source file(s); for MegaFace the distractor list used
}


class ResultTable:
    """Accumulates result rows; :meth:`frame` returns them with the fixed :data:`SCHEMA`."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def add(
        self,
        *,
        model: str,
        benchmark: str,
        metric: str,
        value: float,
        std: float | None = None,
        n: int | None = None,
        flip: bool | None = None,
        protocol: str = "",
        data: str = "",
    ) -> None:
        self._rows.append(
            dict(model=model, benchmark=benchmark, metric=metric, value=float(value),
                 std=None if std is None else float(std), n=n, flip=flip,
                 protocol=protocol, data=data)
        )

    def __len__(self) -> int:
        return len(self._rows)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self._rows, schema=SCHEMA, orient="row")


def _replace_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """``write`` a temporary file next to ``path``, flush it to disk, then rename it over
    ``path``: a reader (or a crash) sees the old file or the new one, never a cut-off one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(df: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    """``df`` as CSV, replacing ``path`` atomically."""
    _replace_atomically(path, df.write_csv)


def _cell(v: Any, column: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if column in ("value", "std"):
            return f"{100 * v:.2f}"  # percentages, as benchmark tables print them
        return f"{v:g}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pl.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; ``value`` and ``std`` are printed as percentages."""
    cols = df.columns
    head = [f"{c} (%)" if c in ("value", "std") else c for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        lines.append("| " + " | ".join(_cell(v, c) for v, c in zip(row, cols, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(df: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    """:func:`to_markdown` of ``df``, replacing ``path`` atomically."""
    text = to_markdown(df)
    _replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_results(out: str | os.PathLike[str], new: pl.DataFrame) -> pl.DataFrame:
    """Merge ``new`` into ``<out>/results.csv`` and rewrite it and ``<out>/results.md``.

    Rows of ``new`` replace earlier rows with the same model, benchmark and metric; other rows
    are kept, so several checkpoints can share one table. Returns the merged table.
    """
    out = Path(out)
    csv = out / "results.csv"
    merged = new
    if csv.exists():
        old = pl.read_csv(csv, schema=new.schema)
        key = ["model", "benchmark", "metric"]
        merged = pl.concat([old.join(new.select(key), on=key, how="anti"), new])
    write_csv(merged, csv)
    write_markdown(merged, out / "results.md")
    return merged


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ~``points`` ROC points, evenly spaced in log FPR (15M points plot the same)."""
    if len(fpr) <= points:
        return fpr, tpr
    grid = np.logspace(np.log10(max(fpr[fpr > 0].min(), 1e-12)), 0, points)
    idx = np.unique(np.clip(np.searchsorted(fpr, grid), 0, len(fpr) - 1))
    return fpr[idx], tpr[idx]


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    title: str = "ROC",
    fars: Sequence[float] = (),
    points: int = 2000,
) -> None:
    """ROC curves (TPR over log FPR) to a PNG, drawn on an Agg canvas (no display, and no
    change to pyplot's global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (fpr, tpr) in curves.items():
        x, y = _thin(np.asarray(fpr), np.asarray(tpr), points)
        keep = x > 0
        ax.plot(x[keep], y[keep], label=label, linewidth=1.2)
    for f in fars:
        ax.axvline(f, color="0.8", linewidth=0.6, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
