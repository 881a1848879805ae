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

Distractors are streamed in tiles through one GEMM each, keeping only a running top-K per probe
and a running top-⌊FAR·N⌋+1 of all impostor scores. The probe × distractor matrix (14 GB at
3,530 × 1M) is never built; peak extra memory is a few probe × tile buffers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "MegaFaceResult",
    "MegaFaceSet",
    "StreamState",
    "load_megaface",
    "megaface_evaluate",
    "rank1",
    "read_image_list",
    "read_labelled_list",
    "stream_distractors",
]

DEFAULT_TILE = 8192
MAX_IMPOSTORS_KEPT = 50_000_000  # 200 MB of float32 (x5 while buffering)


# ---------------------------------------------------------------- streaming core


@dataclass
class StreamState:
    """What survives the stream: per-probe top-K and the global impostor top-n."""

    topk: torch.Tensor  # [P, K] descending per row
    impostor_top: torch.Tensor  # [min(n, P·M)] descending
    num_distractors: int


def _as_tile(distractors: np.ndarray | torch.Tensor, start: int, stop: int,
             device: torch.device) -> torch.Tensor:
    if torch.is_tensor(distractors):
        return distractors[start:stop].to(device=device, dtype=torch.float32)
    tile = np.asarray(distractors[start:stop])
    if tile.dtype != np.float32 or not tile.flags.c_contiguous or not tile.flags.writeable:
        tile = np.array(tile, dtype=np.float32, order="C")  # e.g. a read-only memmap slice
    return torch.from_numpy(tile).to(device)


def _candidates(s: torch.Tensor, thr: torch.Tensor, mask: np.ndarray | None) -> torch.Tensor:
    """Flat indices (row-major over ``s``) of the entries strictly above their row's threshold.

    On CPU, numpy's vectorised row max picks the few rows that can have candidates, and only
    those are compared (~7x faster than torch's compare + nonzero over the whole tile); on
    other devices torch does it on the device.
    """
    if mask is None:
        return torch.nonzero((s > thr.unsqueeze(1)).reshape(-1)).squeeze(1)
    sn, tn = s.numpy(), thr.numpy()
    rows = np.flatnonzero(sn.max(axis=1) > tn)
    if len(rows) == 0:
        return torch.empty(0, dtype=torch.int64)
    width = sn.shape[1]
    if 2 * len(rows) > len(sn):  # most rows: one pass over the whole tile
        m = mask[: sn.size].reshape(sn.shape)
        np.greater(sn, tn[:, None], out=m)
        return torch.from_numpy(np.flatnonzero(m))
    sub = sn[rows]
    flat = np.flatnonzero(sub > tn[rows, None])
    return torch.from_numpy(rows[flat // width] * width + flat % width)


def _merge_topk(topk: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor) -> None:
    """Merge candidate values (``rows`` ascending) into each row's descending top-K, in place.

    A segmented sort: the affected rows' current top-K plus their candidates, ordered by row
    and then by value, keeping the first K of each row. On CPU it runs in numpy (a few thousand
    values per tile; torch's thread pool costs more than the work there).
    """
    if rows.numel() == 0:
        return
    if topk.device.type == "cpu":
        _merge_topk_numpy(topk.numpy(), rows.numpy(), vals.numpy())
    else:
        _merge_topk_torch(topk, rows, vals)


def _merge_topk_numpy(topk: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> None:
    k = topk.shape[1]
    urows = np.unique(rows)
    all_rows = np.concatenate([np.repeat(urows, k), rows])
    all_vals = np.concatenate([topk[urows].reshape(-1), vals])
    order = np.lexsort((-all_vals, all_rows))
    starts = np.searchsorted(all_rows[order], urows)  # each row holds >= k values
    topk[urows] = all_vals[order[starts[:, None] + np.arange(k)]]


def _merge_topk_torch(topk: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor) -> None:
    k = topk.shape[1]
    urows = torch.unique_consecutive(rows)
    all_rows = torch.cat([urows.unsqueeze(1).expand(-1, k).reshape(-1), rows])
    all_vals = torch.cat([topk[urows].reshape(-1), vals])
    by_val = torch.argsort(all_vals, descending=True, stable=True)
    order = by_val[torch.argsort(all_rows[by_val], stable=True)]
    starts = torch.searchsorted(all_rows[order], urows)
    topk[urows] = all_vals[order[starts.unsqueeze(1) + torch.arange(k, device=rows.device)]]


def stream_distractors(
    probes: torch.Tensor,
    distractors: np.ndarray | torch.Tensor,
    *,
    k: int,
    impostor_keep: int = 0,
    tile: int = DEFAULT_TILE,
    min_buffer: int = 1 << 20,
) -> StreamState:
    """One pass over ``distractors`` (``[M, D]``, numpy — a memmap works — or torch) in tiles.

    Per tile: ``S = probes @ tileᵀ`` into a reused buffer. The first tile fills the per-probe
    top-K (and the impostor top-``impostor_keep``) densely; after that each row has a threshold,
    min(its K-th best, the impostor floor), and only the few entries of ``S`` above it are
    gathered and merged — one vectorised compare per tile, so the cost stays close to the
    GEMM's. Impostor candidates are cut back to the top ``impostor_keep`` once more than
    ``max(4·impostor_keep, min_buffer)`` are held.
    """
    p, d = probes.shape
    m = len(distractors)
    if m == 0:
        raise ValueError("no distractors")
    if distractors.shape[1] != d:
        raise ValueError(f"probes are {d}-d but distractors are {distractors.shape[1]}-d")
    k = min(k, m)
    dev = probes.device
    width = min(tile, m)
    buf = torch.empty(p * width, device=dev)
    mask = np.empty(p * width, dtype=bool) if dev.type == "cpu" else None
    topk = torch.full((p, k), -math.inf, device=dev)
    keep = min(impostor_keep, p * m)
    floor = -math.inf  # the keep-th largest impostor score so far, once keep are held
    kept: list[torch.Tensor] = []
    buffered = 0
    seen = 0

    def hold(vals: torch.Tensor) -> None:
        nonlocal kept, buffered, floor
        kept.append(vals)
        buffered += vals.numel()
        if buffered >= max(4 * keep, min_buffer) or (floor == -math.inf and buffered >= keep):
            merged = torch.topk(torch.cat(kept), min(keep, buffered)).values
            kept, buffered = [merged], merged.numel()
            if buffered == keep:
                floor = float(merged[-1])

    for start in range(0, m, tile):
        g = _as_tile(distractors, start, min(start + tile, m), dev)
        s = torch.mm(probes, g.T, out=buf[: p * g.shape[0]].view(p, g.shape[0]))
        dense_topk = seen < k  # some rows still have empty top-K slots
        if dense_topk:
            topk = torch.topk(torch.cat([topk, s], dim=1), k, dim=1).values
        imp_thr: float | None = None
        if keep and floor > -math.inf:
            imp_thr = floor
        elif keep and seen + g.shape[0] >= k and topk.numel() >= keep:
            # Everything seen so far is held, and the keep-th largest of the per-row top-K
            # values (real impostor scores) bounds the final floor from below: gather only what
            # reaches it instead of a top-keep over the whole tile.
            bound = torch.topk(topk.reshape(-1), keep).values[-1]
            imp_thr = float(torch.nextafter(bound, bound.new_tensor(-math.inf)))
        elif keep:
            hold(s.reshape(-1).clone())
        if not dense_topk or imp_thr is not None:
            if dense_topk:
                thr = torch.full((p,), imp_thr, device=dev)  # type: ignore[arg-type]
            elif imp_thr is not None:
                thr = torch.clamp(topk[:, -1], max=imp_thr)
            else:
                thr = topk[:, -1].clone()
            flat = _candidates(s, thr, mask).to(dev)
            if flat.numel():
                rows = torch.div(flat, s.shape[1], rounding_mode="floor")
                vals = s.reshape(-1)[flat]
                if not dense_topk:
                    better = vals > topk[rows, -1]
                    _merge_topk(topk, rows[better], vals[better])
                if imp_thr is not None:
                    hold(vals[vals > imp_thr])
        seen += g.shape[0]
    if keep:
        allv = torch.cat(kept) if kept else torch.empty(0, device=dev)
        impostor_top = torch.topk(allv, min(keep, allv.numel())).values
    else:
        impostor_top = torch.empty(0, device=dev)
    return StreamState(topk=topk, impostor_top=impostor_top, num_distractors=m)


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
    distractors: np.ndarray | torch.Tensor,
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
    ``min_buffer`` is passed to :func:`stream_distractors`.
    """
    dev = torch.device(device)
    pt = _probe_tensor(probes, dev)
    ids = np.asarray(probe_ids)
    if len(ids) != pt.shape[0]:
        raise ValueError(f"{pt.shape[0]} probes but {len(ids)} probe ids")
    a, b = _same_identity_pairs(ids)
    if len(a) == 0:
        raise ValueError("no identity has two probe images: nothing to search for")
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
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
    state = stream_distractors(
        pt, distractors, k=ranks, impostor_keep=keep, tile=tile, min_buffer=min_buffer
    )
    ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
    genuine = _pair_similarities(pt, ta, tb)
    # correct at rank r iff genuine > r-th best distractor of the probe
    cmc = (genuine.unsqueeze(1) > state.topk[ta]).double().mean(dim=0).cpu().numpy()
    unordered = a < b
    gen_u = genuine[torch.from_numpy(unordered).to(dev)]
    tars: dict[float, float] = {}
    for far, kk in zip(fars, ks, strict=True):
        thr = float(state.impostor_top[kk]) if kk < n_imp else -math.inf
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
            raise ValueError(f"{path}:{lineno}: expected 'path identity', got {s!r}")
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
        for what, lst in (("probe", full_p), ("distractor", full_d)):
            missing = next((q for q in lst if not q.is_file()), None)
            if missing is not None:
                raise FileNotFoundError(f"{what} image not found: {missing}")
    if not full_d:
        raise ValueError(f"{root / distractors}: no distractors left")
    return MegaFaceSet(full_p, p_ids, full_d, desc)
