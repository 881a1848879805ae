"""MegaFace challenge 1: FaceScrub probes against up to 1M distractors, streamed.

Definitions (features L2-normalised by the caller; similarity = dot product):

* **Rank-k identification** (the official protocol): for every probe image ``p`` of identity
  ``i`` and every *other* image ``q`` of identity ``i``, ``q`` is put in the gallery with all
  distractors and searched with ``p``. The search is correct at rank k iff
  ``sim(p, q)`` is **strictly** greater than the k-th largest ``sim(p, d)`` over distractors
  ``d`` (a distractor tying with ``q`` ranks ahead of it). Rank-1: ``sim(p, q) > max_d sim(p, d)``.
  The score averages over all ordered pairs ``(p, q)``; the CMC lists ranks 1..K.
* **TAR@FAR** (verification): genuine pairs are the unordered same-identity probe pairs,
  impostor pairs are all probe × distractor pairs; exact threshold as in
  :func:`f2c.evaluation.metrics.tar_at_far` (strict ``>``, the ⌊FAR·N⌋-th largest impostor score,
  0-based).

Distractors are streamed in tiles through one GEMM each (:mod:`f2c.evaluation.streaming`),
keeping only a running top-K per probe and a running top-⌊FAR·N⌋+1 of all impostor scores. The
probe × distractor matrix (14 GB at 3,530 × 1M) is never built; peak extra memory is a few
probe × tile buffers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from f2c.evaluation.errors import InputError
from f2c.evaluation.features import require_files
from f2c.evaluation.streaming import stream_topk

__all__ = [
    "MegaFaceResult",
    "MegaFaceSet",
    "NormalisedRows",
    "load_megaface",
    "megaface_evaluate",
    "megaface_evaluate_raw",
    "rank1",
    "read_image_list",
    "read_labelled_list",
    "unit_rows",
]

DEFAULT_TILE = 8192
MAX_IMPOSTORS_KEPT = 50_000_000  # 200 MB of float32 (x5 while buffering)


# ---------------------------------------------------------------- probe pairs


def _same_identity_pairs(probe_ids: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """All ordered (p, q), p != q, with the same identity; vectorised (no per-identity loop)."""
    ids = np.asarray(probe_ids)
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    c_of = counts[inv[order]]  # group size of each sorted element
    a_sorted = np.repeat(np.arange(len(ids)), c_of)  # positions in sorted order
    offs = np.arange(len(a_sorted)) - np.repeat(np.cumsum(c_of) - c_of, c_of)
    b_sorted = np.repeat(starts[inv[order]], c_of) + offs
    mask = a_sorted != b_sorted
    return order[a_sorted[mask]], order[b_sorted[mask]]


# ---------------------------------------------------------------- public API


def _pair_similarities(pt: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
    """``pt[ta[i]] · pt[tb[i]]``: one probe x probe GEMM when it is small (<= 256 MB), else a
    chunked row-wise product (gathering 2 x 155k rows of 512 floats costs more than the GEMM)."""
    p = pt.shape[0]
    if p * p * 4 <= 256 * 2**20:
        return (pt @ pt.T).reshape(-1)[ta * p + tb]
    out = torch.empty(ta.numel(), device=pt.device)
    step = 1 << 16
    for s in range(0, ta.numel(), step):
        out[s : s + step] = (pt[ta[s : s + step]] * pt[tb[s : s + step]]).sum(dim=1)
    return out


@dataclass
class MegaFaceResult:
    rank1: float
    cmc: np.ndarray  # [K]: identification rate at ranks 1..K
    tar_at_far: dict[float, float]
    probes: int
    probe_pairs: int  # ordered same-identity pairs searched
    genuine_pairs: int  # unordered, for verification
    distractors: int
    distractor_list: str = ""


def _probe_tensor(probes: npt.ArrayLike | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = probes if torch.is_tensor(probes) else torch.from_numpy(np.asarray(probes))
    return t.to(device=device, dtype=torch.float32).contiguous()


def megaface_evaluate(
    probes: npt.ArrayLike | torch.Tensor,
    probe_ids: npt.ArrayLike,
    distractors: np.ndarray | torch.Tensor | NormalisedRows,
    *,
    ranks: int = 10,
    fars: Sequence[float] = (1e-6,),
    tile: int = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    distractor_list: str = "",
    min_buffer: int = 1 << 20,
) -> MegaFaceResult:
    """Rank-1, CMC up to ``ranks`` and exact TAR@FAR in one streamed pass (see module doc).

    ``distractor_list`` is carried into the result so reports say which list was used;
    ``min_buffer`` is passed to :func:`f2c.evaluation.streaming.stream_topk`.
    """
    dev = torch.device(device)
    pt = _probe_tensor(probes, dev)
    ids = np.asarray(probe_ids)
    if len(ids) != pt.shape[0]:
        raise ValueError(f"{pt.shape[0]} probes but {len(ids)} probe ids")
    a, b = _same_identity_pairs(ids)
    if len(a) == 0:
        raise InputError("no identity has two probe images: nothing to search for")
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    if tile < 1:
        raise ValueError(f"tile must be at least 1 distractor, got {tile}")
    if any(not 0 <= f <= 1 for f in fars):
        raise ValueError(f"FARs must be in [0, 1], got {list(fars)}")
    m = len(distractors)
    n_imp = pt.shape[0] * m
    ks = [math.floor(f * n_imp) for f in fars]
    keep = min(max(ks) + 1, n_imp) if ks else 0
    if keep > MAX_IMPOSTORS_KEPT:
        raise ValueError(
            f"an exact TAR at FAR {max(fars)} needs the top {keep} of {n_imp} impostor scores "
            f"held in memory (limit {MAX_IMPOSTORS_KEPT}); use a smaller FAR"
        )
    state = stream_topk(pt, distractors, k=ranks, keep=keep, tile=tile, min_buffer=min_buffer)
    ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
    genuine = _pair_similarities(pt, ta, tb)
    # correct at rank r iff genuine > r-th best distractor of the probe
    cmc = (genuine.unsqueeze(1) > state.topk[ta]).double().mean(dim=0).cpu().numpy()
    unordered = a < b
    gen_u = genuine[torch.from_numpy(unordered).to(dev)]
    tars: dict[float, float] = {}
    for far, kk in zip(fars, ks, strict=True):
        thr = float(state.global_top[kk]) if kk < n_imp else -math.inf
        tars[far] = float((gen_u > thr).double().mean())
    return MegaFaceResult(
        rank1=float(cmc[0]),
        cmc=cmc,
        tar_at_far=tars,
        probes=int(pt.shape[0]),
        probe_pairs=int(len(a)),
        genuine_pairs=int(unordered.sum()),
        distractors=m,
        distractor_list=distractor_list,
    )


def rank1(
    probes: npt.ArrayLike | torch.Tensor,
    probe_ids: npt.ArrayLike,
    distractors: np.ndarray | torch.Tensor,
    *,
    tile: int = DEFAULT_TILE,
    device: str | torch.device = "cpu",
) -> float:
    """Official MegaFace rank-1 identification rate (see the module docstring)."""
    return megaface_evaluate(
        probes, probe_ids, distractors, ranks=1, fars=(), tile=tile, device=device
    ).rank1


class NormalisedRows:
    """A read-only view of an ``[M, D]`` array (memory-mapped or not) whose slices come out
    float32 and L2-normalised: a gallery is normalised tile by tile as it streams, never
    copied whole."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return unit_rows(self.array[rows])


def unit_rows(x: npt.ArrayLike) -> np.ndarray:
    """Rows L2-normalised, as float32 (a zero row stays zero)."""
    block = np.asarray(x, dtype=np.float32)
    return block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def megaface_evaluate_raw(
    probes: npt.ArrayLike,
    probe_ids: npt.ArrayLike,
    distractors: np.ndarray,
    **kwargs: Any,
) -> MegaFaceResult:
    """:func:`megaface_evaluate` on raw features: probes are normalised here, distractors tile
    by tile as they stream (see :class:`NormalisedRows`)."""
    return megaface_evaluate(unit_rows(probes), probe_ids, NormalisedRows(distractors), **kwargs)


# ---------------------------------------------------------------- lists on disk


def read_image_list(path: str | os.PathLike[str]) -> list[str]:
    """One relative image path per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    return [s for s in (ln.strip() for ln in path.read_text().splitlines())
            if s and not s.startswith("#")]


def read_labelled_list(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``path identity`` per line (the identity is the last field, so paths may hold spaces)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe list not found: {path}")
    paths: list[str] = []
    ids: list[str] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.rsplit(None, 1)
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: expected 'path identity', got {s!r}")
        paths.append(parts[0])
        ids.append(parts[1])
    return paths, ids


@dataclass
class MegaFaceSet:
    probe_paths: list[Path]
    probe_ids: list[str]
    distractor_paths: list[Path]
    distractor_list: str  # what the report prints: list file, count, noise list applied


def load_megaface(
    root: str | os.PathLike[str],
    *,
    probes: str = "facescrub.txt",
    distractors: str = "distractors.txt",
    probe_noise: str | None = "facescrub_noises.txt",
    distractor_noise: str | None = "megaface_noises.txt",
    check_files: bool = True,
) -> MegaFaceSet:
    """Read the probe and distractor lists under ``root``; noise lists are applied when present
    (a noise list names images to drop, one relative path per line)."""
    root = Path(root)
    p_paths, p_ids = read_labelled_list(root / probes)
    d_paths = read_image_list(root / distractors)
    desc = f"{distractors} ({len(d_paths)} listed"
    if probe_noise and (root / probe_noise).is_file():
        noise = set(read_image_list(root / probe_noise))
        keep = [i for i, q in enumerate(p_paths) if q not in noise]
        p_paths, p_ids = [p_paths[i] for i in keep], [p_ids[i] for i in keep]
    if distractor_noise and (root / distractor_noise).is_file():
        noise = set(read_image_list(root / distractor_noise))
        before = len(d_paths)
        d_paths = [q for q in d_paths if q not in noise]
        desc += f", {before - len(d_paths)} removed by {distractor_noise}"
    desc += f"; {len(d_paths)} used)"
    full_p = [root / q for q in p_paths]
    full_d = [root / q for q in d_paths]
    if check_files:
        require_files(full_p, "probe image")
        require_files(full_d, "distractor image")
    if not full_d:
        raise InputError(f"{root / distractors}: no distractors left")
    return MegaFaceSet(full_p, p_ids, full_d, desc)
