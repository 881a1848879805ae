"""The dynamic class pool: its LRU index (Rust) and the pure-Python reference."""

from f2c.pool.index import ClassPoolIndex
from f2c.pool.reference import ReferenceClassPoolIndex

__all__ = ["ClassPoolIndex", "ReferenceClassPoolIndex"]
