"""A tiny synthetic training db and the command line of a tiny training run, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from f2c.data.synthetic import SyntheticDataset, make_synthetic_dataset

# 24 identities x 4 images of 32x32; 20 held-out identities, 10 folds of 6 pairs.
TINY = {
    "num_identities": 24,
    "images_per_identity": 4,
    "num_test_identities": 20,
    "pairs_per_fold": 6,
    "image_size": 32,
    "seed": 0,
}


def tiny_dataset(folder: Path) -> SyntheticDataset:
    return make_synthetic_dataset(folder, **TINY)


def tiny_run_args(data: SyntheticDataset, out_dir: Path, *extra: str) -> list[str]:
    """A few-second run: tinyfacenet at 32 px, batch 8 (12 steps per epoch)."""
    return [
        "--data", str(data.lmdb_path), str(data.kv_path),
        "--eval-pairs", str(data.pairs_path),
        "--out-dir", str(out_dir),
        "--backbone", "tinyfacenet",
        "--model.embedding_size", "32",
        "--batch-size", "8",
        "--epochs", "2",
        "--workers", "0",
        "--train.eval_batch_size", "64",
        "--train.eval_every_epoch", "false",
        "--train.progress", "false",
        "--train.log_every", "2",
        *extra,
    ]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_module(args: list[str], *, torchrun: int = 0, timeout: float = 240) -> Any:
    """``python -m f2c.train ARGS`` (or under torchrun with ``torchrun`` processes)."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={torchrun}", "-m", "f2c.train", *args]
    else:
        cmd = [sys.executable, "-m", "f2c.train", *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: Any, b: Any, path: str = "", skip: tuple[str, ...] = ()) -> None:
    """Recursive bitwise equality of two checkpoint structures (tensors compared exactly)."""
    if path in skip:
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for key in a:
            assert_same_state(a[key], b[key], f"{path}/{key}", skip)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]", skip)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        gap = (a.float() - b.float()).abs().max() if a.numel() else 0
        assert torch.equal(a, b), f"{path}: tensors differ (max {gap})"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
