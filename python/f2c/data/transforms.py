"""Image normalisation shared by training and evaluation (one function, one convention).

f2c uses the insightface convention: RGB channel order and ``(x / 255 - 0.5) / 0.5``, i.e.
pixel values mapped to [-1, 1]. Loaders hand over uint8 NHWC batches; the conversion to float
runs on the batch's device (the accelerator when there is one), not in the loader workers.
"""

from __future__ import annotations

import torch

__all__ = ["normalize"]


def normalize(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` RGB → float32 ``[N, 3, H, W]`` in [-1, 1], on the same device."""
    if not isinstance(batch_uint8, torch.Tensor):
        raise TypeError(f"normalize expects a torch.Tensor, got {type(batch_uint8).__name__}")
    if batch_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 batch, got {batch_uint8.dtype}")
    if batch_uint8.ndim != 4 or batch_uint8.shape[-1] != 3:
        raise ValueError(
            f"normalize expects shape [N, H, W, 3] (RGB, channels last), got "
            f"{tuple(batch_uint8.shape)}"
        )
    x = batch_uint8.permute(0, 3, 1, 2).to(torch.float32)
    # (x / 255 - 0.5) / 0.5 == x * (2 / 255) - 1
    return x.mul_(2.0 / 255.0).sub_(1.0).contiguous()
