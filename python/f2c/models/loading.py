"""Rebuild a trained backbone from a checkpoint: the one route for evaluation, export, embedding.

A checkpoint is either an f2c training checkpoint (``probe`` / ``gallery`` state dicts plus a
``model`` section written by ``ModelSpec.to_dict()``), or a bare state dict, for which the backbone
name and embedding size must be given. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from f2c.models.pretrained import ModelLoadError, backbone_state_dict, load_file, load_weights
from f2c.models.spec import ModelSpec, backbone_spec, build

__all__ = [
    "CHECKPOINT_FILE",
    "LoadedModel",
    "create_model",
    "load_backbone",
    "load_checkpoint_model",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "spec_from_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.pt"  # what a training run folder holds (f2c.training.run)


@dataclass
class LoadedModel:
    module: torch.nn.Module
    backbone: str
    embedding_size: int
    image_size: int | None  # the input side the module was built for (spec.input_size)
    model_id: str  # identifies the weights (e.g. for a feature store)
    spec: ModelSpec | None = None


def create_model(name: str, embedding_size: int, input_size: int | None = None) -> torch.nn.Module:
    """A freshly initialised backbone (``build(ModelSpec(name, embedding_size, input_size))``)."""
    return build(ModelSpec(name, embedding_size, input_size))


def _lookup(ckpt: Mapping[str, Any], key: str) -> Any:
    """``key`` from the checkpoint's ``model`` section, else ``config.model``, else ``config``."""
    config = ckpt.get("config")
    config_model = config.get("model") if isinstance(config, Mapping) else None
    for section in (ckpt.get("model"), config_model, config):
        if isinstance(section, Mapping) and key in section:
            return section[key]
    return None


def _default_input_size(name: str) -> int | None:
    try:
        return backbone_spec(name).native_size
    except ValueError:
        return None


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a training run folder (its ``checkpoint.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint file or run folder; must be a dict."""
    return dict(load_file(resolve_checkpoint_path(path)))


def spec_from_checkpoint(
    ckpt: Mapping[str, Any],
    *,
    backbone: str | None = None,
    embedding_size: int | None = None,
    input_size: int | None = None,
    what: str = "checkpoint",
) -> ModelSpec:
    """The ``ModelSpec`` a checkpoint was trained with; arguments override what it records.

    The input size comes from ``input_size``, else the recorded ``image_size`` (older
    checkpoints), else the backbone's native size.
    """
    name = backbone or _lookup(ckpt, "backbone")
    size = embedding_size or _lookup(ckpt, "embedding_size")
    if name is None or size is None:
        raise ModelLoadError(
            f"{what}: backbone / embedding size not recorded; pass them (--model and "
            f"--embedding-size)"
        )
    side = input_size or _lookup(ckpt, "input_size")
    if side is None:
        image_size = _lookup(ckpt, "image_size")
        side = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    try:
        return ModelSpec(str(name), int(size), None if side is None else int(side))
    except ValueError as exc:
        raise ModelLoadError(f"{what}: {exc}") from exc


def load_backbone(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    net: str = "probe",
    backbone: str | None = None,
    embedding_size: int | None = None,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build the recorded backbone and load ``net`` ("probe" or "gallery") into it, in eval mode.

    ``checkpoint``: a file, a training run folder, or an already loaded dict. ``module.`` (DDP)
    and ``_orig_mod.`` (torch.compile) prefixes are removed; insightface arcface_torch IResNet
    names are mapped (see ``f2c.models.pretrained``).
    """
    if isinstance(checkpoint, Mapping):
        ckpt, what = checkpoint, "checkpoint"
        model_id = f"in-memory|{net}|{id(checkpoint)}"
    else:
        path = resolve_checkpoint_path(checkpoint)
        ckpt, what = read_checkpoint(path), str(path)
        st = path.stat()
        model_id = f"{path.resolve()}|{net}|{st.st_size}|{st.st_mtime_ns}"
    state = backbone_state_dict(ckpt, net=net, what=what)
    spec = spec_from_checkpoint(ckpt, backbone=backbone, embedding_size=embedding_size,
                                input_size=input_size, what=what)
    module = build(spec)
    load_weights(module, state, spec, what=f"{what} ({net})")
    module.to(device).eval()
    return LoadedModel(module, spec.backbone, spec.embedding_size, spec.size, model_id, spec)


def load_checkpoint_model(
    path: str | Path,
    *,
    net: str = "probe",
    backbone: str | None = None,
    embedding_size: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """``load_backbone`` under the name ``f2c.evaluate`` has always used."""
    return load_backbone(path, net=net, backbone=backbone, embedding_size=embedding_size,
                         device=device)
