"""Coercion of user label inputs to the contiguous int64 arrays the Rust core takes."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

INT64_MAX = np.iinfo(np.int64).max


def as_label_array(labels: Any, name: str = "labels") -> npt.NDArray[np.int64]:
    """Return ``labels`` as a 1-D contiguous int64 array of non-negative class ids.

    Accepts integer array-likes and CPU/GPU torch tensors. Floats, bools and objects raise
    ``TypeError``; other shapes and negative or too-large ids raise ``ValueError``.
    """
    if (
        type(labels) is np.ndarray
        and labels.dtype == np.int64
        and labels.ndim == 1
        and labels.flags.c_contiguous
    ):
        return labels  # the hot path: the Rust core itself rejects negative ids
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and int(arr.max()) > INT64_MAX:
        raise ValueError(f"{name} holds a class id above {INT64_MAX}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.dtype.kind == "i" and int(out.min()) < 0:
        pos = int(np.argmin(out))
        raise ValueError(
            f"class ids must be non-negative, got {int(out[pos])} at position {pos}"
        )
    return out
