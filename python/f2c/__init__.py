"""f2c: F²C face-recognition training on millions of identities.

The Rust core (``f2c._native``) holds the class-pool index and the training-db data path;
everything else (loaders, models, heads, training, evaluation) is PyTorch. ``f2c.FaceEmbedder``
(embeddings from a checkpoint or an exported ONNX file) is imported on first use, so
``import f2c`` stays free of torch.
"""

from typing import TYPE_CHECKING, Any

from f2c._native import KvIndex, LmdbReader, __version__
from f2c.pool import ClassPoolIndex, ReferenceClassPoolIndex

if TYPE_CHECKING:
    from f2c.embedder import FaceEmbedder

__all__ = [
    "ClassPoolIndex",
    "FaceEmbedder",
    "KvIndex",
    "LmdbReader",
    "ReferenceClassPoolIndex",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "FaceEmbedder":
        from f2c.embedder import FaceEmbedder

        return FaceEmbedder
    raise AttributeError(f"module 'f2c' has no attribute {name!r}")
