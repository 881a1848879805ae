"""Type stubs for ``f2c._native``, written by hand: keep in sync with rust/bindings."""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class ClassPoolIndex:
    """Memory follows the classes held, not ``capacity`` (any capacity below 2**32 - 1 costs
    nothing until filled); an allocation the system refuses raises ``MemoryError``."""

    def __init__(self, capacity: int) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def undo_depth(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, label: int) -> bool: ...
    def assign(
        self, labels: npt.NDArray[np.int64], undoable: bool = False
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]: ...
    def undo(self) -> None: ...
    def lookup(self, labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]: ...
    def keys(self) -> npt.NDArray[np.int64]: ...
    def slots(self) -> npt.NDArray[np.int64]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClassPoolIndex: ...

_Path = str | os.PathLike[str]

class KvIndex:
    """Rows of one or more kv files (``key label`` per line); labels of later files are offset
    by max label + 1 of the files before. Raises ``ValueError`` naming file:line on bad input
    (three columns, a key repeated within one file — both lines named —, labels beyond
    16 × lines + 2**22 classes), ``OSError`` on an unreadable file, ``MemoryError`` when an
    allocation is refused."""

    def __init__(self, paths: _Path | Sequence[_Path]) -> None: ...
    def __len__(self) -> int: ...
    @property
    def labels(self) -> npt.NDArray[np.int64]: ...  # read-only, shared (no copy)
    @property
    def num_classes(self) -> int: ...
    @property
    def identity_offsets(self) -> npt.NDArray[np.int64]: ...  # CSR, len num_classes + 1
    @property
    def identity_rows(self) -> npt.NDArray[np.int64]: ...
    @property
    def paths(self) -> list[str]: ...
    @property
    def label_offsets(self) -> list[int]: ...
    def key(self, row: int) -> bytes: ...
    def file_of_row(self, row: int) -> int: ...

class LmdbReader:
    """Decodes JPEG records (raw or Datum-wrapped) of LMDB dbs, one per kv file of ``index``,
    in parallel with the GIL released. Works in forked processes (environments and threads are
    per process). Every record passes the strict check of :func:`validate_jpeg` before it is
    decoded: a truncated or corrupt record raises ``ValueError`` naming its key and db."""

    def __init__(
        self,
        lmdb_paths: _Path | Sequence[_Path],
        index: KvIndex,
        num_threads: int | None = None,
    ) -> None: ...
    @property
    def image_size(self) -> tuple[int, int]: ...
    @property
    def num_threads(self) -> int: ...
    @property
    def paths(self) -> list[str]: ...
    @property
    def index(self) -> KvIndex: ...
    def read(
        self,
        rows: npt.ArrayLike,
        flip: npt.ArrayLike | None = None,
        out: npt.NDArray[np.uint8] | None = None,  # [N, H, W, 3] uint8, C order: filled
    ) -> npt.NDArray[np.uint8]: ...
    def read_bytes(self, rows: npt.ArrayLike) -> list[bytes]: ...

class RecordIOReader:
    """An insightface / MXNet RecordIO pack (``train.rec`` + ``train.idx``) read in place: the
    ``.rec`` memory-mapped, offsets from ``idx_path`` (default: the ``.idx`` beside the ``.rec``;
    without one the ``.rec`` is scanned, with a ``UserWarning``). Rows are the image records
    (those of header record 0 when the pack has one); labels come from the identity records
    (``label_source="auto"``, each read then checks the record's own label) or from every
    record (``"records"``), and must form ``0 .. C-1``. JPEG images only (a PNG record is a
    ``ValueError`` naming it). Decoding is parallel with the GIL released, as ``LmdbReader``.
    Errors name the file and the record index / byte offset (``ValueError``), or the ``.idx``
    file and line."""

    def __init__(
        self,
        rec_path: _Path,
        idx_path: _Path | None = None,
        num_threads: int | None = None,
        label_source: str = "auto",
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def labels(self) -> npt.NDArray[np.int64]: ...  # read-only
    @property
    def num_classes(self) -> int: ...
    @property
    def identity_offsets(self) -> npt.NDArray[np.int64]: ...  # CSR, len num_classes + 1
    @property
    def identity_rows(self) -> npt.NDArray[np.int64]: ...
    @property
    def image_size(self) -> tuple[int, int]: ...
    @property
    def num_threads(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def idx_path(self) -> str | None: ...  # None: offsets came from a scan of the .rec
    @property
    def header(self) -> tuple[int, int] | None: ...  # header record 0's [first identity, end)
    @property
    def label_source(self) -> str: ...  # "identity records" or "records"
    def keys(self) -> npt.NDArray[np.int64]: ...  # record index of every row
    def key(self, row: int) -> int: ...
    def offset(self, row: int) -> int: ...
    def read(
        self,
        rows: npt.ArrayLike,
        flip: npt.ArrayLike | None = None,
        out: npt.NDArray[np.uint8] | None = None,  # [N, H, W, 3] uint8, C order: filled
    ) -> npt.NDArray[np.uint8]: ...
    def read_bytes(self, rows: npt.ArrayLike) -> list[bytes]: ...  # image bytes as stored
    def prefetch(self, rows: npt.ArrayLike) -> None: ...  # read ahead (copies in file order)

class LmdbWriter:
    """Writes a new LMDB environment (the folder ``path``) in batches: one write transaction
    per call, all records or none (``ValueError`` naming the refused key: a duplicate, or with
    ``append`` one not after the last). The map grows on demand from ``initial_map_size``.
    Commits do not sync; ``close`` syncs once (the caller publishes the folder only after)."""

    def __init__(
        self, path: _Path, initial_map_size: int = 1 << 30, append: bool = False
    ) -> None: ...
    @property
    def count(self) -> int: ...  # records written
    def put_many(self, keys: list[bytes], values: list[bytes]) -> int: ...
    def put_recordio(
        self, reader: RecordIOReader, rows: npt.ArrayLike, key_width: int
    ) -> bytes: ...  # the rows' kv lines, ``key label\n`` (keys: record index, zero-padded)
    def close(self) -> None: ...  # syncs, then closes (idempotent)
    def abort(self) -> None: ...  # closes without syncing (idempotent)

def validate_jpeg(data: bytes, max_side: int = 8192) -> tuple[int, int]:
    """``(height, width)`` of a complete, uncorrupted JPEG with no side above ``max_side``
    (at most 8192), else ``ValueError`` saying what is wrong (the caller adds the file name).

    The check the reader applies to every record: all marker segments parsed, every scan's
    entropy-coded data walked to its last block (a stream cut short — even with an end-of-image
    marker appended —, bytes left over, impossible codes or coefficient values, restart markers
    out of order, an incomplete progressive image are refused), then a full decode. The frame
    header's size is checked before anything is allocated. Baseline, extended and progressive
    8-bit Huffman JPEGs are accepted.
    """
