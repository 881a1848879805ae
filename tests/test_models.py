"""Backbones: parameter counts against the published architectures, and the one model spec
(build → checkpoint → load_backbone) round trip for every registered backbone and input size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_support import randomise_buffers

from f2c import models
from f2c.models import ModelSpec, WeightsError


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta(name: str, embedding_size: int = 512, size: int | None = None) -> torch.nn.Module:
    """The module on the meta device: shapes only, no memory or init cost."""
    with torch.device("meta"):
        return models.build(ModelSpec(name, embedding_size, size))


def _iresnet_count(layers: tuple[int, ...], dim: int, size: int) -> int:
    """Parameters of an IResNet from its layer table (stem, IR blocks, BN–fc–BN1d output)."""
    n = 3 * 64 * 9 + 2 * 64 + 64  # 3x3 conv, BN, PReLU
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), layers, strict=True):
        for i in range(blocks):
            # BN(cin), 3x3 conv, BN, PReLU, 3x3 conv (stride), BN
            n += 2 * cin + 9 * cin * width + 2 * width + width + 9 * width * width + 2 * width
            if i == 0:  # every stage opens with a stride-2 block: 1x1 conv + BN shortcut
                n += cin * width + 2 * width
            cin = width
    side = size // 16
    return n + 2 * 512 + 512 * side * side * dim + dim + 2 * dim


# Blocks per stage of the published IResNets, and their size in millions at 512-d / 112 px.
IRESNETS = {
    "ir18": ((2, 2, 2, 2), 24.0),
    "ir34": ((3, 4, 6, 3), 34.1),
    "ir50": ((3, 4, 14, 3), 43.6),
    "ir100": ((3, 13, 30, 3), 65.2),
}


@pytest.mark.parametrize("name", sorted(IRESNETS))
def test_iresnet_parameter_counts(name: str) -> None:
    layers, millions = IRESNETS[name]
    net = _meta(name)
    assert isinstance(net, models.IResNet) and net.layers == layers
    expected = _iresnet_count(layers, 512, 112)
    assert _count(net) == expected
    assert round(expected / 1e6, 1) == millions  # the figure insightface's model cards quote
    # Other sizes / embeddings change only the fc and the output BN.
    assert _count(_meta(name, 128, 96)) == _iresnet_count(layers, 128, 96)


def test_ir50_fc_is_sized_from_the_input() -> None:
    assert _count(_meta("ir50").fc) == 512 * 7 * 7 * 512 + 512
    assert _count(_meta("ir50", 512, 96).fc) == 512 * 6 * 6 * 512 + 512


def test_r50_trunk_is_resnet50() -> None:
    net = _meta("r50", 256)
    # ImageNet ResNet-50 has 25,557,032 parameters, 2,049,000 of them in the 1000-way fc.
    trunk = _count(net.stem) + _count(net.stages)
    assert trunk == 25_557_032 - 2_049_000
    assert _count(net) == trunk + 2048 * 256 + 256 + 2 * 256


def test_mobilefacenet_is_about_one_million_parameters() -> None:
    # Chen et al. 2018: 0.99M parameters for the 128-d model. Allow 3%.
    assert _count(_meta("mobilefacenet", 128)) == pytest.approx(0.99e6, rel=0.03)
    # A 512-d embedding only widens the last 1×1 conv (512 → d) and its BN.
    grow = _count(_meta("mobilefacenet")) - _count(_meta("mobilefacenet", 128))
    assert grow == 512 * (512 - 128) + 2 * (512 - 128)
    # The global depthwise conv covers the whole (S/16)² map: 512·6·6 weights at 96 px.
    assert _count(_meta("mobilefacenet", 512, 96)) - _count(_meta("mobilefacenet")) == 512 * (
        6 * 6 - 7 * 7
    )


def test_registry_names_sizes_and_errors() -> None:
    assert models.available() == [
        "ir100", "ir18", "ir34", "ir50", "mobilefacenet", "r50", "tinyfacenet"
    ]
    assert {n: models.input_size(n) for n in ("ir50", "r50", "tinyfacenet")} == {
        "ir50": 112, "r50": 224, "tinyfacenet": 64
    }
    with pytest.raises(ValueError, match="mobilefacenet"):
        models.create("vit")
    with pytest.raises(ValueError, match="ir50"):
        models.input_size("resnet18")
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelSpec("ir50", 512, 100)
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelSpec("r50", 512, 112)
    with pytest.raises(ValueError, match="embedding_size must be positive"):
        ModelSpec("ir50", 0)
    spec = ModelSpec("mobilefacenet", 128)
    assert spec.input_size == 112 and spec.to_dict() == {
        "backbone": "mobilefacenet", "embedding_size": 128, "input_size": 112
    }
    assert ModelSpec.from_dict({**spec.to_dict(), "image_size": [112, 112]}) == spec
    with pytest.raises(ValueError, match="missing embedding_size"):
        ModelSpec.from_dict({"backbone": "ir50"})


def test_register_a_custom_backbone() -> None:
    def factory(embedding_size: int, input_size: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * input_size**2,
                                                                       embedding_size))

    models.register(models.BackboneSpec("flat", factory, 8, size_multiple=8))
    try:
        with pytest.raises(ValueError, match="already registered"):
            models.register(models.BackboneSpec("flat", factory, 8))
        assert "flat" in models.available()
        assert models.build(ModelSpec("flat", 4, 16))(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    finally:
        models.unregister("flat")
    assert "flat" not in models.available()


# ---------------------------------------------------------------- round trip


def _other_size(name: str) -> int:
    """A small non-native size the backbone can be built for (cheap on a CPU)."""
    info = models.backbone_spec(name)
    size = 2 * info.size_multiple
    return size if size != info.native_size else 3 * info.size_multiple


_ROUND_TRIP = [
    pytest.param(name, which, marks=[pytest.mark.slow] if name == "ir100" else [])
    for name in models.available()
    for which in ("native", "other")
]


@pytest.mark.parametrize(("name", "which"), _ROUND_TRIP)
def test_checkpoint_round_trip(name: str, which: str, tmp_path: Path) -> None:
    size = models.input_size(name) if which == "native" else _other_size(name)
    spec = ModelSpec(name, 8, size)
    torch.manual_seed(0)
    probe = models.build(spec)
    randomise_buffers(probe, 1)
    # The layout of a training checkpoint: the spec under "model", the nets beside it.
    torch.save({"model": spec.to_dict(), "probe": probe.state_dict()}, tmp_path / "checkpoint.pt")

    loaded = models.load_backbone(tmp_path, net="probe")  # a run folder works too
    assert loaded.spec == spec and loaded.image_size == size
    assert not loaded.module.training
    assert type(loaded.module) is type(probe)
    original = probe.state_dict()
    restored = loaded.module.state_dict()
    assert restored.keys() == original.keys()
    for key, value in restored.items():
        assert torch.equal(value, original[key]), key
    # Same spec and same tensors: one forward shows the module takes its size (batch 1, eval).
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = loaded.module(x)
    assert out.shape == (1, 8) and torch.isfinite(out).all()
    if name == "tinyfacenet":  # cheap enough to compare with the original module too
        probe.eval()
        with torch.inference_mode():
            assert torch.equal(out, probe(x))


def test_evaluate_loads_a_backbone_trained_at_a_non_native_size(tmp_path: Path) -> None:
    """The reported bug: mobilefacenet trained on 96 px crops failed in f2c.evaluate with a
    size mismatch for head.1.weight (the global depthwise conv)."""
    from f2c.evaluate import load_checkpoint_model

    spec = ModelSpec("mobilefacenet", 32, 96)
    net = models.build(spec)
    # What the trainer records (older checkpoints hold only image_size, newer the spec too).
    for section in ({"backbone": "mobilefacenet", "embedding_size": 32, "image_size": [96, 96]},
                    spec.to_dict()):
        ckpt = tmp_path / "ckpt.pt"
        torch.save({"config": {"model": {"backbone": "mobilefacenet", "embedding_size": 32}},
                    "model": section, "probe": {f"module.{k}": v
                                                for k, v in net.state_dict().items()}}, ckpt)
        loaded = load_checkpoint_model(ckpt)
        assert loaded.image_size == 96 and loaded.spec == spec
        with torch.inference_mode():
            assert loaded.module(torch.zeros(2, 3, 96, 96)).shape == (2, 32)


def test_weights_for_another_size_name_the_key(tmp_path: Path) -> None:
    at_112 = models.build(ModelSpec("mobilefacenet", 16))
    torch.save({"model": {"backbone": "mobilefacenet", "embedding_size": 16, "input_size": 96},
                "probe": at_112.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(WeightsError, match=r"'head\.1\.weight'.*depend on the input size"):
        models.load_backbone(tmp_path / "c.pt")
    # A size-independent backbone loads weights trained at any size.
    tiny = models.build(ModelSpec("tinyfacenet", 16))
    other = models.build(ModelSpec("tinyfacenet", 16, 96))
    models.load_weights(other, tiny.state_dict())


def test_missing_unexpected_and_bare_state_dicts(tmp_path: Path) -> None:
    net = models.build(ModelSpec("tinyfacenet", 16))
    state = net.state_dict()
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="--model"):
        models.load_backbone(tmp_path / "bare.pt")
    loaded = models.load_backbone(tmp_path / "bare.pt", backbone="tinyfacenet", embedding_size=16)
    assert loaded.image_size == 64  # native size when nothing is recorded
    with pytest.raises(KeyError, match="gallery"):
        models.load_backbone(tmp_path / "bare.pt", net="gallery", backbone="tinyfacenet",
                             embedding_size=16)
    dropped = dict(state)
    del dropped["embedding.2.weight"]
    with pytest.raises(WeightsError, match=r"missing key 'embedding\.2\.weight'"):
        models.load_weights(models.build(ModelSpec("tinyfacenet", 16)), dropped)
    with pytest.raises(WeightsError, match=r"unexpected key 'extra\.weight'"):
        models.load_weights(net, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        models.load_backbone(tmp_path / "none.pt")
