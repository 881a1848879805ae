"""Backbone checkpoints for the model, export, embedding and init_from tests."""

from __future__ import annotations

from pathlib import Path

import torch

from f2c import models
from f2c.models import ModelSpec


def randomise_buffers(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so eval outputs depend on the buffers being restored and
    have the scale of a trained net rather than of a fresh one."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def save_backbone(path: Path, spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """Write a checkpoint laid out like a training run's (spec under "model", probe and
    gallery nets) and return its probe, in eval mode."""
    torch.manual_seed(seed)
    probe = models.build(spec)
    randomise_buffers(probe, seed + 1)
    gallery = models.build(spec)
    randomise_buffers(gallery, seed + 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": spec.to_dict(), "probe": probe.state_dict(),
                "gallery": gallery.state_dict()}, path)
    return probe.eval()
