"""Training data: training sources and the one way to open them (``sources``), the db format
and writers (``db``), synthetic identities (``synthetic``), samplers and loaders, and the shared
normalisation.

``KvIndex``, ``LmdbReader`` and ``RecordIOReader`` (Rust) are re-exported here; ``normalize``
is imported on first use so that importing ``f2c.data`` does not import torch.
"""

from __future__ import annotations

from typing import Any

from f2c._native import KvIndex, LmdbReader, RecordIOReader
from f2c.data.db import TrainingDbWriter, encode_datum, read_label_map
from f2c.data.sources import (
    LmdbSource,
    LmdbSpec,
    MixedSource,
    RecordIOSource,
    RecordIOSpec,
    TrainingSource,
    open_training_source,
    resolve_data_path,
    resolve_source_spec,
)

__all__ = [
    "KvIndex",
    "LmdbReader",
    "LmdbSource",
    "LmdbSpec",
    "MixedSource",
    "RecordIOReader",
    "RecordIOSource",
    "RecordIOSpec",
    "TrainingDbWriter",
    "TrainingSource",
    "encode_datum",
    "normalize",
    "open_training_source",
    "read_label_map",
    "resolve_data_path",
    "resolve_source_spec",
]


def __getattr__(name: str) -> Any:
    if name == "normalize":
        from f2c.data.transforms import normalize

        return normalize
    raise AttributeError(f"module 'f2c.data' has no attribute {name!r}")
