"""1:N identification (IJB-C 1:N style): closed-set CMC and open-set TPIR at FPIR.

Probes and gallery entries are templates (one L2-normalised feature each) labelled with a
subject. A probe is *mated* when its subject has a gallery template, else *non-mated*.

* **Rank** of a mated probe = 1 + the number of gallery templates of *other* subjects scoring
  at least as high as its best mate template (ties count against it). CMC at rank r = fraction
  of mated probes with rank ≤ r.
* **TPIR at FPIR** (open set): with the non-mated probes' top-1 scores sorted in descending
  order and ``k = ⌊FPIR · N⌋``, the threshold ``t`` is the k-th of them (0-based); a non-mated
  probe raises an alarm iff its top-1 score is > ``t`` (so the achieved FPIR ≤ the target).
  TPIR = fraction of mated probes at rank 1 whose mate score is > ``t``.

IJB-C 1:N inputs (see ``evaluation/README.md``): ``meta/ijbc_1N_gallery_G1.csv``,
``meta/ijbc_1N_gallery_G2.csv``, ``meta/ijbc_1N_probe_mixed.csv``; IJB-B's are
``meta/ijbb_1N_gallery_S1.csv``, ``meta/ijbb_1N_gallery_S2.csv``, ``meta/ijbb_1N_probe_mixed.csv``
(:class:`f2c.evaluation.ijbc.IjbLayout`). Each has a header naming at least ``TEMPLATE_ID``,
``SUBJECT_ID``, ``FILENAME`` (and optionally ``SIGHTING_ID`` or ``MEDIA_ID`` as the medium;
without one every image is its own medium). Templates are pooled exactly as in 1:1
(:func:`f2c.evaluation.ijbc.pool_templates`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from f2c.evaluation.errors import InputError
from f2c.evaluation.ijbc import pool_templates

__all__ = ["TemplateList", "identification_metrics", "pool_template_list", "read_template_csv"]


def identification_metrics(
    gallery: torch.Tensor,
    gallery_subjects: np.ndarray,
    probes: torch.Tensor,
    probe_subjects: np.ndarray,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    block: int = 4096,
) -> dict[str, Any]:
    """CMC at ``ranks`` and TPIR at ``fpirs`` (definitions in the module docstring).

    Probes are scored against the gallery in blocks of ``block`` rows (never all at once).
    Returns ``cmc`` (dict rank → rate), ``tpir`` (dict FPIR → rate), ``mated``, ``non_mated``.
    """
    g_sub = np.asarray(gallery_subjects)
    p_sub = np.asarray(probe_subjects)
    if len(g_sub) != gallery.shape[0] or len(p_sub) != probes.shape[0]:
        raise ValueError("one subject per gallery template and per probe template is required")
    subjects, g_code = np.unique(g_sub, return_inverse=True)
    pos = np.searchsorted(subjects, p_sub)
    pos_c = np.minimum(pos, len(subjects) - 1)
    mated = subjects[pos_c] == p_sub
    p_code = np.where(mated, pos_c, -1)
    g_code_t = torch.from_numpy(g_code).to(gallery.device)
    rank = np.zeros(len(p_sub), dtype=np.int64)
    mate_score = np.full(len(p_sub), -np.inf)
    top1 = np.empty(len(p_sub))
    for s in range(0, len(p_sub), block):
        sc = probes[s : s + block].float() @ gallery.float().T  # [b, G]
        top1[s : s + block] = sc.amax(dim=1).double().cpu().numpy()
        code = torch.from_numpy(p_code[s : s + block]).to(gallery.device)
        is_mate = g_code_t.unsqueeze(0) == code.unsqueeze(1)  # [b, G]
        best = torch.where(is_mate, sc, torch.full_like(sc, -math.inf)).amax(dim=1)
        beats = ((sc >= best.unsqueeze(1)) & ~is_mate).sum(dim=1)
        rank[s : s + block] = (1 + beats).cpu().numpy()
        mate_score[s : s + block] = best.double().cpu().numpy()
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    if n_mated == 0:
        raise InputError("no probe has a mate in the gallery")
    cmc = {r: float(np.mean(rank[mated] <= r)) for r in ranks}
    tpir: dict[float, float] = {}
    if n_non:
        alarms = np.sort(top1[~mated])[::-1]
        for f in fpirs:
            k = math.floor(f * n_non)
            t = alarms[k] if k < n_non else -np.inf
            tpir[f] = float(np.mean((rank[mated] == 1) & (mate_score[mated] > t)))
    return {"cmc": cmc, "tpir": tpir, "mated": n_mated, "non_mated": n_non}


@dataclass
class TemplateList:
    """Rows of an IJB-B/C 1:N protocol CSV: one image each."""

    filenames: np.ndarray  # str [N]
    templates: np.ndarray  # int64 [N]
    subjects: np.ndarray  # int64 [N]
    media: np.ndarray  # int64 [N]
    source: str


def read_template_csv(path: str | os.PathLike[str]) -> TemplateList:
    """Read a 1:N protocol CSV (header with TEMPLATE_ID, SUBJECT_ID, FILENAME, optionally
    SIGHTING_ID or MEDIA_ID)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB 1:N list not found: {path}")
    try:
        df = pl.read_csv(path, infer_schema_length=10_000)
    except Exception as e:  # polars raises several error types for bad input
        raise InputError(f"{path}: not a readable CSV: {e}") from e
    if df.height == 0:
        raise InputError(f"{path}: no rows after the header (an empty 1:N list)")
    cols = {c.strip().upper(): c for c in df.columns}
    missing = [c for c in ("TEMPLATE_ID", "SUBJECT_ID", "FILENAME") if c not in cols]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; header is {df.columns}")
    medium = cols.get("SIGHTING_ID") or cols.get("MEDIA_ID")
    ints = {}
    for name in ("TEMPLATE_ID", "SUBJECT_ID", medium):
        if name is None:
            continue
        col = df[cols.get(name, name)]
        if col.null_count():
            bad = int(col.is_null().arg_true()[0])
            raise InputError(f"{path}:{bad + 2}: empty {name}")  # +2: header, 1-based
        try:
            ints[name] = col.cast(pl.Int64).to_numpy()
        except Exception as e:  # polars: InvalidOperationError and friends
            raise InputError(f"{path}: {name} must hold integers: {e}") from e
    templates, subjects = ints["TEMPLATE_ID"], ints["SUBJECT_ID"]
    media = ints[medium] if medium is not None else np.arange(df.height, dtype=np.int64)
    return TemplateList(
        filenames=df[cols["FILENAME"]].cast(pl.String).to_numpy(),
        templates=templates.astype(np.int64), subjects=subjects.astype(np.int64),
        media=media.astype(np.int64), source=str(path),
    )


def pool_template_list(
    features: np.ndarray, rows: TemplateList, **pool_kwargs: Any
) -> tuple[torch.Tensor, np.ndarray]:
    """Template features of one list (rows of ``features`` aligned with the list) and each
    template's subject; a template with images of two subjects is an error."""
    tids, feats = pool_templates(features, rows.templates, rows.media, **pool_kwargs)
    _, first = np.unique(rows.templates, return_index=True)
    subj = rows.subjects[first]
    t_idx = np.searchsorted(tids, rows.templates)
    if not np.array_equal(subj[t_idx], rows.subjects):
        bad = int(np.flatnonzero(subj[t_idx] != rows.subjects)[0])
        raise InputError(f"{rows.source}:{bad + 2}: template {rows.templates[bad]} mixes subjects")
    return feats, subj
