"""f2c: F²C face-recognition training on millions of identities.

The Rust core (``f2c._native``) holds the class-pool index and the training-db data path;
everything else (loaders, models, heads, training, evaluation) is PyTorch.
"""

from f2c._native import KvIndex, LmdbReader, __version__
from f2c.pool import ClassPoolIndex, ReferenceClassPoolIndex

__all__ = ["ClassPoolIndex", "KvIndex", "LmdbReader", "ReferenceClassPoolIndex", "__version__"]
