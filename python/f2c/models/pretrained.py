"""Backbone weights from f2c checkpoints, plain state dicts and insightface arcface_torch files.

``init_backbone(module, spec, source)`` is how a run starts from released weights
(``model.init_from``): the backbone gets the weights, the head starts fresh. Accepted sources:

* an f2c training checkpoint (its ``probe`` or ``gallery`` state dict);
* a plain state dict saved with ``torch.save(module.state_dict())`` (``module.`` / ``_orig_mod.``
  prefixes are removed);
* an insightface arcface_torch IResNet ``backbone.pth``, whose parameter names
  (``conv1``, ``layer3.7.bn2``, ``downsample.0``, ``bn2``, ``fc``, ``features``) are mapped onto
  f2c's IResNet (``stem.0``, ``stages.k.body.2``, ``shortcut.0``, ``bn``, ``fc``, ``features``).
  The architectures are the same layer for layer, so the mapping is a renaming only.

Every mismatch (a missing or unexpected key, a shape) is an error naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from f2c.cli import UserError
from f2c.models.iresnet import IResNet
from f2c.models.spec import ModelSpec
from f2c.training.checkpoint import CheckpointError, safe_load

__all__ = [
    "MissingNetError",
    "ModelLoadError",
    "WeightsError",
    "arcface_iresnet_to_f2c",
    "backbone_state_dict",
    "init_backbone",
    "is_arcface_iresnet",
    "load_weights",
]

# arcface_torch IBasicBlock submodule → f2c IRBlock submodule (same order of layers).
_ARCFACE_BLOCK = {
    "bn1": "body.0",
    "conv1": "body.1",
    "bn2": "body.2",
    "prelu": "body.3",
    "conv2": "body.4",
    "bn3": "body.5",
    "downsample.0": "shortcut.0",
    "downsample.1": "shortcut.1",
}
# Top-level arcface_torch IResNet modules → f2c IResNet modules.
_ARCFACE_TOP = {
    "conv1": "stem.0",
    "bn1": "stem.1",
    "prelu": "stem.2",
    "bn2": "bn",
    "fc": "fc",
    "features": "features",
}
_ARCFACE_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)\.([^.]+)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# arcface_torch's training checkpoints (checkpoint_gpu_*.pt) and common exports nest the weights.
_NESTED_KEYS = ("state_dict_backbone", "state_dict")


class ModelLoadError(UserError, ValueError):
    """A checkpoint or weights file cannot give the requested backbone; the message names the
    file and the key (the CLIs print it as one line)."""


class WeightsError(ModelLoadError):
    """Weights do not fit the backbone (a key or a shape), or a source holds no backbone."""


class MissingNetError(ModelLoadError, KeyError):
    """The checkpoint has no such net ("probe" / "gallery")."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def load_file(path: Path) -> Mapping[str, Any]:
    """``torch.load(weights_only=True)`` on the CPU; an unreadable file or one that is not a
    dict is a ``ModelLoadError`` naming it."""
    try:
        loaded = safe_load(path)
    except CheckpointError as exc:  # missing, empty, truncated, or a pickle with code
        raise ModelLoadError(str(exc)) from exc
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"{path}: expected a dict checkpoint, got {type(loaded).__name__}")
    return loaded


def _is_state_dict(d: Mapping[str, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())


def backbone_state_dict(
    ckpt: Mapping[str, Any], *, net: str = "probe", what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The backbone state dict inside ``ckpt`` (names as stored, wrapper prefixes removed)."""
    if net not in ("probe", "gallery"):
        raise ModelLoadError(f"net must be 'probe' or 'gallery', got {net!r}")
    if "probe" in ckpt:
        if net not in ckpt:
            raise MissingNetError(f"{what}: no {net!r} weights (keys: {sorted(ckpt)})")
        state = ckpt[net]
    elif _is_state_dict(ckpt):
        if net != "probe":
            raise MissingNetError(f"{what}: a bare state dict has no {net!r} net")
        state = ckpt
    else:
        nested = next((k for k in _NESTED_KEYS if isinstance(ckpt.get(k), Mapping)), None)
        if nested is None or net != "probe":
            raise MissingNetError(f"{what}: no 'probe' state dict (keys: {sorted(ckpt)})")
        state = ckpt[nested]
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        raise WeightsError(f"{what}: the {net!r} entry is not a state dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        out[name] = value
    return out


def is_arcface_iresnet(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` uses arcface_torch's IResNet names (``conv1``, ``layer1.0.bn1``, ...)."""
    return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def arcface_iresnet_to_f2c(
    state: Mapping[str, torch.Tensor], layers: tuple[int, ...] | None = None
) -> dict[str, torch.Tensor]:
    """Rename an arcface_torch IResNet state dict to f2c's names.

    ``layers`` (blocks per stage of the target) is checked against the blocks found in
    ``state``: IResNet-100 weights do not go into an IResNet-50.
    """
    found = [0, 0, 0, 0]
    for key in state:
        m = _ARCFACE_LAYER.match(key)
        if m:
            stage, block = int(m.group(1)) - 1, int(m.group(2))
            found[stage] = max(found[stage], block + 1)
    if layers is not None and tuple(found) != tuple(layers):
        raise WeightsError(
            f"arcface_torch weights have {found} blocks per stage, the backbone {list(layers)}"
        )
    first_block = [sum(found[:s]) for s in range(4)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _ARCFACE_LAYER.match(key)
        if m:
            stage, block = int(m.group(1)) - 1, int(m.group(2))
            module, leaf = m.group(3), m.group(4)
            if module not in _ARCFACE_BLOCK:
                raise WeightsError(f"arcface_torch key {key!r}: unknown block part {module!r}")
            out[f"stages.{first_block[stage] + block}.{_ARCFACE_BLOCK[module]}.{leaf}"] = value
            continue
        module, _, leaf = key.rpartition(".")
        if module not in _ARCFACE_TOP:
            raise WeightsError(f"arcface_torch key {key!r}: not part of an IResNet backbone")
        out[f"{_ARCFACE_TOP[module]}.{leaf}"] = value
    return out


def load_weights(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    spec: ModelSpec | None = None,
    *,
    what: str = "weights",
) -> None:
    """Load a backbone state dict (f2c or arcface_torch names) into ``module``, strictly.

    Only ``num_batches_tracked`` counters may be absent (older exports omit them).
    """
    if is_arcface_iresnet(state):
        if not isinstance(module, IResNet):
            kind = spec.backbone if spec is not None else type(module).__name__
            raise WeightsError(
                f"{what}: arcface_torch IResNet weights cannot initialise a {kind} backbone"
            )
        try:
            state = arcface_iresnet_to_f2c(state, module.layers)
        except WeightsError as exc:
            raise WeightsError(f"{what}: {exc}") from exc
    target = module.state_dict()
    unexpected = [k for k in state if k not in target]
    if unexpected:
        raise WeightsError(
            f"{what}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all) for "
            f"{_describe(module, spec)}"
        )
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"{what}: missing key {missing[0]!r} ({len(missing)} in all) for "
            f"{_describe(module, spec)}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            hint = ""
            if spec is not None and spec.info.size_dependent_weights:
                hint = (f"; {spec.backbone} weights depend on the input size and this module is "
                        f"built for {spec.size}x{spec.size}")
            raise WeightsError(
                f"{what}: key {key!r} has shape {list(value.shape)}, the backbone needs "
                f"{list(target[key].shape)}{hint}"
            )
    full = dict(target)
    full.update(state)
    module.load_state_dict(full)


def _describe(module: nn.Module, spec: ModelSpec | None) -> str:
    if spec is None:
        return type(module).__name__
    return f"{spec.backbone} (embedding {spec.embedding_size}, input {spec.size})"


def init_backbone(
    module: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    spec: ModelSpec | None = None,
    *,
    net: str = "probe",
) -> None:
    """Load backbone weights into ``module`` from a file (or loaded dict), in place.

    ``source``: an f2c training checkpoint (``net`` picks probe or gallery), a run folder, a
    plain state dict, or an arcface_torch ``backbone.pth``. Loaded with ``weights_only=True``.
    """
    if isinstance(source, Mapping):
        ckpt, what = source, "init weights"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"init weights not found: {path}")
        ckpt, what = load_file(path), str(path)
    load_weights(module, backbone_state_dict(ckpt, net=net, what=what), spec, what=what)
