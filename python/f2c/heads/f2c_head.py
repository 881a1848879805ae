"""``DynamicClassPool``: the F²C head (docs/design.md §1).

State (identical on every rank, never broadcast):

* ``prototypes`` — buffer ``[2, Q, D]`` fp32 of L2-normalised gallery features; slot q holds the
  newest and second-newest feature of its class in its two rows (see ``pool_writes``);
* ``pointers`` — per-slot row pointer, a CPU uint8 tensor (the write plan is made on the CPU,
  so keeping it there avoids a device round trip);
* ``index`` — the Rust LRU ``ClassPoolIndex`` (class id → slot). The LRU fills the lowest free
  slot first and never frees one, so the occupied slots are always ``[0, len(index))``.

One step, with every rank's gallery features and labels gathered in rank order:

* pass A (probe x, gallery y): the y writes are only *tentative*. The index assignment is undone
  right away and the pool is never written: pass A's logits are the logits against the current
  pool with the columns of the slots that the y writes (and the pass-B writes below) change
  replaced by the right features. No write-then-restore, so plain fp32 autograd works.
* pass B (probe y, gallery x): the x writes are applied to the pool (in place, without grad)
  before any logits are computed, so nothing autograd saved is modified later in the step.
  The next step's writes do modify it: run a step's backward before the next forward (a graph
  still pending then fails loudly with autograd's in-place error, never with wrong gradients).

Logits (per pass): ``cos1`` against row 0 of every occupied slot; ``cos2`` equals ``cos1``
except at the slots that received a *hit* write in the pass's gathered batch, where it uses
row 1. A write is a hit when its class is in the pool at that moment in gathered order: a class
present before the batch, or one that entered earlier in the same batch and occurs again (the
paper's code adds a slot to its row-1 mask on every hit).

Loss (per pass, for each of cos1 and cos2): a probe row whose class is in the pool (after the
pass's writes) gets the margin softmax cross-entropy over the occupied slots; a row whose class
is not ("outlier") gets the mean of its top-k cosines, each clamped at 0, with
``k = min(max(⌊0.0002·Q⌋, 3), 10)``. The head's loss is the sum over the two passes and the two
cosine variants. Rows are averaged as in the paper's code: the cross-entropy mean over in-pool
rows plus the outlier-loss mean over outlier rows, each 0 when it has no rows. Under DDP both
means are over all ranks' rows (the counts are known on every rank from the gathered labels) and
each rank's loss is scaled by the world size, so DDP's gradient averaging gives exactly the
gradient of the all-rank means: the result does not depend on how the rows are split over ranks.
(The paper's code averages per rank; on one process the two agree.) A row-equal weighting (every
probe row the same weight) was measured against this one at a 1% pool and was not better, so it
was removed (docs/design.md §1.7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from f2c._labels import as_label_array
from f2c.distributed import get_world_size, is_distributed
from f2c.heads.batch import HeadBatch
from f2c.heads.margins import MarginConfig, margin_logits
from f2c.heads.output import HeadOutput
from f2c.heads.pool_writes import WritePlan, plan_writes
from f2c.pool import ClassPoolIndex

__all__ = ["DynamicClassPool", "minimum_pool_size", "outlier_top_k"]

STATE_VERSION = 1


def minimum_pool_size(batch_size: int, world_size: int) -> int:
    """Labels one pass can insert: every rank's y view, ``B + ⌈B/2⌉`` images (docs/design.md
    §1)."""
    return world_size * (batch_size + (batch_size + 1) // 2)


def outlier_top_k(pool_size: int) -> int:
    """k of the outlier loss: ``min(max(⌊0.0002·Q⌋, 3), 10)``."""
    return min(max(math.floor(0.0002 * pool_size), 3), 10)


@dataclass
class _PassView:
    """What one pass's logits need: the occupied count, targets and column overrides."""

    count: int  # occupied slots [0, count) as this pass sees the pool
    targets: torch.Tensor  # [n] target slot of each probe row, -1 for outliers
    cols0: torch.Tensor  # slots whose row-0 feature differs from the stored pool
    vals0: torch.Tensor  # [len(cols0), D] the features this pass sees there
    cols1: torch.Tensor  # slots where cos2 uses row 1
    vals1: torch.Tensor  # [len(cols1), D] the row-1 features this pass sees there
    rows: tuple[int, int]  # (in-pool, outlier) probe rows of the pass on all ranks


class DynamicClassPool(nn.Module):
    """The F²C head: a pool of ``pool_size`` class slots written by the gallery network.

    ``forward(batch)`` runs the two passes of one step on a :class:`HeadBatch` with gallery
    embeddings; embeddings are raw (normalised here), labels int64.
    ``batch_size`` is the per-rank batch B of the training loop (each view has ``1.5·B`` rows);
    a pool smaller than :func:`minimum_pool_size` is refused.

    Duplicate labels in one gathered gallery batch are written as if one feature at a time in
    gathered order (see :mod:`f2c.heads.pool_writes`): the last occurrence is the newest.
    """

    requires_gallery = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        pool_size: int,
        batch_size: int,
        margin: MarginConfig,
        *,
        device: torch.device | str | None = None,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1 or batch_size < 1:
            raise ValueError(
                f"num_classes, embedding_size and batch_size must be positive, got "
                f"{num_classes}, {embedding_size}, {batch_size}"
            )
        self.world_size = get_world_size(process_group)
        minimum = minimum_pool_size(batch_size, self.world_size)
        if pool_size < minimum:
            raise ValueError(
                f"pool_size={pool_size} is too small: one F²C pass inserts up to {minimum} "
                f"labels ({self.world_size} rank(s) x 1.5 x batch_size {batch_size}), so labels "
                f"of the same pass would evict each other. Use pool_size >= {minimum}."
            )
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.pool_size = int(pool_size)
        self.batch_size = int(batch_size)
        self.margin = margin
        self.process_group = process_group
        self.top_k = outlier_top_k(self.pool_size)
        self.register_buffer(
            "prototypes",
            torch.zeros(2, self.pool_size, self.embedding_size, device=device),
        )
        self.pointers = torch.zeros(self.pool_size, dtype=torch.uint8)
        self.index = ClassPoolIndex(self.pool_size)

    prototypes: torch.Tensor

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
            f"pool_size={self.pool_size}, batch_size={self.batch_size}, margin={self.margin}"
        )

    # ------------------------------------------------------------------ inputs

    def _labels(self, labels: torch.Tensor, name: str) -> npt.NDArray[np.int64]:
        arr = as_label_array(labels, name)
        if arr.size and int(arr.max()) >= self.num_classes:
            raise ValueError(
                f"{name} holds class id {int(arr.max())} but the head has {self.num_classes} "
                "classes"
            )
        return arr

    def _check_pair(
        self, probe: torch.Tensor, labels: torch.Tensor, gallery: torch.Tensor, view: str
    ) -> None:
        d = self.embedding_size
        if probe.ndim != 2 or probe.shape[1] != d or gallery.shape != probe.shape:
            raise ValueError(
                f"view {view}: probe and gallery must both be [n, {d}], got "
                f"{tuple(probe.shape)} and {tuple(gallery.shape)}"
            )
        if labels.shape != (probe.shape[0],):
            raise ValueError(
                f"view {view}: labels must be [{probe.shape[0]}], got {tuple(labels.shape)}"
            )
        if probe.shape[0] == 0:
            raise ValueError(f"view {view} is empty")

    def _gather_gallery(
        self,
        gallery_x: torch.Tensor,
        labels_x: torch.Tensor,
        gallery_y: torch.Tensor,
        labels_y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised gallery features and labels of all ranks, in rank order (no gradient)."""
        gx = F.normalize(gallery_x.detach().float(), dim=1)
        gy = F.normalize(gallery_y.detach().float(), dim=1)
        if not is_distributed() or self.world_size == 1:
            return gx, labels_x, gy, labels_y
        group, dev = self.process_group, gx.device
        sizes = [torch.zeros(2, dtype=torch.int64, device=dev) for _ in range(self.world_size)]
        mine = torch.tensor([gx.shape[0], gy.shape[0]], dtype=torch.int64, device=dev)
        dist.all_gather(sizes, mine, group=group)
        nx, ny = zip(*(tuple(int(v) for v in s.tolist()) for s in sizes), strict=True)
        longest = max(a + b for a, b in zip(nx, ny, strict=True))

        def gather(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            both = torch.cat([x, y])
            if both.shape[0] < longest:
                pad = both.new_zeros((longest - both.shape[0], *both.shape[1:]))
                both = torch.cat([both, pad])
            parts = [torch.empty_like(both) for _ in range(self.world_size)]
            dist.all_gather(parts, both.contiguous(), group=group)
            xs = [p[:a] for p, a in zip(parts, nx, strict=True)]
            ys = [p[a : a + b] for p, a, b in zip(parts, nx, ny, strict=True)]
            return torch.cat(xs), torch.cat(ys)

        feats_x, feats_y = gather(gx, gy)
        all_lx, all_ly = gather(labels_x.to(dev, torch.int64), labels_y.to(dev, torch.int64))
        return feats_x, all_lx, feats_y, all_ly

    # ------------------------------------------------------------------ bookkeeping

    def _assign(
        self, labels: npt.NDArray[np.int64], undoable: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        try:
            return self.index.assign(labels, undoable=undoable)
        except ValueError as exc:
            raise ValueError(
                f"the gathered gallery batch holds {np.unique(labels).size} distinct classes "
                f"but pool_size is {self.pool_size}; one pass must fit in the pool (at least "
                f"{np.unique(labels).size} slots): {exc}"
            ) from exc

    def _device_index(self, values: npt.NDArray[np.int64]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(
            self.prototypes.device, non_blocking=True
        )

    @torch.no_grad()
    def _apply(self, plan: WritePlan, features: torch.Tensor) -> None:
        """Write the plan's features into the pool and advance the pointers."""
        rows, slots = self._device_index(plan.rows), self._device_index(plan.slots)
        sources = self._device_index(plan.sources)
        self.prototypes.index_put_((rows, slots), features[sources].to(self.prototypes.dtype))
        self.pointers[torch.from_numpy(plan.pointer_slots)] = torch.from_numpy(plan.new_pointers)

    def write_gallery(self, labels: torch.Tensor, features: torch.Tensor) -> None:
        """Write gallery features into the pool (what pass B keeps), without gathering.

        ``features`` [n, D] are normalised here; every rank must call this with the same
        ``labels`` and ``features`` to keep the pools identical.
        """
        label_arr = self._labels(labels, "labels")
        feats = F.normalize(features.detach().float(), dim=1).to(self.prototypes.device)
        slots, hit, _ = self._assign(label_arr, undoable=False)
        self._apply(plan_writes(slots, hit, self.pointers.numpy()), feats)

    def _prepare(
        self,
        labels_x: npt.NDArray[np.int64],
        all_lx: npt.NDArray[np.int64],
        feats_x: torch.Tensor,
        labels_y: npt.NDArray[np.int64],
        all_ly: npt.NDArray[np.int64],
        feats_y: torch.Tensor,
    ) -> tuple[_PassView, _PassView, dict[str, float]]:
        """Index updates, the pass-B pool write and both passes' views (no autograd here)."""
        pointers = self.pointers.numpy()
        # Pass A, tentative: assign, look the probes up, undo.
        slots_a, hit_a, _ = self._assign(all_ly, undoable=True)
        try:
            targets_a = self.index.lookup(labels_x)
            in_pool_a = self._in_pool_rows(targets_a, all_lx)
            count_a = len(self.index)
        finally:
            self.index.undo()
        plan_a = plan_writes(slots_a, hit_a, pointers)
        # Pass B, kept.
        slots_b, hit_b, evicted_b = self._assign(all_lx, undoable=False)
        targets_b = self.index.lookup(labels_y)
        in_pool_b = self._in_pool_rows(targets_b, all_ly)
        count_b = len(self.index)
        plan_b = plan_writes(slots_b, hit_b, pointers)

        with torch.no_grad():
            view_a = self._tentative_view(plan_a, plan_b, feats_y, count_a, targets_a, in_pool_a)
            self._apply(plan_b, feats_x)
            hit_b_idx = self._device_index(plan_b.row1_slots)
            empty = self._device_index(np.empty(0, dtype=np.int64))
            view_b = _PassView(
                count=count_b,
                targets=self._device_index(targets_b),
                cols0=empty,
                vals0=self.prototypes.new_zeros(0, self.embedding_size),
                cols1=hit_b_idx,
                vals1=self.prototypes[1, hit_b_idx],
                rows=in_pool_b,
            )
        stats = {
            "pool_occupancy": count_b / self.pool_size,
            "pool_evictions": float(evicted_b.size),
        }
        return view_a, view_b, stats

    def _in_pool_rows(
        self, targets: npt.NDArray[np.int64], all_labels: npt.NDArray[np.int64]
    ) -> tuple[int, int]:
        """(in-pool, outlier) probe rows of a pass over all ranks (every rank has every
        rank's labels and the same index, so no communication is needed)."""
        if all_labels.shape[0] != targets.shape[0]:  # gathered from several ranks
            targets = self.index.lookup(all_labels)
        in_pool = int(np.count_nonzero(targets >= 0))
        return in_pool, int(targets.shape[0]) - in_pool

    def _tentative_view(
        self,
        plan_a: WritePlan,
        plan_b: WritePlan,
        feats_y: torch.Tensor,
        count_a: int,
        targets_a: npt.NDArray[np.int64],
        rows_a: tuple[int, int],
    ) -> _PassView:
        """Pass A's view, as overrides of the pool *after* pass B's writes (read before them)."""
        # Row 0: A's own writes, and the pre-B values of slots B is about to overwrite.
        a0_slots, a0_src = plan_a.slots_of_row(0)
        b0_slots, _ = plan_b.slots_of_row(0)
        a_writes_row0 = np.zeros(self.pool_size, dtype=bool)
        a_writes_row0[a0_slots] = True
        restore = b0_slots[(b0_slots < count_a) & ~a_writes_row0[b0_slots]]
        cols0 = np.concatenate([restore, a0_slots])
        vals0 = torch.cat(
            [
                self.prototypes[0, self._device_index(restore)],
                feats_y[self._device_index(a0_src)].to(self.prototypes.dtype),
            ]
        )
        # Row 1 for cos2, at the slots A hit-wrote: A's write if any, else the current row.
        cols1 = plan_a.row1_slots
        vals1 = self.prototypes[1, self._device_index(cols1)]
        a1_slots, a1_src = plan_a.slots_of_row(1)
        row1_source = np.full(self.pool_size, -1, dtype=np.int64)
        row1_source[a1_slots] = a1_src
        src = row1_source[cols1]
        written = np.flatnonzero(src >= 0)
        if written.size:
            vals1[self._device_index(written)] = feats_y[self._device_index(src[written])].to(
                vals1.dtype
            )
        return _PassView(
            count=count_a,
            targets=self._device_index(targets_a),
            cols0=self._device_index(cols0),
            vals0=vals0,
            cols1=self._device_index(cols1),
            vals1=vals1,
            rows=rows_a,
        )

    # ------------------------------------------------------------------ loss

    def _pass_loss(self, probe: torch.Tensor, view: _PassView) -> tuple[torch.Tensor, ...]:
        """(loss, in-pool rows, summed pool CE, summed outlier loss) of one pass."""
        n = probe.shape[0]
        base = probe @ self.prototypes[0, : view.count].T  # [n, count]
        if view.cols0.numel():
            base.index_copy_(1, view.cols0, probe @ view.vals0.T)
        cos1 = base
        cos2 = cos1.index_copy(1, view.cols1, probe @ view.vals1.T) if view.cols1.numel() else cos1
        # Both terms run on all rows and are masked (no row gathers: they cost full-size copies
        # and zero-filled gradients): outliers have target -1, which cross_entropy ignores.
        outlier_rows = (view.targets < 0).to(probe.dtype)
        k = min(self.top_k, view.count)
        pool_ce = probe.new_zeros(())
        outlier = probe.new_zeros(())
        for cos in (cos1, cos2):
            logits = margin_logits(cos, view.targets, self.margin)
            pool_ce = pool_ce + F.cross_entropy(
                logits, view.targets, ignore_index=-1, reduction="sum"
            )
            top = cos.topk(k, dim=1).values.clamp_min(0.0).mean(dim=1)
            outlier = outlier + (top * outlier_rows).sum()
        # Means over each kind's rows on all ranks, times the world size: DDP's averaging of the
        # gradients over ranks then gives the gradient of the all-rank means.
        in_rows, out_rows = view.rows
        loss = (pool_ce / max(in_rows, 1) + outlier / max(out_rows, 1)) * self.world_size
        in_pool = n - outlier_rows.sum()
        return loss, in_pool, pool_ce.detach(), outlier.detach()

    def forward(self, batch: HeadBatch) -> HeadOutput:
        if batch.gallery is None:
            raise ValueError("the f2c head needs the gallery embeddings (HeadBatch.gallery)")
        probe_x, labels_x, gallery_x = batch.view("x")
        probe_y, labels_y, gallery_y = batch.view("y")
        assert gallery_x is not None and gallery_y is not None
        self._check_pair(probe_x, labels_x, gallery_x, "x")
        self._check_pair(probe_y, labels_y, gallery_y, "y")
        with torch.autocast(probe_x.device.type, enabled=False):
            lx = self._labels(labels_x, "labels_x")
            ly = self._labels(labels_y, "labels_y")
            feats_x, all_lx, feats_y, all_ly = self._gather_gallery(
                gallery_x, labels_x, gallery_y, labels_y
            )
            dev = self.prototypes.device
            view_a, view_b, stats = self._prepare(
                lx, self._labels(all_lx, "gathered labels_x"), feats_x.to(dev),
                ly, self._labels(all_ly, "gathered labels_y"), feats_y.to(dev),
            )
            px = F.normalize(probe_x.float(), dim=1).to(dev)
            py = F.normalize(probe_y.float(), dim=1).to(dev)
            loss_a, in_a, ce_a, out_a = self._pass_loss(px, view_a)
            loss_b, in_b, ce_b, out_b = self._pass_loss(py, view_b)
            loss = loss_a + loss_b
        n_in, ce, out, la, lb = torch.stack(
            [in_a + in_b, ce_a + ce_b, out_a + out_b, loss_a.detach(), loss_b.detach()]
        ).tolist()
        rows = px.shape[0] + py.shape[0]
        n_out = rows - n_in
        stats.update(
            in_pool_fraction=n_in / rows,
            pool_loss=ce / (2 * n_in) if n_in else 0.0,
            outlier_loss=out / (2 * n_out) if n_out else 0.0,
            loss_pass_a=la,
            loss_pass_b=lb,
        )
        return HeadOutput(loss=loss, stats=stats)

    # ------------------------------------------------------------------ state

    def full_state_dict(self) -> dict[str, Any]:
        """The whole head state (the same on every rank), CPU tensors and plain types."""
        return {
            "kind": "f2c",
            "version": STATE_VERSION,
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "pool_size": self.pool_size,
            "prototypes": self.prototypes.detach().cpu().clone(),
            "pointers": self.pointers.clone(),
            "index": self.index.state_dict(),
        }

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`full_state_dict` output (any world size; the pool is not sharded)."""
        if state.get("kind") != "f2c":
            raise ValueError(f"not an f2c head state (kind={state.get('kind')!r})")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported f2c head state version {state.get('version')!r}")
        for key in ("num_classes", "embedding_size", "pool_size"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"head state has {key}={state[key]} but this head has "
                    f"{key}={getattr(self, key)}"
                )
        shape = (2, self.pool_size, self.embedding_size)
        prototypes = torch.as_tensor(state["prototypes"])
        if tuple(prototypes.shape) != shape:
            raise ValueError(f"state 'prototypes' has shape {tuple(prototypes.shape)}, "
                             f"expected {shape}")
        pointers = torch.as_tensor(state["pointers"])
        if tuple(pointers.shape) != (self.pool_size,) or bool((pointers > 1).any()):
            raise ValueError(f"state 'pointers' must be {self.pool_size} values in {{0, 1}}")
        index = ClassPoolIndex.from_state_dict(state["index"])
        if index.capacity != self.pool_size:
            raise ValueError(
                f"state 'index' has capacity {index.capacity}, expected {self.pool_size}"
            )
        slots = np.sort(index.slots())
        if not np.array_equal(slots, np.arange(len(index))):
            raise ValueError("state 'index' does not occupy slots 0..len-1 (corrupt state)")
        self.prototypes.copy_(prototypes)
        self.pointers.copy_(pointers.to(torch.uint8))
        self.index = index

    def get_extra_state(self) -> dict[str, Any]:
        """Pointers and LRU, so that ``state_dict()`` is complete too."""
        return {"pointers": self.pointers.clone(), "index": self.index.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        full = self.full_state_dict()
        full.update(pointers=state["pointers"], index=state["index"])
        self.load_full_state_dict(full)
