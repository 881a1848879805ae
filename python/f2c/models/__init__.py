"""Face-recognition backbones by name, and the one way to build and reload them.

``build(ModelSpec("ir50", 512, input_size=96))`` makes a module; a checkpoint records
``spec.to_dict()`` so ``load_backbone(checkpoint)`` rebuilds exactly that module. Every backbone
takes normalised float images ``[N, 3, S, S]`` and returns raw (not L2-normalised) embeddings
``[N, embedding_size]``. Names: ``ir18``, ``ir34``, ``ir50``, ``ir100``, ``r50``,
``mobilefacenet``, ``tinyfacenet`` (``available()``).
"""

from __future__ import annotations

from f2c.models.iresnet import IResNet
from f2c.models.loading import (
    LoadedModel,
    create_model,
    load_backbone,
    load_checkpoint_model,
    read_checkpoint,
    resolve_checkpoint_path,
    spec_from_checkpoint,
)
from f2c.models.mobilefacenet import MobileFaceNet
from f2c.models.pretrained import (
    MissingNetError,
    ModelLoadError,
    WeightsError,
    init_backbone,
    load_weights,
)
from f2c.models.resnet import ResNet
from f2c.models.spec import (
    BackboneSpec,
    ModelSpec,
    available,
    backbone_spec,
    build,
    create,
    input_size,
    register,
    unregister,
)
from f2c.models.tiny import TinyFaceNet

__all__ = [
    "BackboneSpec",
    "IResNet",
    "LoadedModel",
    "MissingNetError",
    "MobileFaceNet",
    "ModelLoadError",
    "ModelSpec",
    "ResNet",
    "TinyFaceNet",
    "WeightsError",
    "available",
    "backbone_spec",
    "build",
    "create",
    "create_model",
    "init_backbone",
    "input_size",
    "load_backbone",
    "load_checkpoint_model",
    "load_weights",
    "read_checkpoint",
    "register",
    "resolve_checkpoint_path",
    "spec_from_checkpoint",
    "unregister",
]
