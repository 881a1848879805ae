"""ResNet-50 (bottleneck, stride on the 3×3 conv) for 224×224 faces, with an embedding head.

The trunk is the standard ImageNet ResNet-50 (7×7/2 conv, 3×3/2 max-pool, stages [3, 4, 6, 3] of
bottlenecks with 4× expansion; 23,508,032 parameters without the classifier). The ImageNet
classifier is replaced by global average pooling → dropout → linear (2048 → embedding) → BN1d.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["ResNet", "resnet50"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.body(x) + self.shortcut(x))
        return out


class ResNet(nn.Module):
    """Bottleneck ResNet; input [N, 3, S, S] → [N, embedding] (native S = 224).

    ``input_size`` is only checked: global average pooling makes the weights size-independent.
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int = 224,
    ) -> None:
        super().__init__()
        if input_size < 32 or input_size % 32:
            raise ValueError(f"ResNet input_size must be a multiple of 32, got {input_size}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks: list[nn.Module] = []
        cin = 64
        for stage, count in enumerate(layers):
            width = 64 * 2**stage
            for i in range(count):
                blocks.append(Bottleneck(cin, width, stride=2 if i == 0 and stage > 0 else 1))
                cin = width * Bottleneck.expansion
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for block in blocks:
            # Zero the last BN of each residual branch: blocks start as identities.
            assert isinstance(block, Bottleneck)
            last_bn = block.body[-1]
            assert isinstance(last_bn, nn.BatchNorm2d)
            nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        out: torch.Tensor = self.features(self.fc(self.dropout(x)))
        return out


def resnet50(embedding_size: int = 512, **kwargs: Any) -> ResNet:
    return ResNet([3, 4, 6, 3], embedding_size=embedding_size, **kwargs)
