"""YouTube Faces (YTF) video verification.

Inputs (see ``evaluation/README.md``):

* a **frame list**: one ``path video_id`` per line (paths relative to the list's folder); a
  video's frames are all the lines with its id;
* a **pairs file**: one ``video_a video_b 1|0`` per line, in protocol order: 5,000 pairs, 10
  contiguous splits of 500.

A video's feature is the L2-normalised mean of its frames' raw features (computed with an
``index_add``, no per-video loop). The pair count is checked, never assumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f2c.evaluation.errors import InputError
from f2c.evaluation.features import Embedder, ImageFiles
from f2c.evaluation.metrics import kfold_evaluate

__all__ = [
    "YTF_FOLDS",
    "YTF_PAIRS",
    "YtfSet",
    "evaluate_ytf",
    "evaluate_ytf_features",
    "load_ytf",
    "read_frame_list",
    "read_ytf_pairs",
    "video_features",
]

YTF_PAIRS = 5000
YTF_FOLDS = 10


@dataclass
class YtfSet:
    frames: ImageFiles
    frame_video: np.ndarray  # int64 [n_frames]: video index of each frame
    videos: list[str]  # video ids, index = video index
    left: np.ndarray  # int64 [pairs]
    right: np.ndarray
    same: np.ndarray  # bool [pairs]
    source: str


def _read_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            rows.append((lineno, s.split()))
    return rows


def read_frame_list(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    check_files: bool = True,
) -> tuple[ImageFiles, np.ndarray, list[str]]:
    """Parse ``path video_id`` lines → (frames, video index per frame, video ids)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    videos: dict[str, int] = {}
    files: list[Path] = []
    ids: list[str] = []
    frame_video: list[int] = []
    for lineno, parts in _read_lines(path, "frame list"):
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: expected 'path video_id', got {' '.join(parts)!r}")
        rel, vid = parts
        full = base / rel
        if check_files and not full.is_file():
            raise FileNotFoundError(f"{path}:{lineno}: frame not found: {full}")
        files.append(full)
        ids.append(rel)
        frame_video.append(videos.setdefault(vid, len(videos)))
    if not files:
        raise InputError(f"{path}: no frames listed")
    return (
        ImageFiles(files, ids=ids, image_size=image_size),
        np.asarray(frame_video, dtype=np.int64),
        list(videos),
    )


def read_ytf_pairs(
    path: str | os.PathLike[str],
    videos: list[str],
    *,
    expected_pairs: int = YTF_PAIRS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``video_a video_b 1|0`` lines; every video must be in the frame list, and the
    number of pairs must equal ``expected_pairs`` (5,000 for the YTF protocol)."""
    path = Path(path)
    index = {v: i for i, v in enumerate(videos)}
    left: list[int] = []
    right: list[int] = []
    same: list[bool] = []
    for lineno, parts in _read_lines(path, "YTF pairs file"):
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise InputError(
                f"{path}:{lineno}: expected 'video_a video_b 1|0', got {' '.join(parts)!r}"
            )
        for v in parts[:2]:
            if v not in index:
                raise InputError(f"{path}:{lineno}: video {v!r} has no frames in the frame list")
        left.append(index[parts[0]])
        right.append(index[parts[1]])
        same.append(parts[2] == "1")
    if len(same) != expected_pairs:
        raise InputError(
            f"{path}: the YTF protocol has {expected_pairs} pairs "
            f"({YTF_FOLDS} folds of {expected_pairs // YTF_FOLDS}), but {len(same)} were read"
        )
    return (
        np.asarray(left, dtype=np.int64),
        np.asarray(right, dtype=np.int64),
        np.asarray(same, dtype=bool),
    )


def load_ytf(
    root: str | os.PathLike[str],
    *,
    frames: str = "frames.txt",
    pairs: str = "pairs.txt",
    image_size: int | None = None,
    expected_pairs: int = YTF_PAIRS,
) -> YtfSet:
    """Load ``<root>/frames.txt`` and ``<root>/pairs.txt``."""
    root = Path(root)
    images, frame_video, videos = read_frame_list(root / frames, image_size=image_size)
    left, right, same = read_ytf_pairs(root / pairs, videos, expected_pairs=expected_pairs)
    return YtfSet(images, frame_video, videos, left, right, same, str(root / pairs))


def video_features(
    frame_features: np.ndarray, frame_video: np.ndarray, num_videos: int
) -> np.ndarray:
    """L2-normalised mean of each video's raw frame features; float32 ``[num_videos, D]``."""
    f = torch.as_tensor(np.asarray(frame_features), dtype=torch.float64)
    idx = torch.as_tensor(frame_video, dtype=torch.int64)
    sums = torch.zeros(num_videos, f.shape[1], dtype=torch.float64).index_add_(0, idx, f)
    counts = torch.bincount(idx, minlength=num_videos).clamp_min(1).unsqueeze(1)
    mean = sums / counts
    return torch.nn.functional.normalize(mean, dim=1).to(torch.float32).numpy()


def evaluate_ytf_features(frame_features: np.ndarray, ytf: YtfSet) -> dict[str, Any]:
    """10-fold accuracy over the video pairs (exact thresholds; contiguous folds)."""
    vf = video_features(frame_features, ytf.frame_video, len(ytf.videos)).astype(np.float64)
    scores = np.einsum("ij,ij->i", vf[ytf.left], vf[ytf.right])
    kf = kfold_evaluate(scores, ytf.same, YTF_FOLDS)
    return {
        "accuracy": kf.mean,
        "accuracy_std": kf.std,
        "fold_accuracies": kf.accuracies.tolist(),
        "thresholds": kf.thresholds.tolist(),
        "pairs": len(ytf.same),
        "folds": YTF_FOLDS,
        "fold_size": len(ytf.same) // YTF_FOLDS,
        "videos": len(ytf.videos),
        "frames": len(ytf.frame_video),
    }


def evaluate_ytf(
    model: torch.nn.Module,
    root: str | os.PathLike[str],
    *,
    features_stem: str | os.PathLike[str] | None = None,
    **embed: Any,
) -> dict[str, Any]:
    """Embed the YTF frames under ``root`` with ``model`` and score the video pairs; ``embed``
    takes :class:`~f2c.evaluation.features.Embedder`'s fields (``flip``, ``device``,
    ``batch_size``, ``image_size``, ``model_id``)."""
    embedder = Embedder(model, **embed)
    ytf = load_ytf(root, image_size=embedder.image_size)
    return evaluate_ytf_features(embedder.features(ytf.frames, features_stem), ytf)
