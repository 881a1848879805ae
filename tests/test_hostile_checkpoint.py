"""Hostile checkpoints: each malformed or malicious file is one ``CheckpointError`` line naming
the file and what is wrong — before a model, a head or a pool index is built from it — instead
of a traceback, a silently resumed run or an abort (a pool capacity edited to 2**32 - 2).

``resume_like`` (run in a child process) follows what ``train --resume`` does with a file:
load it, read its config, check it against the model it builds, load the probe, then the F²C
head and its pool index.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_support import Hostile, explain, run_cases

from f2c.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
)

BACKBONE, DIM, CLASSES, POOL, BATCH = "tinyfacenet", 16, 40, 32, 8


def valid_state() -> dict[str, Any]:
    """A complete checkpoint of a tiny F²C run, as ``Trainer.state_dict`` lays it out."""
    return copy.deepcopy(_valid_state())


@functools.cache
def _valid_state() -> dict[str, Any]:
    from f2c.config import Config
    from f2c.heads.f2c_head import DynamicClassPool
    from f2c.heads.margins import MarginConfig
    from f2c.models import create

    torch.manual_seed(0)
    probe = create(BACKBONE, DIM)
    gallery = create(BACKBONE, DIM)
    head = DynamicClassPool(CLASSES, DIM, POOL, BATCH, MarginConfig("arcface", 0.5))
    head.index.assign([4, 9, 2])
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.1, momentum=0.9)
    return {
        "format": CHECKPOINT_FORMAT,
        "config": Config().to_dict(),
        "model": {"backbone": BACKBONE, "embedding_size": DIM, "image_size": [32, 32],
                  "input_size": 32},
        "probe": probe.state_dict(),
        "gallery": gallery.state_dict(),
        "head": head.full_state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": {},
        "epoch": 1,
        "step_in_epoch": 2,
        "global_step": 14,
        "steps_per_epoch": 12,
        "world_size": 1,
        "batch_size": BATCH,
        "identity_position": 14,
        "finished": False,
        "rng": [capture_rng_state()],
    }


# ------------------------------------------------------------------ child side


def resume_like(path: str) -> dict[str, Any]:
    """What ``train --resume`` does with ``path``, up to a restored model, optimiser, RNG and
    head."""
    from f2c.heads.f2c_head import DynamicClassPool
    from f2c.heads.margins import MarginConfig
    from f2c.models import create
    from f2c.training import checkpoint

    try:
        state = checkpoint.load_checkpoint(path, complete=True)
    except TypeError:  # a version without full validation
        state = checkpoint.load_checkpoint(path)
    config = state["config"]
    model = create(state["model"]["backbone"], state["model"]["embedding_size"])
    if hasattr(checkpoint, "validate_checkpoint"):
        reference = model.state_dict()
        checkpoint.validate_checkpoint(
            state, path, expected={"probe": reference, "gallery": reference}
        )
    model.load_state_dict(state["probe"])
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).load_state_dict(state["optimizer"])
    checkpoint.restore_rng_state(state["rng"][0])
    h = state["head"]
    head = DynamicClassPool(h["num_classes"], h["embedding_size"], h["pool_size"],
                            state["batch_size"], MarginConfig("arcface", 0.5))
    head.load_full_state_dict(h)
    return {"global_step": state["global_step"], "epoch": state["epoch"],
            "finished": state["finished"], "config_keys": len(config)}


# ------------------------------------------------------------------ cases


class Evil:
    """A pickle payload: running it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _edit(state: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    change(state)
    return state


def _reshape_first(net: dict[str, torch.Tensor]) -> None:
    key = next(k for k, v in net.items() if v.dim() >= 2)
    net[key] = torch.zeros(*net[key].shape[:-1], net[key].shape[-1] + 1)


def hostile_files(tmp: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """name → (file, words its error must contain besides the path)."""
    made: dict[str, tuple[Path, tuple[str, ...]]] = {}

    def save(name: str, needles: tuple[str, ...], change: Callable[[dict[str, Any]], None]) -> None:
        path = tmp / f"{name}.pt"
        torch.save(_edit(valid_state(), change), path)
        made[name] = (path, needles)

    def raw(name: str, data: bytes, needles: tuple[str, ...] = ()) -> None:
        path = tmp / f"{name}.pt"
        path.write_bytes(data)
        made[name] = (path, needles)

    save("no_config", ("config",), lambda s: s.pop("config"))
    save("no_head", ("head",), lambda s: s.pop("head"))
    save("negative_global_step", ("global_step",), lambda s: s.update(global_step=-5))
    save("negative_epoch", ("epoch",), lambda s: s.update(epoch=-1))
    save("step_past_epoch", ("step_in_epoch",), lambda s: s.update(step_in_epoch=99))
    save("finished_not_bool", ("finished",), lambda s: s.update(finished="yes"))
    save("probe_and_gallery_wrong_shape", ("probe",),
         lambda s: (_reshape_first(s["probe"]), _reshape_first(s["gallery"])))
    save("gallery_differs_from_probe", ("gallery",), lambda s: _reshape_first(s["gallery"]))
    save("probe_missing_tensor", ("probe",), lambda s: s["probe"].popitem())
    save("embedding_size_edited", ("embedding_size",),
         lambda s: s["model"].update(embedding_size=DIM * 2))
    save("prototypes_wrong_shape", ("prototypes",),
         lambda s: s["head"].update(prototypes=torch.zeros(2, POOL, DIM + 1)))
    save("pool_capacity_2_32_minus_2", ("capacity", "4294967294"),
         lambda s: s["head"]["index"].update(capacity=2**32 - 2))
    save("pool_size_2_32_minus_2", ("prototypes",),
         lambda s: s["head"].update(pool_size=2**32 - 2))
    save("index_keys_beyond_pool", ("index",),
         lambda s: s["head"]["index"].update(keys=torch.arange(POOL + 1),
                                             slots=torch.arange(POOL + 1)))
    save("rng_wrong_size", ("rng",),
         lambda s: s["rng"][0]["numpy"].update(key=torch.zeros(5, dtype=torch.int64)))
    save("optimizer_not_a_state", ("optimizer",), lambda s: s.update(optimizer=[1, 2]))

    good = io.BytesIO()
    torch.save(valid_state(), good)
    data = good.getvalue()
    raw("truncated", data[: len(data) // 2], ("truncated",))
    raw("empty", b"", ("empty",))
    raw("garbage", bytes((i * 31 + 7) % 256 for i in range(2048)))
    raw("not_a_dict", _torch_bytes([1, 2, 3]), ("not an f2c training checkpoint",))
    marker = tmp / "payload-ran"
    raw("pickle_with_code", _torch_bytes({"format": CHECKPOINT_FORMAT, "x": Evil(marker)}),
        ("refused",))
    raw("legacy_pickle_with_code", pickle.dumps({"x": Evil(marker)}))
    return made


def _torch_bytes(obj: Any) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def hostile_cases(tmp: Path) -> list[Hostile]:
    return [
        Hostile(name, "resume_like", [str(path)], errors=("CheckpointError",),
                needles=(str(path), *needles), memory_gib=8)
        for name, (path, needles) in hostile_files(tmp).items()
    ]


CASE_NAMES = [
    "no_config", "no_head", "negative_global_step", "negative_epoch", "step_past_epoch",
    "finished_not_bool", "probe_and_gallery_wrong_shape", "gallery_differs_from_probe",
    "probe_missing_tensor", "embedding_size_edited", "prototypes_wrong_shape",
    "pool_capacity_2_32_minus_2", "pool_size_2_32_minus_2", "index_keys_beyond_pool",
    "rng_wrong_size", "optimizer_not_a_state", "truncated", "empty", "garbage", "not_a_dict",
    "pickle_with_code", "legacy_pickle_with_code",
]


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def results(cases_dir: Path) -> dict[str, Any]:
    found = run_cases("test_hostile_checkpoint", hostile_cases(cases_dir))
    assert sorted(found) == sorted(CASE_NAMES)
    return found


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_checkpoint_is_one_clear_line(results: dict[str, Any], name: str) -> None:
    kind, outcome = results[name]
    assert kind == "clean", explain(name, kind, outcome)
    assert "\n" not in outcome.message.strip()


def test_no_payload_ran(results: dict[str, Any], cases_dir: Path) -> None:
    assert results["pickle_with_code"][0] == "clean"
    assert not (cases_dir / "payload-ran").exists()


def test_a_valid_checkpoint_passes_every_check(tmp_path: Path) -> None:
    from f2c.models import create
    from f2c.training.checkpoint import validate_checkpoint

    path = tmp_path / "good.pt"
    torch.save(valid_state(), path)
    state = load_checkpoint(path, complete=True)
    reference = create(BACKBONE, DIM).state_dict()
    validate_checkpoint(state, path, expected={"probe": reference, "gallery": reference})
    # DDP's "module." prefixes are names of the same tensors.
    state["probe"] = {f"module.{k}": v for k, v in state["probe"].items()}
    validate_checkpoint(state, path, expected={"probe": reference})


def test_partial_files_load_without_complete(tmp_path: Path) -> None:
    """A run folder's checkpoint is peeked at (``finished``) without requiring every section;
    what is present is still checked."""
    path = tmp_path / "partial.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "finished": True}, path)
    assert load_checkpoint(path)["finished"] is True
    with pytest.raises(CheckpointError, match="no 'config'"):
        load_checkpoint(path, complete=True)
    torch.save({"format": CHECKPOINT_FORMAT, "global_step": -1}, path)
    with pytest.raises(CheckpointError, match=f"^checkpoint {path}: 'global_step'"):
        load_checkpoint(path)


def test_safe_load_names_the_file_for_foreign_files(tmp_path: Path) -> None:
    from f2c.training.checkpoint import safe_load

    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.ones(2)}, bare)
    assert torch.equal(safe_load(bare)["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match=f"not found: {tmp_path / 'nope.pt'}"):
        safe_load(tmp_path / "nope.pt")
