"""IJB-B and IJB-C 1:1 template verification from insightface's meta files.

Layout (see ``evaluation/README.md``; ``<p>`` is ``ijbc`` or ``ijbb``)::

    <root>/meta/<p>_face_tid_mid.txt         image_name template_id media_id   (one per image)
    <root>/meta/<p>_template_pair_label.txt  template_a template_b 1|0         (one per pair)
    <root>/meta/<p>_name_5pts_score.txt      image_name x1 y1 ... x5 y5 score  (optional)
    <root>/images/<image_name>               aligned crops at the network's input size

The two sets differ only in these names (and, for 1:N, in their gallery names:
:class:`IjbLayout`). Template feature = L2-normalise(Σ over the template's media of the mean of
that medium's image features). Media are keyed by (template, media id), as in insightface.
Pooling is two ``index_add`` reductions; there is no per-template Python loop. Optional
choices, each reported: L2-normalising image features before pooling (insightface's default
keeps their norms), and weighting image features by the detector score.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from f2c.evaluation.errors import InputError
from f2c.evaluation.metrics import roc_curve, tar_at_fars

__all__ = [
    "IJBB",
    "IJBC",
    "IJBC_FARS",
    "IjbLayout",
    "IjbcMeta",
    "evaluate_ijbc_features",
    "pool_templates",
    "read_ijb_meta",
    "read_ijbc_meta",
    "read_table",
    "score_template_pairs",
]

IJBC_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class IjbLayout:
    """Where one IJB release keeps its protocol files (paths relative to its root)."""

    title: str  # "IJB-C"
    prefix: str  # "ijbc": meta files are meta/<prefix>_*
    galleries: tuple[str, ...]  # 1:N gallery names: meta/<prefix>_1N_gallery_<name>.csv

    @property
    def tid_mid(self) -> str:
        return f"meta/{self.prefix}_face_tid_mid.txt"

    @property
    def pairs(self) -> str:
        return f"meta/{self.prefix}_template_pair_label.txt"

    @property
    def scores(self) -> str:
        return f"meta/{self.prefix}_name_5pts_score.txt"

    def gallery(self, name: str) -> str:
        return f"meta/{self.prefix}_1N_gallery_{name}.csv"

    @property
    def probes(self) -> str:
        return f"meta/{self.prefix}_1N_probe_mixed.csv"


IJBC = IjbLayout("IJB-C", "ijbc", ("G1", "G2"))
IJBB = IjbLayout("IJB-B", "ijbb", ("S1", "S2"))


def _line_problem(line: str, kinds: Sequence[str]) -> str | None:
    """What is wrong with one line of a meta table, or None. Fields are separated by exactly
    one space and never quoted (insightface's files); anything else is refused rather than
    guessed at, since a misread name or id would silently change the protocol."""
    line = line.removesuffix("\n").removesuffix("\r")
    if not line:
        return "empty line"
    if "\t" in line:
        return f"a tab in {line!r} (fields are separated by single spaces)"
    if '"' in line or "'" in line:
        return f"a quote in {line!r} (fields are not quoted)"
    parts = line.split(" ")
    if "" in parts:
        return f"a leading, trailing or doubled space in {line!r}"
    if len(parts) != len(kinds):
        return f"expected {len(kinds)} fields, got {len(parts)}: {line!r}"
    for value, kind in zip(parts, kinds, strict=True):
        try:
            int(value) if kind == "int" else float(value) if kind == "float" else None
        except ValueError:
            return f"{value!r} is not an {kind}: {line!r}"
    return None


def _first_bad_line(path: Path, kinds: Sequence[str]) -> str:
    """Locate the first malformed line (slow path, only after the fast reader failed)."""
    lineno = 0
    with open(path, newline="") as f:
        for lineno, line in enumerate(f, start=1):
            problem = _line_problem(line, kinds)
            if problem is not None:
                return f"{path}:{lineno}: {problem}"
    return f"{path}: no rows" if lineno == 0 else f"{path}: unreadable table"


def read_table(path: str | os.PathLike[str], kinds: Sequence[str]) -> list[np.ndarray]:
    """Read a table with columns of ``kinds`` ("str", "int", "float"), separated by single
    spaces, unquoted.

    Fast (polars) on well-formed input; on a malformed file (a tab, a quote, a stray space, a
    wrong field count or type, an empty line) the error names the file and the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file not found: {path}")
    dtypes = {"str": pl.String, "int": pl.Int64, "float": pl.Float64}
    schema = {f"c{i}": dtypes[k] for i, k in enumerate(kinds)}
    try:
        df = pl.read_csv(path, separator=" ", has_header=False, schema=schema, quote_char=None,
                         truncate_ragged_lines=False)
    except Exception as e:  # polars raises several error types for bad input
        raise InputError(_first_bad_line(path, kinds)) from e
    text = [c for c, k in zip(schema, kinds, strict=True) if k == "str"]
    if df.null_count().sum_horizontal().item() or any(
        df[c].str.contains("[\t\"']").any() for c in text
    ):
        raise InputError(_first_bad_line(path, kinds))
    if df.height == 0:
        raise InputError(f"{path}: no rows")
    return [df[c].to_numpy(writable=True) for c in schema]


@dataclass
class IjbcMeta:
    """An IJB-B or IJB-C 1:1 protocol as read from its meta files."""

    image_names: np.ndarray  # str [N]
    templates: np.ndarray  # int64 [N]
    medias: np.ndarray  # int64 [N]
    pair_a: np.ndarray  # int64 [P] template ids
    pair_b: np.ndarray
    same: np.ndarray  # bool [P]
    detector_scores: np.ndarray | None  # float64 [N], aligned with image_names
    root: str
    layout: IjbLayout = IJBC


def read_ijb_meta(root: str | os.PathLike[str], layout: IjbLayout = IJBC) -> IjbcMeta:
    """Read the 1:1 meta files of ``layout`` under ``root``."""
    root = Path(root)
    tid_mid, pairs, score_file = root / layout.tid_mid, root / layout.pairs, root / layout.scores
    names, tids, mids = read_table(tid_mid, ["str", "int", "int"])
    a, b, label = read_table(pairs, ["int", "int", "int"])
    if not np.isin(label, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(label, (0, 1)))[0])
        raise InputError(f"{pairs}:{bad + 1}: label must be 0 or 1, got {label[bad]}")
    scores = None
    if score_file.is_file():
        cols = read_table(score_file, ["str"] + ["float"] * 11)
        if not np.array_equal(cols[0], names):
            raise InputError(
                f"{score_file}: image names differ from {tid_mid} (order or content)"
            )
        scores = cols[-1]
        bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
        if len(bad):
            raise InputError(f"{score_file}:{bad[0] + 1}: detector score {scores[bad[0]]} is not "
                             f"a finite number >= 0")
    return IjbcMeta(names, tids, mids, a, b, label.astype(bool), scores, str(root), layout)


def read_ijbc_meta(root: str | os.PathLike[str]) -> IjbcMeta:
    """Read IJB-C's 1:1 meta files (:func:`read_ijb_meta` with :data:`IJBC`)."""
    return read_ijb_meta(root, IJBC)


def pool_templates(
    features: np.ndarray | torch.Tensor,
    templates: np.ndarray,
    medias: np.ndarray,
    *,
    normalize_images: bool = False,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Template features; returns (sorted unique template ids, float32 ``[T, D]`` L2-normalised).

    Image features are optionally L2-normalised and/or multiplied by ``weights`` (e.g. detector
    scores) before pooling.
    """
    f = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    f = f.to(torch.float32)
    n = f.shape[0]
    if len(templates) != n or len(medias) != n:
        raise ValueError(f"{n} features but {len(templates)} templates / {len(medias)} media")
    if normalize_images:
        f = torch.nn.functional.normalize(f, dim=1)
    if weights is not None:
        f = f * torch.as_tensor(np.asarray(weights), dtype=torch.float32).unsqueeze(1)
    tids, t_inv = np.unique(templates, return_inverse=True)
    _, m_inv = np.unique(medias, return_inverse=True)
    n_media_ids = int(m_inv.max()) + 1
    # One group per (template, medium); the key orders groups by template.
    keys, g_inv = np.unique(t_inv.astype(np.int64) * n_media_ids + m_inv, return_inverse=True)
    g_inv_t = torch.from_numpy(g_inv.astype(np.int64))
    sums = torch.zeros(len(keys), f.shape[1], dtype=torch.float32).index_add_(0, g_inv_t, f)
    counts = torch.bincount(g_inv_t, minlength=len(keys)).to(torch.float32).unsqueeze(1)
    media_means = sums / counts
    group_template = torch.from_numpy((keys // n_media_ids).astype(np.int64))
    tfeat = torch.zeros(len(tids), f.shape[1], dtype=torch.float32)
    tfeat.index_add_(0, group_template, media_means)
    return tids, torch.nn.functional.normalize(tfeat, dim=1)


def _template_rows(tids: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    """Row of each queried template id in the sorted ``tids`` (a lookup table when the ids are
    compact, else a binary search); unknown ids are an error naming the pair."""
    query = np.asarray(query, dtype=np.int64)
    lo, hi = int(tids[0]), int(tids[-1])
    if lo >= 0 and hi < max(1 << 26, 16 * len(tids)):
        lut = np.full(hi + 2, -1, dtype=np.int64)
        lut[tids] = np.arange(len(tids))
        clipped = np.clip(query, 0, hi + 1)
        rows = lut[clipped]
        missing = (rows < 0) | (clipped != query)
    else:
        rows = np.minimum(np.searchsorted(tids, query), len(tids) - 1)
        missing = tids[rows] != query
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise InputError(f"{what}: template {query[i]} (pair {i + 1}) has no images")
    return rows


def _compact(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct rows, index of each row among them) in O(len + n), without a sort."""
    present = np.bincount(rows, minlength=n) > 0
    distinct = np.flatnonzero(present)
    remap = np.cumsum(present) - 1
    return distinct, remap[rows]


def score_template_pairs(
    tids: np.ndarray,
    template_features: torch.Tensor,
    pair_a: np.ndarray,
    pair_b: np.ndarray,
    *,
    method: Literal["auto", "gemm", "gather"] = "auto",
    block: int = 2048,
    source: str = "pairs",
) -> np.ndarray:
    """Cosine score of each template pair (features already normalised); float32 ``[P]``.

    ``gather`` takes the row-wise dot product of the two templates of each pair (memory-bound:
    ~24·D bytes of traffic per pair). ``gemm`` computes the (distinct a) × (distinct b) score
    matrix in row blocks and picks the pairs out of it (2·D flops per cell, at ~100x the rate) —
    far cheaper when pairs are dense over the templates, as in IJB-C 1:1 (15.7M pairs over
    ~23k × 23k templates). ``auto`` compares the two estimates.
    """
    n = len(tids)
    ra = _template_rows(tids, pair_a, source)
    rb = _template_rows(tids, pair_b, source)
    tf = template_features.to(torch.float32)
    ua, a_inv = _compact(ra, n)
    ub, b_inv = _compact(rb, n)
    if method == "auto":
        method = "gemm" if len(ua) * len(ub) < 100 * len(ra) else "gather"
    out = np.empty(len(ra), dtype=np.float32)
    if method == "gather":
        step = 1 << 16
        for s in range(0, len(ra), step):
            a = tf[torch.from_numpy(ra[s : s + step])]
            b = tf[torch.from_numpy(rb[s : s + step])]
            out[s : s + step] = (a * b).sum(1).numpy()
        return out
    if method != "gemm":
        raise ValueError(f"unknown method {method!r}")
    fa = tf[torch.from_numpy(ua)]
    fb_t = tf[torch.from_numpy(ub)].T.contiguous()
    # Pairs grouped by row block of a (a stable counting sort on the block number), so each
    # block's pairs are one slice of ``order``.
    blk = a_inv // block
    n_blocks = (len(ua) + block - 1) // block
    counts = np.bincount(blk, minlength=n_blocks)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    order = np.argsort(blk.astype(np.int16) if n_blocks < 2**15 else blk, kind="stable")
    buf = torch.empty(min(block, len(ua)), len(ub), dtype=torch.float32)
    for i, start in enumerate(range(0, len(ua), block)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if lo == hi:
            continue
        rows = fa[start : start + block]
        s = torch.mm(rows, fb_t, out=buf[: rows.shape[0]])
        sel = order[lo:hi]
        flat = (a_inv[sel] - start) * len(ub) + b_inv[sel]
        out[sel] = s.reshape(-1)[torch.from_numpy(flat)].numpy()
    return out


def _check_weights(weights: np.ndarray, meta: IjbcMeta) -> None:
    """Detector scores that would zero whole templates: all zero is an error (every template
    feature would be the zero vector), some templates at zero a warning."""
    source = Path(meta.root) / meta.layout.scores
    if not (weights > 0).any():
        raise InputError(f"{source}: every detector score is 0, so every weighted template "
                         f"would be a zero vector; pass --ijb-no-detector-scores")
    _, t_inv = np.unique(meta.templates, return_inverse=True)
    zero = int((np.bincount(t_inv, weights=weights) == 0).sum())
    if zero:
        warnings.warn(f"{source}: {zero} template(s) have only zero detector scores; their "
                      f"features are zero vectors and score 0 against every template",
                      stacklevel=3)


def evaluate_ijbc_features(
    features: np.ndarray | torch.Tensor,
    meta: IjbcMeta,
    *,
    fars: Sequence[float] = IJBC_FARS,
    normalize_images: bool = False,
    use_detector_scores: bool = True,
    keep_roc: bool = False,
) -> dict[str, Any]:
    """Pool templates, score every pair, and report TAR at each FAR, exact and roc-nearest.

    Returns ``tar@far`` and ``tar@far_roc_nearest`` (dicts FAR → TAR), ``pairs``, ``genuine``,
    ``impostor``, ``templates``, ``detector_scores`` (whether they were used) and, with
    ``keep_roc``, ``roc`` (fpr, tpr arrays for plotting).
    """
    weights = meta.detector_scores if use_detector_scores else None
    if weights is not None:
        _check_weights(weights, meta)
    tids, tfeat = pool_templates(
        features, meta.templates, meta.medias, normalize_images=normalize_images, weights=weights
    )
    scores = score_template_pairs(
        tids, tfeat, meta.pair_a, meta.pair_b, source=str(Path(meta.root) / meta.layout.pairs)
    )
    exact = tar_at_fars(scores, meta.same, fars)
    roc = roc_curve(scores, meta.same, drop_intermediate=True)  # as insightface
    nearest = roc.tar_nearest(fars)
    out: dict[str, Any] = {
        "tar@far": dict(zip(fars, exact, strict=True)),
        "tar@far_roc_nearest": dict(zip(fars, nearest, strict=True)),
        "pairs": int(len(scores)),
        "genuine": int(meta.same.sum()),
        "impostor": int((~meta.same).sum()),
        "templates": int(len(tids)),
        "detector_scores": weights is not None,
        "normalize_images": normalize_images,
    }
    if keep_roc:
        out["roc"] = (roc.fpr, roc.tpr)
    return out
