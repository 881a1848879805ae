"""Backbones: output shapes and parameter counts against the published architectures."""

from __future__ import annotations

import pytest
import torch

from f2c import models


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_ir50_matches_insightface_iresnet50() -> None:
    net = models.create("ir50")
    # insightface's iresnet50 at a 512-d embedding: 43,590,848 parameters (43.6M). Allow 0.5%.
    assert _count(net) == pytest.approx(43_590_848, rel=0.005)
    # The fc from the 512·7·7 feature map is 25,088·512 + 512.
    assert _count(net.fc) == 25_088 * 512 + 512


def test_r50_trunk_is_resnet50() -> None:
    net = models.create("r50", embedding_size=256)
    # ImageNet ResNet-50 has 25,557,032 parameters, 2,049,000 of them in the 1000-way fc.
    trunk = _count(net.stem) + _count(net.stages)
    assert trunk == 25_557_032 - 2_049_000
    assert _count(net) == trunk + 2048 * 256 + 256 + 2 * 256


def test_mobilefacenet_is_about_one_million_parameters() -> None:
    # Chen et al. 2018: 0.99M parameters for the 128-d model. Allow 3%.
    assert _count(models.create("mobilefacenet", embedding_size=128)) == pytest.approx(
        0.99e6, rel=0.03
    )
    # A 512-d embedding only widens the last 1×1 conv (512 → d) and its BN.
    grow = _count(models.create("mobilefacenet")) - _count(
        models.create("mobilefacenet", embedding_size=128)
    )
    assert grow == 512 * (512 - 128) + 2 * (512 - 128)


@pytest.mark.parametrize(("name", "dim"), [("ir50", 512), ("r50", 128), ("mobilefacenet", 64)])
def test_output_shape_and_input_size(name: str, dim: int) -> None:
    torch.manual_seed(0)
    size = models.input_size(name)
    assert size == (224 if name == "r50" else 112)
    net = models.create(name, embedding_size=dim)
    net.train()  # BatchNorm1d in training needs a batch of 2
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()
    # Raw embeddings, not L2-normalised.
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))


def test_unknown_backbone_names_the_choices() -> None:
    with pytest.raises(ValueError, match="mobilefacenet"):
        models.create("vit")
    with pytest.raises(ValueError, match="ir50"):
        models.input_size("resnet18")
    assert models.available() == ["ir50", "mobilefacenet", "r50", "tinyfacenet"]
