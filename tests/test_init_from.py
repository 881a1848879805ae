"""Starting from released weights: f2c checkpoints, plain state dicts and insightface
arcface_torch IResNet ``backbone.pth`` files (their parameter names mapped onto f2c's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_support import randomise_buffers, save_backbone
from torch import nn
from train_support import load, tiny_dataset, tiny_run_args

from f2c import models
from f2c.data.synthetic import SyntheticDataset
from f2c.models import ModelSpec, WeightsError, init_backbone
from f2c.models.pretrained import arcface_iresnet_to_f2c
from f2c.train import main as train_main


# An IResNet laid out the way arcface_torch names it (conv1/bn1/prelu, layer1-4 of blocks with
# bn1, conv1, bn2, prelu, conv2 (stride), bn3 and a downsample of 1x1 conv + BN; then bn2,
# dropout, fc, features). Written here from that description so that the test does not use
# f2c's IResNet to check f2c's mapping.
class ArcfaceBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class ArcfaceIResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], features: int, size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = [ArcfaceBlock(cin if j == 0 else width, width, 2 if j == 0 else 1)
                      for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * (size // 16) ** 2, features)
        self.features = nn.BatchNorm1d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        out: torch.Tensor = self.features(self.fc(x))
        return out


def _arcface_net(layers: tuple[int, ...], dim: int, size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = ArcfaceIResNet(layers, dim, size)
    with torch.no_grad():
        for p in net.parameters():  # every parameter random, PReLU slopes and BN scales too
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    randomise_buffers(net, seed + 1)
    return net.eval()


def test_arcface_state_dict_gives_the_same_outputs(tmp_path: Path) -> None:
    ref = _arcface_net((2, 2, 2, 2), 16, 32)
    state = ref.state_dict()
    assert "layer2.0.downsample.0.weight" in state and "features.running_var" in state
    # How arcface_torch saves it: a plain state dict, here with DDP's "module." prefix.
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "backbone.pth")

    spec = ModelSpec("ir18", 16, 32)
    net = models.build(spec)
    init_backbone(net, tmp_path / "backbone.pth", spec)
    net.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = ref(x), net(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Loading the renamed dict by hand gives the same module state.
    by_hand = models.build(spec)
    by_hand.load_state_dict(arcface_iresnet_to_f2c(state))
    for key, value in by_hand.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key


def test_arcface_mismatches_name_the_problem(tmp_path: Path) -> None:
    state = _arcface_net((2, 2, 2, 2), 16, 32).state_dict()
    ir34 = models.build(ModelSpec("ir34", 16, 32))
    with pytest.raises(WeightsError, match=r"\[2, 2, 2, 2\] blocks per stage.*\[3, 4, 6, 3\]"):
        init_backbone(ir34, state)
    with pytest.raises(WeightsError, match="cannot initialise a tinyfacenet"):
        init_backbone(models.build(ModelSpec("tinyfacenet", 16, 32)), state,
                      ModelSpec("tinyfacenet", 16, 32))
    with pytest.raises(WeightsError, match=r"'layer1\.0\.se\.weight'"):
        init_backbone(models.build(ModelSpec("ir18", 16, 32)),
                      {**state, "layer1.0.se.weight": torch.zeros(1)})
    at_32 = models.build(ModelSpec("ir18", 16, 32))
    with pytest.raises(WeightsError, match=r"'fc\.weight' has shape \[16, 2048\].*\[16, 18432\]"):
        spec = ModelSpec("ir18", 16, 96)
        init_backbone(models.build(spec), at_32.state_dict(), spec)
    with pytest.raises(FileNotFoundError, match="init weights not found"):
        init_backbone(ir34, tmp_path / "none.pth")


def test_f2c_checkpoint_probe_or_gallery(tmp_path: Path) -> None:
    spec = ModelSpec("tinyfacenet", 16, 32)
    save_backbone(tmp_path / "run" / "checkpoint.pt", spec, seed=4)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for net_name in ("probe", "gallery"):
        net = models.build(spec)
        init_backbone(net, tmp_path / "run", spec, net=net_name)  # a run folder works too
        for key, value in net.state_dict().items():
            assert torch.equal(value, saved[net_name][key]), (net_name, key)
    # A plain state dict; the head of a training checkpoint is never part of it.
    torch.save(saved["probe"], tmp_path / "plain.pt")
    net = models.build(spec)
    init_backbone(net, tmp_path / "plain.pt", spec)
    assert torch.equal(net.state_dict()["embedding.2.weight"], saved["probe"]["embedding.2.weight"])
    with pytest.raises(KeyError, match="a bare state dict has no 'gallery'"):
        init_backbone(net, tmp_path / "plain.pt", spec, net="gallery")


# ---------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("init_from") / "tiny")



def _train_args(data: SyntheticDataset, out: Path, *extra: str) -> list[str]:
    # One step at an lr so small that the weights cannot move measurably.
    return tiny_run_args(data, out, "--train.max_steps", "1", "--optim.lr", "1e-9",
                         "--optim.warmup_epochs", "0", *extra)


def test_a_run_started_with_init_from_continues_from_those_weights(
    data: SyntheticDataset, tmp_path: Path, one_thread: None
) -> None:
    spec = ModelSpec("tinyfacenet", 32, 32)  # what tiny_run_args trains
    save_backbone(tmp_path / "released.pt", spec, seed=9)
    released = load(tmp_path / "released.pt")["gallery"]
    assert train_main(_train_args(data, tmp_path / "runs", "--name", "init",
                                  "--model.init_from", str(tmp_path / "released.pt"),
                                  "--model.init_net", "gallery")) == 0
    assert train_main(_train_args(data, tmp_path / "runs", "--name", "fresh")) == 0
    started = load(tmp_path / "runs" / "init" / "checkpoint.pt")
    fresh = load(tmp_path / "runs" / "fresh" / "checkpoint.pt")
    assert started["global_step"] == 1
    params = dict(models.build(spec).named_parameters())
    for net in ("probe", "gallery"):
        for key in params:  # parameters; BN running statistics move with the batch
            torch.testing.assert_close(started[net][key], released[key], rtol=0, atol=1e-6)
            if released[key].ndim > 1:  # conv / linear weights (BN scales start at 1 in both)
                assert not torch.allclose(fresh[net][key], released[key]), (net, key)
    # The run's weights load back as evaluation and FaceEmbedder load them.
    assert models.load_backbone(tmp_path / "runs" / "init").spec == spec


def test_init_from_weights_that_do_not_fit_is_a_clear_error(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    torch.save(models.build(ModelSpec("tinyfacenet", 64, 32)).state_dict(), tmp_path / "w.pt")
    assert train_main(_train_args(data, tmp_path / "runs",
                                  "--model.init_from", str(tmp_path / "w.pt"))) == 2
    err = capsys.readouterr().err
    assert "model.init_from" in err and "'embedding.2.weight' has shape [64, 4096]" in err
