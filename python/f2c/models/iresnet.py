"""IResNet (the "improved" ResNet of ArcFace / insightface) for 112×112 faces.

Stem: 3×3 conv (64) → BN → PReLU, no pooling. Each stage opens with a stride-2 block; the block
is BN → 3×3 conv → BN → PReLU → 3×3 conv (stride) → BN, plus the identity or a 1×1 conv + BN
shortcut. Output: BN → dropout → flatten → linear (512·(S/16)² → embedding) → BN1d whose scale
is fixed at 1. Stages of widths 64, 128, 256, 512 with [2, 2, 2, 2] blocks (IResNet-18),
[3, 4, 6, 3] (34), [3, 4, 14, 3] (50) or [3, 13, 30, 3] (100), as in insightface's arcface_torch.
At a 512-d embedding and 112×112 input: 24.0M, 34.1M, 43.6M and 65.2M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["IRESNET_LAYERS", "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]

_BN_EPS = 1e-5

# Blocks per stage, by depth (the published IResNet configurations).
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=_BN_EPS),
            _conv3x3(cin, cout),
            nn.BatchNorm2d(cout, eps=_BN_EPS),
            nn.PReLU(cout),
            _conv3x3(cout, cout, stride),
            nn.BatchNorm2d(cout, eps=_BN_EPS),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=_BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x) + self.shortcut(x)
        return out


class IResNet(nn.Module):
    """IResNet with ``layers`` blocks per stage; input [N, 3, S, S] → [N, embedding].

    ``input_size`` S (a multiple of 16, native 112) sizes the final linear layer.
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        if len(layers) != len(widths):
            raise ValueError(f"IResNet needs {len(widths)} stages, got {len(layers)}")
        if input_size < 16 or input_size % 16:
            raise ValueError(f"IResNet input_size must be a multiple of 16, got {input_size}")
        self.layers = tuple(int(n) for n in layers)
        self.stem = nn.Sequential(
            _conv3x3(3, 64), nn.BatchNorm2d(64, eps=_BN_EPS), nn.PReLU(64)
        )
        blocks: list[nn.Module] = []
        cin = 64
        for width, count in zip(widths, layers, strict=True):
            for i in range(count):
                blocks.append(IRBlock(cin, width, stride=2 if i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*blocks)
        spatial = input_size // 2 ** len(widths)
        self.bn = nn.BatchNorm2d(cin, eps=_BN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)  # scale fixed at 1, as in insightface
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.dropout(self.bn(x)).flatten(1)
        out: torch.Tensor = self.features(self.fc(x))
        return out


def _iresnet(depth: int, embedding_size: int, **kwargs: Any) -> IResNet:
    return IResNet(IRESNET_LAYERS[depth], embedding_size=embedding_size, **kwargs)


def iresnet18(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    return _iresnet(18, embedding_size, **kwargs)


def iresnet34(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    return _iresnet(34, embedding_size, **kwargs)


def iresnet50(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    return _iresnet(50, embedding_size, **kwargs)


def iresnet100(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    return _iresnet(100, embedding_size, **kwargs)
