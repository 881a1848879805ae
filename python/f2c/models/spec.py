"""One description of a backbone, used by training, evaluation, export and embedding.

Two layers:

* :class:`BackboneSpec` — what a registered *name* is: its factory, native input size, and which
  other input sizes it can be built for (and whether its weights then change shape).
* :class:`ModelSpec` — one concrete module: ``backbone``, ``embedding_size``, ``input_size``.
  ``build(spec)`` makes it; ``spec.to_dict()`` is what a checkpoint records under ``"model"`` so
  that the exact module can be rebuilt later (``spec_from_checkpoint``).

Every factory is called as ``factory(embedding_size=D, input_size=S)`` and returns a module
mapping normalised float images ``[N, 3, S, S]`` to raw (not L2-normalised) ``[N, D]``
embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from f2c.models.iresnet import iresnet18, iresnet34, iresnet50, iresnet100
from f2c.models.mobilefacenet import mobilefacenet
from f2c.models.resnet import resnet50
from f2c.models.tiny import tinyfacenet

__all__ = [
    "BackboneSpec",
    "ModelSpec",
    "available",
    "backbone_spec",
    "build",
    "create",
    "input_size",
    "register",
    "unregister",
]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone name.

    ``size_multiple``: input sizes the backbone can be built for are positive multiples of it
    (the native size is one). ``size_dependent_weights``: whether a parameter's shape depends on
    the input size (IResNet's fc, MobileFaceNet's global depthwise conv), so weights trained at
    one size load only into a module built for that size.
    """

    name: str
    factory: Callable[..., nn.Module]
    native_size: int
    size_multiple: int = 16
    size_dependent_weights: bool = True
    description: str = ""

    def check_input_size(self, size: int) -> int:
        size = int(size)
        if size < self.size_multiple or size % self.size_multiple:
            raise ValueError(
                f"backbone {self.name!r} cannot be built for {size}x{size} inputs: the side must "
                f"be a positive multiple of {self.size_multiple} (native {self.native_size})"
            )
        return size


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add a backbone name (e.g. your own network) to the registry; returns ``spec``."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    spec.check_input_size(spec.native_size)
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


for _spec in (
    BackboneSpec("ir18", iresnet18, 112, description="IResNet-18"),
    BackboneSpec("ir34", iresnet34, 112, description="IResNet-34"),
    BackboneSpec("ir50", iresnet50, 112, description="IResNet-50"),
    BackboneSpec("ir100", iresnet100, 112, description="IResNet-100"),
    BackboneSpec("r50", resnet50, 224, size_multiple=32, size_dependent_weights=False,
                 description="ResNet-50 (bottleneck) with an embedding head"),
    BackboneSpec("mobilefacenet", mobilefacenet, 112, description="MobileFaceNet"),
    BackboneSpec("tinyfacenet", tinyfacenet, 64, size_dependent_weights=False,
                 description="small CPU net (default job, tests)"),
):
    register(_spec)


def available() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; expected one of {available()}") from None


def input_size(name: str) -> int:
    """The native side of the square input image of backbone ``name`` (e.g. 112 or 224)."""
    return backbone_spec(name).native_size


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild one backbone module exactly (not its weights)."""

    backbone: str
    embedding_size: int = 512
    input_size: int | None = None  # None: the backbone's native size

    def __post_init__(self) -> None:
        info = backbone_spec(self.backbone)
        if int(self.embedding_size) < 1:
            raise ValueError(f"embedding_size must be positive, got {self.embedding_size}")
        object.__setattr__(self, "embedding_size", int(self.embedding_size))
        size = info.native_size if self.input_size is None else self.input_size
        object.__setattr__(self, "input_size", info.check_input_size(size))

    @property
    def size(self) -> int:
        """The input side (never None after construction)."""
        assert self.input_size is not None
        return self.input_size

    @property
    def info(self) -> BackboneSpec:
        return backbone_spec(self.backbone)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "embedding_size": self.embedding_size,
            "input_size": self.size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, what: str = "model spec") -> ModelSpec:
        """From ``to_dict()`` output (other keys, e.g. ``image_size``, are ignored)."""
        missing = [k for k in ("backbone", "embedding_size") if d.get(k) is None]
        if missing:
            raise ValueError(f"{what}: missing {', '.join(missing)} (have {sorted(d)})")
        size = d.get("input_size")
        return cls(str(d["backbone"]), int(d["embedding_size"]),
                   None if size is None else int(size))


def build(spec: ModelSpec) -> nn.Module:
    """A freshly initialised module for ``spec``."""
    return spec.info.factory(embedding_size=spec.embedding_size, input_size=spec.size)


def create(
    name: str, embedding_size: int = 512, input_size: int | None = None
) -> nn.Module:
    """A freshly initialised backbone ``name`` (``build(ModelSpec(...))`` in one call)."""
    return build(ModelSpec(name, embedding_size, input_size))
