"""Face-recognition backbones by name: ``create("ir50" | "r50" | "mobilefacenet")``.

Every backbone takes normalised float images ``[N, 3, S, S]`` (``S = input_size(name)``) and
returns raw (not L2-normalised) embeddings ``[N, embedding_size]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from f2c.models.iresnet import IResNet, iresnet50
from f2c.models.mobilefacenet import MobileFaceNet, mobilefacenet
from f2c.models.resnet import ResNet, resnet50
from f2c.models.tiny import TinyFaceNet, tinyfacenet

__all__ = [
    "IResNet", "MobileFaceNet", "ResNet", "TinyFaceNet", "available", "create", "input_size"
]

_FACTORIES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "ir50": (iresnet50, 112),
    "r50": (resnet50, 224),
    "mobilefacenet": (mobilefacenet, 112),
    "tinyfacenet": (tinyfacenet, 64),  # small CPU net (default job, tests)
}


def available() -> list[str]:
    return sorted(_FACTORIES)


def _lookup(name: str) -> tuple[Callable[..., nn.Module], int]:
    try:
        return _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; expected one of {available()}") from None


def create(name: str, embedding_size: int = 512, **kwargs: Any) -> nn.Module:
    """A freshly initialised backbone ``name`` ending in ``embedding_size`` features."""
    factory, _ = _lookup(name)
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be positive, got {embedding_size}")
    return factory(embedding_size=embedding_size, **kwargs)


def input_size(name: str) -> int:
    """Side of the square input image the backbone ``name`` expects (112 or 224)."""
    return _lookup(name)[1]
