"""Checkpoint files: atomic writes, safe loads, and RNG state as plain tensors.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``; it is written to a temporary file in the same folder, fsynced
and renamed over the old one, so a crash mid-write leaves the previous checkpoint intact.

Loading never trusts the file: an empty, truncated or foreign file, a pickle that would run
code, and a state whose sections are missing or inconsistent (negative steps, tensors whose
shapes disagree with the sizes recorded beside them or with the model, a pool index whose
capacity is not the pool's) each raise one :class:`CheckpointError` line naming the file and
what is wrong, before anything is built from the state.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "atomic_save",
    "capture_rng_state",
    "check_state_shapes",
    "load_checkpoint",
    "restore_rng_state",
    "safe_load",
    "validate_checkpoint",
]

CHECKPOINT_FORMAT = "f2c-train-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"  # in the run folder


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not an f2c training checkpoint."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems / platforms do not open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` via a fsynced temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # only still there when writing failed
    _fsync_dir(path.parent)
    return path


def _unpickling_reason(exc: BaseException) -> str:
    """One line out of torch's multi-paragraph weights-only refusal."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return (
                f"refused: {line.rstrip('.')} (a pickle that would run code or build objects "
                "beyond tensors and plain values)"
            )
    for line in lines:
        if line.startswith(("Unsupported", "Trying")):
            return f"not a torch checkpoint, or corrupt ({line.rstrip('.')})"
    return f"not a torch checkpoint, or corrupt ({lines[0] if lines else type(exc).__name__})"


def safe_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` whose failures are one :class:`CheckpointError`
    line naming the file: missing, empty, truncated or corrupt, or a pickle with code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot load checkpoint {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes of the weights-only unpickler
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"cannot load checkpoint {path}: {_unpickling_reason(exc)}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # torch's zip reader appends a paragraph of advice; the first sentence says it.
        first = first.split(". ")[0].rstrip(".")
        raise CheckpointError(
            f"cannot load checkpoint {path}: truncated or corrupt file ({first})"
        ) from exc


def load_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, complete: bool = False
) -> dict[str, Any]:
    """Load an f2c training checkpoint with ``weights_only=True``, check its format tag and
    validate it (:func:`validate_checkpoint`; ``complete`` also requires every section a
    resume needs — pass it from ``train --resume``)."""
    path = Path(path)
    state = safe_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an f2c training checkpoint (format {found!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    validate_checkpoint(state, path, complete=complete)
    return state


# ---------------------------------------------------------------------------------------------
# Validation: every section a resume reads, checked before anything is built from it.

#: Sections ``Trainer.load_state_dict`` reads, and what each must be.
_INT_FIELDS = {
    "epoch": 0,
    "step_in_epoch": 0,
    "global_step": 0,
    "identity_position": 0,  # written before the step refactor only; checked when present
    "steps_per_epoch": 1,
    "world_size": 1,
    "batch_size": 1,
}
_REQUIRED = ("config", "model", "probe", "gallery", "head", "optimizer", "scaler", "finished",
             "rng", *(k for k in _INT_FIELDS if k != "identity_position"))


def _fail(path: Path | str, message: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _check_tensor_dict(path: Path | str, name: str, value: Any) -> None:
    if not isinstance(value, Mapping) or not value:
        raise _fail(path, f"{name!r} must be a non-empty dict of tensors")
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise _fail(path, f"{name!r} entry {key!r} is a {type(tensor).__name__}, not a tensor")


def _check_head(path: Path | str, name: str, head: Any, embedding_size: int | None) -> None:
    """Sizes of a head state against its own tensors (and the model's embedding size)."""
    if not isinstance(head, Mapping) or not isinstance(head.get("kind"), str):
        raise _fail(path, f"{name!r} must be a dict with a 'kind'")
    sizes = {}
    for key in ("num_classes", "embedding_size", "pool_size"):
        if key in head:
            value = head[key]
            if not _is_int(value) or value < 1:
                raise _fail(path, f"{name}.{key} must be a positive int, got {value!r}")
            sizes[key] = value
    d = sizes.get("embedding_size")
    if embedding_size is not None and d is not None and d != embedding_size:
        raise _fail(path, f"{name}.embedding_size is {d} but the model's is {embedding_size}")
    if head["kind"] == "f2c":
        q = sizes.get("pool_size")
        if q is None or d is None:
            raise _fail(path, f"{name} (an F²C head) lacks pool_size or embedding_size")
        if _shape(head.get("prototypes")) != (2, q, d):
            raise _fail(path, f"{name}.prototypes has shape {_shape(head.get('prototypes'))}, "
                              f"expected {(2, q, d)} from pool_size and embedding_size")
        if _shape(head.get("pointers")) != (q,):
            raise _fail(path, f"{name}.pointers has shape {_shape(head.get('pointers'))}, "
                              f"expected {(q,)}")
        _check_pool_index(path, f"{name}.index", head.get("index"), q)
    elif head["kind"] in ("fc", "partial_fc") and "weight" in head:
        c = sizes.get("num_classes")
        if c is None or d is None or _shape(head["weight"]) != (c, d):
            raise _fail(path, f"{name}.weight has shape {_shape(head['weight'])}, expected "
                              f"(num_classes, embedding_size) = {(c, d)}")


def _check_pool_index(path: Path | str, name: str, index: Any, pool_size: int) -> None:
    """The LRU state's capacity is the pool's, and its arrays fit it (before any allocation)."""
    if not isinstance(index, Mapping):
        raise _fail(path, f"{name} must be a dict (a ClassPoolIndex state)")
    capacity = index.get("capacity")
    if capacity != pool_size or not _is_int(capacity):
        raise _fail(path, f"{name}.capacity is {capacity!r} but the pool holds {pool_size} slots")
    lengths = []
    for key in ("keys", "slots"):
        shape = _shape(index.get(key))
        if shape is None or len(shape) != 1:
            raise _fail(path, f"{name}.{key} must be a 1-D tensor, got {shape}")
        lengths.append(shape[0])
    if lengths[0] != lengths[1] or lengths[0] > pool_size:
        raise _fail(path, f"{name} holds {lengths[0]} keys and {lengths[1]} slots for a pool of "
                          f"{pool_size}")


def _check_rng(path: Path | str, rng: Any) -> None:
    if isinstance(rng, Mapping):
        rng = [rng]  # one process's capture_rng_state()
    if not isinstance(rng, list) or not rng:
        raise _fail(path, "'rng' must be a non-empty list (one state per rank)")
    for rank, state in enumerate(rng):
        where = f"rng[{rank}]"
        if not isinstance(state, Mapping):
            raise _fail(path, f"{where} must be a dict")
        torch_state = state.get("torch")
        if not isinstance(torch_state, torch.Tensor) or torch_state.dim() != 1:
            raise _fail(path, f"{where}.torch must be a 1-D tensor")
        np_state, py_state = state.get("numpy"), state.get("python")
        if not isinstance(np_state, Mapping) or _shape(np_state.get("key")) != (624,):
            raise _fail(path, f"{where}.numpy.key must be a tensor of 624 words")
        pos = np_state.get("pos")
        if not _is_int(pos) or not 0 <= pos <= 624:
            raise _fail(path, f"{where}.numpy.pos must be an int in [0, 624], got {pos!r}")
        if not isinstance(py_state, Mapping) or _shape(py_state.get("internal")) != (625,):
            raise _fail(path, f"{where}.python.internal must be a tensor of 625 words")


def validate_checkpoint(
    state: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    complete: bool = True,
    expected: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Check a loaded training checkpoint; raise one :class:`CheckpointError` line naming
    ``path`` and what is wrong.

    Every section present is checked (counters are non-negative ints, ``finished`` a bool,
    ``probe``/``gallery`` dicts of tensors of the same shapes, head tensors of the sizes recorded
    beside them, the pool index's capacity equal to the pool size, RNG states of the right
    sizes). ``complete`` requires every section that ``Trainer.load_state_dict`` reads.
    ``expected`` maps ``"probe"``/``"gallery"`` to the model's own ``state_dict()``, whose
    names and shapes the saved tensors must match (:func:`check_state_shapes`).
    """
    if complete:
        missing = [key for key in _REQUIRED if key not in state]
        if missing:
            raise _fail(path, f"no {', '.join(repr(k) for k in missing)} section (an incomplete "
                              "or foreign checkpoint)")
    for key, minimum in _INT_FIELDS.items():
        if key in state:
            value = state[key]
            if not _is_int(value) or value < minimum:
                raise _fail(path, f"{key!r} must be an int >= {minimum}, got {value!r}")
    if "step_in_epoch" in state and "steps_per_epoch" in state:
        if state["step_in_epoch"] > state["steps_per_epoch"]:
            raise _fail(path, f"step_in_epoch {state['step_in_epoch']} is past steps_per_epoch "
                              f"{state['steps_per_epoch']}")
    if "finished" in state and not isinstance(state["finished"], bool):
        raise _fail(path, f"'finished' must be a bool, got {state['finished']!r}")
    for key in ("config", "scaler"):
        if key in state and not isinstance(state[key], Mapping):
            raise _fail(path, f"{key!r} must be a dict, got {type(state[key]).__name__}")
    embedding_size = None
    if "model" in state:
        model = state["model"]
        if not isinstance(model, Mapping) or not isinstance(model.get("backbone"), str):
            raise _fail(path, "'model' must be a dict naming the backbone")
        embedding_size = model.get("embedding_size")
        if not _is_int(embedding_size) or embedding_size < 1:
            raise _fail(path, f"model.embedding_size must be a positive int, got "
                              f"{embedding_size!r}")
    for net in ("probe", "gallery"):
        if net in state:
            _check_tensor_dict(path, net, state[net])
    if "probe" in state and "gallery" in state:
        # The gallery is the probe's EMA twin: same names, same shapes.
        check_state_shapes(path, "gallery", state["gallery"], state["probe"], against="probe")
    if "head" in state:
        _check_head(path, "head", state["head"], embedding_size)
    if "optimizer" in state:
        optimizer = state["optimizer"]
        if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("param_groups"),
                                                                list):
            raise _fail(path, "'optimizer' must be an optimizer state dict (with param_groups)")
        momentum = optimizer.get("head_momentum_full")
        if momentum is not None:
            _check_head(path, "optimizer.head_momentum_full", momentum, embedding_size)
    if "rng" in state:
        _check_rng(path, state["rng"])
    for net, reference in (expected or {}).items():
        if net in state:
            check_state_shapes(path, net, state[net], reference, against="the model")


def check_state_shapes(
    path: str | os.PathLike[str],
    name: str,
    saved: Mapping[str, Any],
    reference: Mapping[str, Any],
    *,
    against: str = "the model",
) -> None:
    """Raise one :class:`CheckpointError` line if ``saved`` tensors do not have the names and
    shapes of ``reference`` (a ``state_dict()``); ``module.`` prefixes are ignored."""
    def shapes(d: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
        return {k.removeprefix("module."): _shape(v) for k, v in d.items()}

    got, want = shapes(saved), shapes(reference)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} tensors of {against} (first: {missing[0]!r})")
        if extra:
            parts.append(f"has {len(extra)} tensors {against} lacks (first: {extra[0]!r})")
        raise _fail(path, f"{name!r} {' and '.join(parts)}")
    for key, shape in got.items():
        if shape != want[key]:
            raise _fail(path, f"{name}.{key} has shape {shape} but {against} expects "
                              f"{want[key]}")


# ---------------------------------------------------------------------------------------------
# RNG state as tensors / plain values (numpy and python states are tuples with arrays inside).


def capture_rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy-global and python ``random`` states."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002  # saving the global
    if np_state["bit_generator"] != "MT19937":  # numpy's global RandomState is always MT19937
        raise RuntimeError(f"unexpected numpy global generator {np_state['bit_generator']}")
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002  # restoring the legacy global state
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            # Different machine layout: restore what maps, leave the rest seeded.
            cuda = cuda[: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s.cpu(), i)
