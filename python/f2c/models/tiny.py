"""``tinyfacenet``: a small plain CNN for CPU runs (the embedded default job, tests).

Six 3×3 conv–BN–ReLU layers (four of stride 2), an adaptive average pool to 4×4 (the identity
at the native 64×64 input, so the same weights accept any input size), then a linear embedding
with a final BatchNorm (the insightface output-layer pattern). About 1M parameters and
~70 MFLOPs per 64×64 image — roughly 10× cheaper than MobileFaceNet at 112×112,
which on a 2-core CPU is dominated by depthwise and PReLU backward kernels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyFaceNet", "tinyfacenet"]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class TinyFaceNet(nn.Module):
    """Input ``[N, 3, S, S]`` (S a multiple of 16, native 64) → ``[N, embedding_size]``.

    ``input_size`` is only checked: the layers do not depend on it.
    """

    def __init__(
        self,
        embedding_size: int = 128,
        input_size: int = 64,
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if input_size < 16 or input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(3, w1, 2),
            *_conv_bn_relu(w1, w2, 2),
            *_conv_bn_relu(w2, w2, 1),
            *_conv_bn_relu(w2, w3, 2),
            *_conv_bn_relu(w3, w3, 1),
            *_conv_bn_relu(w3, w4, 2),
        )
        self.embedding = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(w4 * 16, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.embedding(self.features(x))
        return out


def tinyfacenet(embedding_size: int = 128, **kwargs: int) -> TinyFaceNet:
    return TinyFaceNet(embedding_size=embedding_size, **kwargs)  # type: ignore[arg-type]
