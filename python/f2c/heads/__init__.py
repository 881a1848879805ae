"""Classification heads: the F²C dynamic class pool and the FC / Partial FC baselines.

``build_head(name, ...)`` makes any of them; every head's ``forward`` takes a :class:`HeadBatch`
and returns a :class:`HeadOutput`, and every head exposes ``requires_gallery`` (whether it reads
the batch's gallery embeddings), ``full_state_dict()`` and ``load_full_state_dict(state)``.
"""

from __future__ import annotations

from typing import Any, get_args

import torch
from torch import nn

from f2c.heads.batch import HeadBatch
from f2c.heads.f2c_head import DynamicClassPool, minimum_pool_size, outlier_top_k
from f2c.heads.fc import FullFC, PartialFC, shard_range, sharded_cross_entropy
from f2c.heads.margins import MarginConfig, margin_logits, margined_target_cosine
from f2c.heads.names import HeadName, MarginKind
from f2c.heads.output import HeadOutput
from f2c.heads.probe_gallery import ProbeGallery

__all__ = [
    "DynamicClassPool",
    "FullFC",
    "HeadBatch",
    "HeadName",
    "HeadOutput",
    "MarginConfig",
    "MarginKind",
    "PartialFC",
    "ProbeGallery",
    "build_head",
    "margin_logits",
    "margined_target_cosine",
    "minimum_pool_size",
    "outlier_top_k",
    "shard_range",
    "sharded_cross_entropy",
]


def build_head(
    name: HeadName,
    *,
    num_classes: int,
    embedding_size: int,
    margin: MarginConfig,
    batch_size: int,
    pool_size: int | None,
    sample_rate: float = 0.1,
    device: torch.device | str | None = None,
    process_group: Any = None,
) -> nn.Module:
    """The head called ``name``: ``"f2c"`` (needs ``pool_size``), ``"fc"`` or ``"partial_fc"``.

    ``batch_size`` is the per-rank batch of the training loop (used by f2c to refuse a pool
    too small for one pass); ``sample_rate`` is used by partial_fc only.
    """
    if name == "f2c":
        if pool_size is None:
            raise ValueError("the f2c head needs a pool_size")
        return DynamicClassPool(
            num_classes, embedding_size, pool_size, batch_size, margin,
            device=device, process_group=process_group,
        )
    if name == "fc":
        return FullFC(
            num_classes, embedding_size, margin, device=device, process_group=process_group
        )
    if name == "partial_fc":
        return PartialFC(
            num_classes, embedding_size, margin, sample_rate,
            device=device, process_group=process_group,
        )
    raise ValueError(f"unknown head {name!r}; expected one of {get_args(HeadName)}")
