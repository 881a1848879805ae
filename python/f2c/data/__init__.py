"""Training data: the db format and writers (``db``), synthetic identities (``synthetic``),
samplers and loaders, and the shared normalisation.

``KvIndex`` and ``LmdbReader`` (Rust) are re-exported here; ``normalize`` is imported on first
use so that importing ``f2c.data`` does not import torch.
"""

from __future__ import annotations

from typing import Any

from f2c._native import KvIndex, LmdbReader
from f2c.data.db import TrainingDbWriter, encode_datum, open_db, read_label_map

__all__ = [
    "KvIndex",
    "LmdbReader",
    "TrainingDbWriter",
    "encode_datum",
    "normalize",
    "open_db",
    "read_label_map",
]


def __getattr__(name: str) -> Any:
    if name == "normalize":
        from f2c.data.transforms import normalize

        return normalize
    raise AttributeError(f"module 'f2c.data' has no attribute {name!r}")
