"""``ProbeGallery``: the trained probe backbone and its moving-average gallery copy.

BatchNorm and other buffers: the gallery's *parameters* are an exponential moving average of the
probe's; its *buffers* (BatchNorm running mean/var and batch counters) are copied from the probe
at every :meth:`ProbeGallery.update_gallery`, not averaged — the probe's running statistics are
already an average over recent batches, and a second average would lag behind the weights.
:meth:`ProbeGallery.gallery_forward` runs the gallery in the probe's current mode: while
training, BatchNorm normalises with the batch's own statistics, exactly as the probe's forward
does; in eval mode it uses the running statistics copied from the probe. A training-mode gallery
forward also moves the gallery's running statistics; the next ``update_gallery`` overwrites them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ProbeGallery"]


class ProbeGallery(nn.Module):
    """``probe`` (trainable) and ``gallery`` (EMA of the probe, no gradients)."""

    def __init__(self, backbone: nn.Module, momentum: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.probe = backbone
        self.gallery = copy.deepcopy(backbone)
        self.gallery.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.probe(x)
        return out

    @torch.no_grad()
    def update_gallery(self) -> None:
        """``g = m·g + (1 − m)·p`` for every parameter; buffers copied from the probe."""
        gallery_params = list(self.gallery.parameters())
        probe_params = [p.detach() for p in self.probe.parameters()]
        if len(gallery_params) != len(probe_params):
            raise RuntimeError("probe and gallery no longer have the same parameters")
        if gallery_params:
            torch._foreach_lerp_(gallery_params, probe_params, 1.0 - self.momentum)
        for g, p in zip(self.gallery.buffers(), self.probe.buffers(), strict=True):
            g.copy_(p)

    @torch.no_grad()
    def gallery_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gallery embeddings of ``x`` without gradient, in the probe's train/eval mode."""
        if self.gallery.training != self.probe.training:
            self.gallery.train(self.probe.training)
        out: torch.Tensor = self.gallery(x)
        return out
