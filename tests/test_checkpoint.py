"""Checkpoint files: atomic replace, weights_only loading, RNG capture/restore."""

# The legacy numpy global generator is exactly what capture_rng_state saves.
# ruff: noqa: NPY002

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from f2c.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "checkpoint.pt"
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 1}, path)
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 2, "w": torch.ones(3)}, path)
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 1}, path)

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"format": CHECKPOINT_FORMAT, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_load_refuses_missing_foreign_and_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"probe": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an f2c training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    # Arbitrary objects are refused by weights_only loading.
    torch.save({"format": CHECKPOINT_FORMAT, "obj": Path("x")}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(tmp_path / "unsafe.pt")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leave a cached gaussian behind
    state = capture_rng_state()
    expected = (torch.rand(4), np.random.standard_normal(3), random.random())
    atomic_save({"format": CHECKPOINT_FORMAT, "rng": state}, tmp_path / "c.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(4), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
