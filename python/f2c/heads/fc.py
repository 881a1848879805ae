"""The baselines: ``FullFC`` and ``PartialFC``, with class centres sharded across ranks.

Rank r of W holds the contiguous class range ``shard_range(C, W, r)`` (the first ``C mod W``
ranks one class more). Each step every rank gathers all ranks' embeddings (with autograd, see
``f2c.distributed.all_gather_with_grad``) and labels, computes cosines against its own centres,
and a softmax cross-entropy *across* shards: the row maximum and the exponential sums are
all-reduced, so the loss (mean over all gathered rows) is the same on every rank and equals the
single-process loss. The margin is applied to the positive logit on the shard that holds it.

``PartialFC`` keeps, per shard and per step, the positive classes of the gathered batch plus
random negatives up to ``ceil(sample_rate · shard size)`` classes, and computes the softmax over
the sampled classes only. The sampled centres are copied into a small leaf tensor; its gradient
is scattered into ``weight.grad`` by a hook (rows not sampled get 0). ``weight[index]`` under
autograd would instead build a full-size gradient through a huge index backward (docs/design.md §5).
The scattered gradient lives in a buffer the head keeps and re-uses across steps, zeroing only
the rows it wrote last time, so no shard-sized tensor is allocated per step. The training loop's
optimizer updates ``weight`` as usual (momentum SGD then decays every row, as in insightface's
Partial FC v2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from f2c.distributed import (
    all_gather_rank_ordered,
    all_gather_with_grad,
    all_reduce,
    get_rank,
    get_world_size,
)
from f2c.heads.batch import HeadBatch
from f2c.heads.margins import MarginConfig, margin_logits
from f2c.heads.output import HeadOutput

__all__ = ["FullFC", "PartialFC", "shard_range", "sharded_cross_entropy"]

STATE_VERSION = 1
_INIT_CHUNK = 1 << 12  # classes per independently seeded init chunk
_INIT_STD = 0.01


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of the classes rank ``rank`` of ``world_size`` holds."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Per-row softmax cross-entropy over class columns split across ranks."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, target: torch.Tensor, group: Any
    ) -> torch.Tensor:
        n = logits.shape[0]
        row_max = logits.detach().amax(dim=1) if logits.shape[1] else logits.new_full(
            (n,), -math.inf
        )
        all_reduce(row_max, dist.ReduceOp.MAX, group)
        probs = (logits.detach() - row_max[:, None]).exp_()
        denom = probs.sum(dim=1)
        all_reduce(denom, group=group)
        probs /= denom[:, None]
        rows = torch.nonzero(target >= 0).squeeze(1)
        cols = target[rows]
        target_logit = logits.new_zeros(n)
        target_logit[rows] = logits.detach()[rows, cols]
        all_reduce(target_logit, group=group)
        ctx.save_for_backward(probs, rows, cols)
        return denom.log() + row_max - target_logit

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        probs, rows, cols = ctx.saved_tensors
        out = probs * grad[:, None]
        out[rows, cols] -= grad[rows]
        return out, None, None


def sharded_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, group: Any = None
) -> torch.Tensor:
    """Per-row cross-entropy ``[N]`` when each rank holds some of the class columns.

    ``target[i]`` is the local column of row i's class on this rank, or −1 when another rank
    holds it (exactly one rank must hold it). Without a process group this equals
    ``F.cross_entropy(logits, target, reduction="none")``.
    """
    out: torch.Tensor = _ShardedCrossEntropy.apply(logits.float(), target, group)
    return out


def _cosine(embeddings: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Cosines of normalised ``embeddings`` with ``centres``, normalised per column.

    Scaling the logit columns by 1/‖w‖ keeps no normalised copy of the centres (a shard-sized
    tensor) for backward.
    """
    inv_norm = centres.norm(dim=1).clamp_min(1e-12).reciprocal()
    return (embeddings @ centres.T) * inv_norm


class _ShardedHead(nn.Module):
    """Shared parts of the two baselines: shard, init, gathers, state."""

    requires_gallery = False
    kind = ""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: MarginConfig,
        *,
        device: torch.device | str | None = None,
        process_group: Any = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.world_size = get_world_size(process_group)
        self.rank = get_rank(process_group)
        if num_classes < self.world_size or embedding_size < 1:
            raise ValueError(
                f"need at least one class per rank and a positive embedding size, got "
                f"num_classes={num_classes}, world size {self.world_size}, "
                f"embedding_size={embedding_size}"
            )
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.margin = margin
        self.process_group = process_group
        self.class_start, self.class_end = shard_range(
            self.num_classes, self.world_size, self.rank
        )
        self.weight = nn.Parameter(
            self._init_rows(self.class_start, self.class_end, init_seed).to(device)
        )

    def _init_rows(self, start: int, end: int, seed: int) -> torch.Tensor:
        """N(0, 0.01²) centres, the same for a class whatever the world size."""
        out = torch.empty(end - start, self.embedding_size)
        for chunk in range(start // _INIT_CHUNK, (end - 1) // _INIT_CHUNK + 1):
            lo = chunk * _INIT_CHUNK
            gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
            block = torch.randn(_INIT_CHUNK, self.embedding_size, generator=gen) * _INIT_STD
            a, b = max(start, lo), min(end, lo + _INIT_CHUNK)
            out[a - start : b - start] = block[a - lo : b - lo]
        return out

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
            f"shard=[{self.class_start}, {self.class_end}), margin={self.margin}"
        )

    def _gather(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.embedding_size
        if embeddings.ndim != 2 or embeddings.shape[1] != d:
            raise ValueError(f"embeddings must be [n, {d}], got {tuple(embeddings.shape)}")
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(
                f"labels must be [{embeddings.shape[0]}], got {tuple(labels.shape)}"
            )
        labels = labels.to(self.weight.device, torch.int64)
        if labels.numel() and bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(f"labels must be class ids in [0, {self.num_classes})")
        emb = all_gather_with_grad(embeddings.float().to(self.weight.device), self.process_group)
        return emb, all_gather_rank_ordered(labels, self.process_group)

    def _loss(
        self, emb: torch.Tensor, centres: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Mean margin cross-entropy of ``emb`` over ``centres`` (this shard's columns)."""
        cos = _cosine(F.normalize(emb, dim=1), centres)
        target_cos = None
        if self.margin.kind == "svsoftmax":
            rows = torch.nonzero(target >= 0).squeeze(1)
            target_cos = cos.new_zeros(cos.shape[0])
            target_cos[rows] = cos.detach()[rows, target[rows]]
            all_reduce(target_cos, group=self.process_group)
        logits = margin_logits(cos, target, self.margin, target_cos)
        return sharded_cross_entropy(logits, target, self.process_group).mean()

    def _local_target(self, labels: torch.Tensor) -> torch.Tensor:
        local = labels - self.class_start
        return torch.where((labels >= self.class_start) & (labels < self.class_end), local, -1)

    # ------------------------------------------------------------------ state

    def full_state_dict(self) -> dict[str, Any]:
        """All class centres ``[C, D]`` on the CPU (collective: call on every rank)."""
        weight = all_gather_rank_ordered(self.weight.detach(), self.process_group)
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "weight": weight.cpu().clone(),
        }

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        """Load whole centres (from a ``fc`` or ``partial_fc`` head) and keep this rank's shard."""
        if state.get("kind") not in ("fc", "partial_fc"):
            raise ValueError(f"not an fc/partial_fc head state (kind={state.get('kind')!r})")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported head state version {state.get('version')!r}")
        weight = torch.as_tensor(state["weight"])
        shape = (self.num_classes, self.embedding_size)
        if tuple(weight.shape) != shape:
            raise ValueError(f"state 'weight' has shape {tuple(weight.shape)}, expected {shape}")
        with torch.no_grad():
            self.weight.copy_(weight[self.class_start : self.class_end])


class FullFC(_ShardedHead):
    """Margin softmax over all C classes; centres sharded across ranks."""

    kind = "fc"

    def forward(self, batch: HeadBatch) -> HeadOutput:
        """Margin softmax of all the batch's probe rows (both views)."""
        with torch.autocast(batch.embeddings.device.type, enabled=False):
            emb, all_labels = self._gather(batch.embeddings, batch.labels)
            loss = self._loss(emb, self.weight, self._local_target(all_labels))
        return HeadOutput(loss=loss, stats={})


class PartialFC(_ShardedHead):
    """Margin softmax over the batch's positive classes plus sampled negatives, per shard."""

    kind = "partial_fc"

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: MarginConfig,
        sample_rate: float = 0.1,
        *,
        device: torch.device | str | None = None,
        process_group: Any = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__(
            num_classes, embedding_size, margin, device=device,
            process_group=process_group, init_seed=init_seed,
        )
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)
        shard = self.class_end - self.class_start
        self.num_sample = min(shard, max(1, math.ceil(self.sample_rate * shard)))
        self.last_sampled: torch.Tensor | None = None  # local class indices of the last step
        self._grad_buffer: torch.Tensor | None = None
        self._grad_rows: torch.Tensor | None = None
        self._grad_version = -1

    def sample(self, local_target: torch.Tensor) -> torch.Tensor:
        """Sorted local class indices: every positive, then random negatives up to the quota."""
        shard = self.class_end - self.class_start
        positives = torch.unique(local_target[local_target >= 0])
        if max(self.num_sample, positives.numel()) >= shard:
            return torch.arange(shard, device=self.weight.device)
        if positives.numel() >= self.num_sample:
            return positives
        score = torch.rand(shard, device=self.weight.device)
        score[positives] = 2.0  # above any rand value: positives always kept
        return score.topk(self.num_sample).indices.sort().values

    def _scatter_grad(self, index: torch.Tensor, grad: torch.Tensor) -> None:
        """Put the sampled rows' gradient into ``weight.grad`` (all other rows zero)."""
        weight = self.weight
        if weight.grad is not None:  # accumulating into an existing gradient
            weight.grad.index_add_(0, index, grad.to(weight.grad.dtype))
            return
        buf = self._grad_buffer
        if buf is None or buf.shape != weight.shape or buf.device != weight.device:
            buf = torch.zeros_like(weight)
        elif buf._version != self._grad_version or self._grad_rows is None:
            buf.zero_()  # someone wrote into it since: clear it all
        else:
            buf.index_fill_(0, self._grad_rows, 0.0)
        buf.index_copy_(0, index, grad.to(buf.dtype))
        self._grad_buffer, self._grad_rows = buf, index
        self._grad_version = buf._version
        weight.grad = buf

    def forward(self, batch: HeadBatch) -> HeadOutput:
        """Margin softmax of all the batch's probe rows (both views) over sampled classes."""
        with torch.autocast(batch.embeddings.device.type, enabled=False):
            emb, all_labels = self._gather(batch.embeddings, batch.labels)
            local = self._local_target(all_labels)
            index = self.sample(local)
            self.last_sampled = index
            # Positives are in ``index`` (sorted), so searchsorted finds their column.
            target = torch.where(local >= 0, torch.searchsorted(index, local.clamp_min(0)), -1)
            centres = self.weight.detach()[index]
            if torch.is_grad_enabled() and self.weight.requires_grad:
                centres.requires_grad_(True)

                def hook(t: torch.Tensor, index: torch.Tensor = index) -> None:
                    assert t.grad is not None
                    self._scatter_grad(index, t.grad)
                    t.grad = None

                centres.register_post_accumulate_grad_hook(hook)
            loss = self._loss(emb, centres, target)
        return HeadOutput(loss=loss, stats={"sampled_classes": float(index.numel())})
