"""Small process-group helpers that also work when no process group is initialised.

With no initialised group every helper behaves as a world of one: rank 0, world size 1, and
the gathers return their input. Nothing here initialises a process group.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_rank_ordered",
    "all_gather_with_grad",
    "all_reduce",
    "get_rank",
    "get_world_size",
    "is_distributed",
]


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    return dist.get_rank(group) if is_distributed() else 0


def get_world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def all_reduce(tensor: torch.Tensor, op: Any = None, group: Any = None) -> torch.Tensor:
    """In-place all-reduce (sum by default); a no-op without a process group. Returns ``tensor``."""
    if is_distributed() and get_world_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op, group=group)
    return tensor


def _gather_sizes(n: int, device: torch.device, group: Any) -> list[int]:
    world = get_world_size(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s.item()) for s in sizes]


def _gather_padded(tensor: torch.Tensor, sizes: list[int], group: Any) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (dim 0 may differ across ranks) in rank order."""
    longest = max(sizes)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    parts = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def all_gather_rank_ordered(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, without gradient.

    Ranks may hold different numbers of rows (the other dims must match). Returns ``tensor``
    itself (detached) when there is no process group or the world has one rank.
    """
    tensor = tensor.detach()
    if not is_distributed() or get_world_size(group) == 1:
        return tensor
    sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
    return _gather_padded(tensor, sizes, group)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns this rank's rows of the summed gradient, × world.

    Every rank computes the same global loss from the gathered rows, so the gradient of a row is
    the sum over ranks of each rank's partial gradient. The extra factor ``world`` undoes the
    averaging that DistributedDataParallel applies to the backbone's gradients, so that a DDP
    step follows the gradient of the global mean loss (as in insightface's Partial FC).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, tensor: torch.Tensor, sizes: list[int], rank: int, group: Any
    ) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(tensor, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        mine = grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes)
        return mine, None, None, None


def all_gather_with_grad(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Like :func:`all_gather_rank_ordered`, but gradients flow back to each rank's rows.

    The backward scales this rank's gradient by the world size (see ``_AllGatherWithGrad``):
    with a loss that is identical on every rank, DDP's averaging then yields the gradient of
    that loss. Without a process group this is the identity.
    """
    if not is_distributed() or get_world_size(group) == 1:
        return tensor
    sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
    out: torch.Tensor = _AllGatherWithGrad.apply(tensor, sizes, get_rank(group), group)
    return out
