"""Stream a large gallery past a probe set: per-probe top-K and global top-n of all scores.

One GEMM per gallery tile (torch, on the probes' device) into a reused buffer; everything
after the GEMM touches only the few scores that can still matter:

* the first tile fills each probe's top-K densely; from then on a probe's threshold is its
  K-th best score, and only entries above it are gathered (a row max picks the rows that can
  have any) and merged with a segmented sort;
* the global top-n of all scores (for an exact TAR@FAR over ``P × M`` impostor pairs) is held
  as a candidate buffer with a floor — the n-th largest score held so far — and cut back to n
  when it grows; a lower bound on the floor is taken from the per-probe top-K values so the
  first tile is not scanned densely either.

On CPU the post-GEMM work runs in numpy (single-threaded, vectorised): torch's small ops pay
for a thread-pool round trip each, which costs more than the work and degrades badly when the
machine is shared. On other devices the same steps run in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["NumpyOps", "StreamState", "TorchOps", "stream_topk"]


@dataclass
class StreamState:
    """What survives the stream: per-probe top-K and the global top-n of all scores."""

    topk: torch.Tensor  # [P, K] descending per row
    global_top: torch.Tensor  # [min(n, P·M)] descending
    num_gallery: int


class NumpyOps:
    """Post-GEMM steps on host arrays (``s`` is a numpy view of the CPU score buffer)."""

    def __init__(self, p: int, width: int) -> None:
        self.mask = np.empty(p * width, dtype=bool)

    @staticmethod
    def view(s: torch.Tensor) -> np.ndarray:
        return s.numpy()

    @staticmethod
    def full(shape: tuple[int, ...], value: float) -> np.ndarray:
        return np.full(shape, value, dtype=np.float32)

    @staticmethod
    def largest(x: np.ndarray, n: int) -> np.ndarray:
        """The n largest values along the last axis, in descending order."""
        size = x.shape[-1]
        if n < size:
            x = np.partition(x, size - n, axis=-1)[..., size - n :]
        return -np.sort(-x, axis=-1)

    @staticmethod
    def cat(parts: list[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.concatenate(parts, axis=axis)

    @staticmethod
    def flat(s: np.ndarray) -> np.ndarray:
        return s.reshape(-1).copy()

    def candidates(self, s: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, value) of every entry strictly above its row's threshold, row-major order."""
        rows = np.flatnonzero(s.max(axis=1) > thr)
        if len(rows) == 0:
            return rows, np.empty(0, dtype=s.dtype)
        width = s.shape[1]
        if 2 * len(rows) > len(s):  # most rows: one compare over the whole tile
            m = self.mask[: s.size].reshape(s.shape)
            np.greater(s, thr[:, None], out=m)
            flat = np.flatnonzero(m)
            return flat // width, s.reshape(-1)[flat]
        sub = s[rows]
        flat = np.flatnonzero(sub > thr[rows, None])
        return rows[flat // width], sub.reshape(-1)[flat]

    @staticmethod
    def merge_topk(topk: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> None:
        """Merge candidates (``rows`` ascending) into each row's descending top-K, in place:
        the affected rows' top-K plus their candidates, sorted by row then value; first K."""
        if len(rows) == 0:
            return
        k = topk.shape[1]
        urows = np.unique(rows)
        all_rows = np.concatenate([np.repeat(urows, k), rows])
        all_vals = np.concatenate([topk[urows].reshape(-1), vals])
        order = np.lexsort((-all_vals, all_rows))
        starts = np.searchsorted(all_rows[order], urows)  # each row holds >= k values
        topk[urows] = all_vals[order[starts[:, None] + np.arange(k)]]

    @staticmethod
    def to_torch(x: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)


class TorchOps:
    """The same steps as :class:`NumpyOps` as torch operations on the scores' device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def view(s: torch.Tensor) -> torch.Tensor:
        return s

    def full(self, shape: tuple[int, ...], value: float) -> torch.Tensor:
        return torch.full(shape, value, device=self.device)

    @staticmethod
    def largest(x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.topk(x, min(n, x.shape[-1]), dim=-1).values

    @staticmethod
    def cat(parts: list[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.cat(parts, dim=axis)

    @staticmethod
    def flat(s: torch.Tensor) -> torch.Tensor:
        return s.reshape(-1).clone()

    @staticmethod
    def candidates(s: torch.Tensor, thr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.nonzero((s > thr.unsqueeze(1)).reshape(-1)).squeeze(1)
        return torch.div(flat, s.shape[1], rounding_mode="floor"), s.reshape(-1)[flat]

    @staticmethod
    def merge_topk(topk: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        k = topk.shape[1]
        urows = torch.unique_consecutive(rows)
        all_rows = torch.cat([urows.unsqueeze(1).expand(-1, k).reshape(-1), rows])
        all_vals = torch.cat([topk[urows].reshape(-1), vals])
        by_val = torch.argsort(all_vals, descending=True, stable=True)
        order = by_val[torch.argsort(all_rows[by_val], stable=True)]
        starts = torch.searchsorted(all_rows[order], urows)
        topk[urows] = all_vals[order[starts.unsqueeze(1) + torch.arange(k, device=rows.device)]]

    @staticmethod
    def to_torch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.to(device)


def _as_tile(gallery: Any, start: int, stop: int, device: torch.device) -> torch.Tensor:
    if torch.is_tensor(gallery):
        return gallery[start:stop].to(device=device, dtype=torch.float32)
    tile = np.asarray(gallery[start:stop])
    if tile.dtype != np.float32 or not tile.flags.c_contiguous or not tile.flags.writeable:
        tile = np.array(tile, dtype=np.float32, order="C")  # e.g. a read-only memmap slice
    return torch.from_numpy(tile).to(device)


def stream_topk(
    probes: torch.Tensor,
    gallery: Any,
    *,
    k: int,
    keep: int = 0,
    tile: int = 8192,
    min_buffer: int = 1 << 20,
    ops: NumpyOps | TorchOps | None = None,
) -> StreamState:
    """One pass of ``gallery`` (``[M, D]``: numpy — a memmap works —, torch, or anything
    sliceable into such arrays) past ``probes`` (``[P, D]`` torch, on the compute device).

    Returns each probe's ``k`` best scores and the ``keep`` best scores overall. The global
    buffer is cut back to ``keep`` once it holds more than ``max(4·keep, min_buffer)``.
    ``ops`` forces the numpy or torch post-processing (default: numpy on CPU).
    """
    if tile < 1:
        raise ValueError(f"tile must be at least 1 gallery row, got {tile}")
    p, d = probes.shape
    m = len(gallery)
    if m == 0:
        raise ValueError("the gallery is empty")
    if gallery.shape[1] != d:
        raise ValueError(f"probes are {d}-d but the gallery is {gallery.shape[1]}-d")
    dev = probes.device
    k = min(k, m)
    keep = min(keep, p * m)
    width = min(tile, m)
    if ops is None:
        ops = NumpyOps(p, width) if dev.type == "cpu" else TorchOps(dev)
    buf = torch.empty(p * width, device=dev)
    topk: Any = ops.full((p, k), -math.inf)
    floor = -math.inf  # the keep-th largest score held, once keep are held
    held: list[Any] = []
    n_held = 0
    seen = 0

    def hold(vals: Any) -> None:
        nonlocal held, n_held, floor
        held.append(vals)
        n_held += len(vals)
        if n_held >= max(4 * keep, min_buffer) or (floor == -math.inf and n_held >= keep):
            merged = ops.largest(ops.cat(held), min(keep, n_held))
            held, n_held = [merged], len(merged)
            if n_held == keep:
                floor = float(merged[-1])

    for start in range(0, m, tile):
        g = _as_tile(gallery, start, min(start + tile, m), dev)
        s_t = torch.mm(probes, g.T, out=buf[: p * g.shape[0]].view(p, g.shape[0]))
        s = ops.view(s_t)
        dense_topk = seen < k  # some rows still have empty top-K slots
        if dense_topk:
            topk = ops.largest(ops.cat([topk, s], axis=1), k)
        keep_thr: float | None = None
        if keep and floor > -math.inf:
            keep_thr = floor
        elif keep and seen + g.shape[0] >= k and p * k >= keep:
            # Everything seen before is held, and the keep-th largest of the per-row top-K
            # values (real scores) bounds the final floor from below: gather only what reaches
            # it. Strict '>' against the next float down keeps values equal to the bound.
            bound = np.float32(float(ops.largest(topk.reshape(-1), keep)[-1]))
            keep_thr = float(np.nextafter(bound, np.float32(-np.inf)))
        elif keep:
            hold(ops.flat(s))
        if not dense_topk or keep_thr is not None:
            if dense_topk:
                thr = ops.full((p,), keep_thr)  # type: ignore[arg-type]
            elif keep_thr is not None:
                thr = topk[:, -1].clip(max=keep_thr)
            else:
                thr = topk[:, -1].clone() if torch.is_tensor(topk) else topk[:, -1].copy()
            rows, vals = ops.candidates(s, thr)
            if len(vals):
                if not dense_topk:
                    better = vals > topk[rows, -1]
                    ops.merge_topk(topk, rows[better], vals[better])
                if keep_thr is not None:
                    hold(vals[vals > keep_thr])
        seen += g.shape[0]
    top = ops.largest(ops.cat(held), min(keep, n_held)) if keep else ops.full((0,), 0.0)
    return StreamState(
        topk=ops.to_torch(topk, dev), global_top=ops.to_torch(top, dev), num_gallery=m
    )
