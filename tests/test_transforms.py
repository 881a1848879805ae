"""normalize: the one image normalisation of training and evaluation."""

from __future__ import annotations

import pytest
import torch

from f2c.data.transforms import normalize


def test_normalize_layout_range_and_values() -> None:
    batch = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    batch[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    out = normalize(batch)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 5, 7) and out.is_contiguous()
    expected = (batch.permute(0, 3, 1, 2).double() / 255 - 0.5) / 0.5
    assert torch.allclose(out.double(), expected, atol=1e-6)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    assert batch.dtype == torch.uint8  # input untouched


def test_normalize_rejects_wrong_inputs() -> None:
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
