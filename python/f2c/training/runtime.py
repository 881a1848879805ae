"""Process setup for a training run: device choice and (only when asked) the process group.

Nothing here runs at import time. ``init_runtime`` reads torchrun's environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); with ``WORLD_SIZE > 1`` it creates the default process
group — nccl on CUDA, gloo on CPU — and ``shutdown_runtime`` destroys it.

Across nodes ``RANK`` (global, 0 writes the run folder) and ``LOCAL_RANK`` (within the node,
picks the GPU, 0 builds the node's caches) differ. The run folder must be on storage every node
sees at the same path; ``require_visible`` turns a node-local run folder into a clear error
at start instead of a resume that silently starts over on another node.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Runtime", "init_runtime", "require_visible", "shutdown_runtime"]


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_runtime(device: str = "auto") -> Runtime:
    """Pick the device and, under torchrun with several processes, join the process group."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def require_visible(runtime: Runtime, path: str | os.PathLike[str], what: str) -> None:
    """Raise on every rank unless every rank sees ``path`` (collective: call on every rank).

    For files rank 0 wrote that the others read later, such as the run folder's checkpoint.
    """
    seen = Path(path).exists()
    if not runtime.distributed:
        if not seen:
            raise FileNotFoundError(f"{what}: {path} does not exist")
        return
    views: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(views, (seen, socket.gethostname()))
    blind = [(rank, host) for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        where = ", ".join(f"rank {rank} on {host}" for rank, host in blind)
        raise FileNotFoundError(
            f"{what}: {where} cannot see {path}, which rank 0 wrote; put it on storage that "
            "every node mounts at the same path (an absolute train.out_dir on a shared file "
            "system)"
        )
