"""Pair-set verification benchmarks: LFW, SLLFW, CPLFW, CALFW, CFP-FP/FF, AgeDB-30.

Two input forms:

* a **pairs file**: one ``path_a path_b 1|0`` per line (1 = same identity), image paths
  relative to the pairs file's folder (or absolute). Blank lines and lines starting with ``#``
  are skipped.
* an insightface **``.bin`` pack**: a pickle of ``(list of encoded images, list of bool)``;
  pair ``i`` is images ``2i`` and ``2i + 1``. It is read with a restricted unpickler that
  builds only bytes (or 1-D uint8 arrays, as bytes), bool, int, list and tuple — no class or
  function is ever imported (:mod:`f2c.evaluation.binpack`).

Pairs stay in file order and are split into 10 contiguous folds whose size the protocol
fixes (600 pairs; 700 for CFP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f2c.evaluation.binpack import read_bin
from f2c.evaluation.errors import InputError
from f2c.evaluation.features import Embedder, EncodedImages, ImageFiles, ImageSource
from f2c.evaluation.metrics import kfold_evaluate, tar_at_fars

__all__ = [
    "PROTOCOL_FOLD_SIZES",
    "PairSet",
    "cosine_pair_scores",
    "evaluate_pair_features",
    "evaluate_pairs",
    "load_bin",
    "load_pair_set",
    "read_pairs_file",
]

FOLDS = 10
PROTOCOL_FOLD_SIZES: dict[str, int] = {
    "lfw": 600,
    "sllfw": 600,
    "cplfw": 600,
    "calfw": 600,
    "agedb_30": 600,
    "cfp_fp": 700,
    "cfp_ff": 700,
}


@dataclass
class PairSet:
    """Unique images plus pairs of indices into them (file order preserved)."""

    images: ImageSource
    left: np.ndarray  # int64 [P]
    right: np.ndarray  # int64 [P]
    same: np.ndarray  # bool [P]
    source: str

    def __len__(self) -> int:
        return len(self.same)


def read_pairs_file(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    check_files: bool = True,
) -> PairSet:
    """Parse an LFW-style pairs file; errors name the file and the 1-based line number.

    Each distinct image path is embedded once, however many pairs use it.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"pairs file not found: {path}") from None
    index: dict[str, int] = {}
    files: list[Path] = []
    left: list[int] = []
    right: list[int] = []
    same: list[bool] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise InputError(
                f"{path}:{lineno}: expected 'path_a path_b 1|0', got {stripped!r}"
            )
        ids = []
        for rel in parts[:2]:
            if rel not in index:
                full = base / rel
                if check_files and not full.is_file():
                    raise FileNotFoundError(f"{path}:{lineno}: image not found: {full}")
                index[rel] = len(files)
                files.append(full)
            ids.append(index[rel])
        left.append(ids[0])
        right.append(ids[1])
        same.append(parts[2] == "1")
    if not same:
        raise InputError(f"{path}: no pairs found")
    return PairSet(
        images=ImageFiles(files, ids=list(index), image_size=image_size),
        left=np.asarray(left, dtype=np.int64),
        right=np.asarray(right, dtype=np.int64),
        same=np.asarray(same, dtype=bool),
        source=str(path),
    )


# ---------------------------------------------------------------- .bin packs


def load_bin(path: str | os.PathLike[str], *, image_size: int | None = None) -> PairSet:
    """Read an insightface ``.bin`` pack safely (see the module docstring)."""
    path = Path(path)
    blobs, flags = read_bin(path)
    n = len(flags)
    return PairSet(
        images=EncodedImages(blobs, ids=[f"{path.name}#{i}" for i in range(2 * n)],
                             image_size=image_size),
        left=np.arange(0, 2 * n, 2, dtype=np.int64),
        right=np.arange(1, 2 * n, 2, dtype=np.int64),
        same=np.asarray(flags, dtype=bool),
        source=str(path),
    )


def load_pair_set(path: str | os.PathLike[str], *, image_size: int | None = None) -> PairSet:
    """A ``.bin`` pack (by suffix) or a pairs file."""
    if Path(path).suffix == ".bin":
        return load_bin(path, image_size=image_size)
    return read_pairs_file(path, image_size=image_size)


# ---------------------------------------------------------------- scoring


def cosine_pair_scores(features: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows ``left[i]`` and ``right[i]`` of raw features (float64)."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", f[left], f[right])


def fold_size_for(protocol: str | None, n_pairs: int, source: str) -> int:
    """The protocol's fold size, validated against the pair count (10 contiguous folds)."""
    if protocol is not None and protocol in PROTOCOL_FOLD_SIZES:
        size = PROTOCOL_FOLD_SIZES[protocol]
        if n_pairs != FOLDS * size:
            raise InputError(
                f"{source}: {protocol} has {FOLDS} folds of {size} pairs ({FOLDS * size}), "
                f"but {n_pairs} pairs were read"
            )
        return size
    if n_pairs % FOLDS:
        raise InputError(
            f"{source}: {n_pairs} pairs cannot form {FOLDS} equal contiguous folds"
        )
    return n_pairs // FOLDS


def evaluate_pair_features(
    features: np.ndarray, pairs: PairSet, *, protocol: str | None = None
) -> dict[str, Any]:
    """10-fold accuracy (threshold exact on the other 9 folds) plus TAR at FAR 1e-3 and 1e-2.

    Returns ``accuracy``, ``accuracy_std``, ``fold_accuracies``, ``thresholds`` (one per fold),
    ``threshold`` (their mean), ``pairs``, ``folds``, ``fold_size``, ``tar@far=1e-03``,
    ``tar@far=1e-02``.
    """
    fold_size = fold_size_for(protocol, len(pairs), pairs.source)
    scores = cosine_pair_scores(features, pairs.left, pairs.right)
    kf = kfold_evaluate(scores, pairs.same, FOLDS)
    out: dict[str, Any] = {
        "accuracy": kf.mean,
        "accuracy_std": kf.std,
        "fold_accuracies": kf.accuracies.tolist(),
        "thresholds": kf.thresholds.tolist(),
        "threshold": float(kf.thresholds.mean()),
        "pairs": len(pairs),
        "folds": FOLDS,
        "fold_size": fold_size,
    }
    if pairs.same.any() and not pairs.same.all():
        fars = (1e-3, 1e-2)
        for far, tar in zip(fars, tar_at_fars(scores, pairs.same, fars), strict=True):
            out[f"tar@far={far:.0e}"] = tar
    return out


def evaluate_pairs(
    model: torch.nn.Module,
    pairs_path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    flip: bool = True,
    *,
    protocol: str | None = None,
    image_size: int | None = None,
    features_stem: str | os.PathLike[str] | None = None,
    model_id: str = "model",
) -> dict[str, Any]:
    """Embed a pair set (pairs file or ``.bin``) with ``model`` and score it; see
    :func:`evaluate_pair_features` for the returned keys. The model's train/eval mode is
    restored afterwards, so a training loop can call this between steps."""
    pairs = load_pair_set(pairs_path, image_size=image_size)
    embed = Embedder(model, model_id, flip, device, batch_size, image_size)
    return evaluate_pair_features(embed.features(pairs.images, features_stem), pairs,
                                  protocol=protocol)
