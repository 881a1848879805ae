"""MobileFaceNet (Chen et al., 2018) for 112×112 faces: ~1M parameters, fast on a CPU.

The layer table of the paper: 3×3/2 conv (64) → 3×3 depthwise conv (64) → inverted-residual
bottlenecks (expansion t, output c, repeats n, first stride s): (2, 64, 5, 2), (4, 128, 1, 2),
(2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1) → 1×1 conv (512) → 7×7 global depthwise conv
(linear) → 1×1 conv to the embedding (linear). BatchNorm after every conv; PReLU after the
non-linear ones. The paper's 128-d model has 0.99M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MobileFaceNet", "mobilefacenet"]

# (expansion t, output channels c, repeats n, stride of the first repeat s)
_BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if kernel == 3 else 0,
                  groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """Input [N, 3, S, S] → [N, embedding]; S a multiple of 16 (native 112) sizes the global
    depthwise conv (S/16 × S/16), so weights trained at one size fit only that size."""

    def __init__(self, embedding_size: int = 512, input_size: int = 112) -> None:
        super().__init__()
        if input_size < 16 or input_size % 16:
            raise ValueError(f"MobileFaceNet input_size must be a multiple of 16, got {input_size}")
        self.stem = nn.Sequential(_conv_bn(3, 64, 3, stride=2), _conv_bn(64, 64, 3, groups=64))
        blocks: list[nn.Module] = []
        cin = 64
        for t, c, n, s in _BOTTLENECKS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        spatial = input_size // 16
        self.head = nn.Sequential(
            _conv_bn(cin, 512, 1),
            # Global depthwise conv: a learned weighting of the 7×7 positions per channel.
            nn.Conv2d(512, 512, spatial, groups=512, bias=False),
            nn.BatchNorm2d(512),
            nn.Conv2d(512, embedding_size, 1, bias=False),
            nn.BatchNorm2d(embedding_size),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.blocks(self.stem(x)))
        return out.flatten(1)


def mobilefacenet(embedding_size: int = 512, **kwargs: int) -> MobileFaceNet:
    return MobileFaceNet(embedding_size=embedding_size, **kwargs)
