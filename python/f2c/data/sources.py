"""Training sources: what the loaders and the trainer need from a training set, whatever its
format, and the one way to open one (:func:`open_training_source`).

A :class:`TrainingSource` has ``len()`` images with int64 ``labels`` forming ``0 .. C-1``
(``num_classes`` = C), the rows of each identity as CSR (``identity_offsets``,
``identity_rows``), an ``image_size`` (height, width), and reads rows as uint8
``[N, H, W, 3]`` RGB (``read``, each image mirrored where ``flip`` says) or as the stored image
bytes (``read_bytes``). Sources pickle by their paths and work in DataLoader workers, forked or
spawned: readers are opened in the process that reads, file maps and decode threads are per
process.

Implementations:

* :class:`LmdbSource` — one or more (LMDB, kv file) pairs: f2c's training db (``f2c.pack``).
* :class:`RecordIOSource` — an insightface / MXNet ``train.rec`` + ``train.idx``, read in place.
* :class:`MixedSource` — several sources in order, labels of each offset past the ones before.

``resolve_data_path`` says what a ``--data PATH`` names: a packed db folder (``train.lmdb`` +
``train.kv``), an LMDB with its kv file beside it (``x.lmdb`` + ``x.kv``), a ``.rec`` (its
``.idx`` beside it), or a folder holding ``train.rec`` (how MS1MV3 / Glint360K ship).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from f2c._native import KvIndex, LmdbReader, RecordIOReader
from f2c.data.db import KV_NAME, LMDB_NAME, check_not_staging

__all__ = [
    "LmdbSource",
    "LmdbSpec",
    "MixedSource",
    "RecordIOSource",
    "RecordIOSpec",
    "SourceSpec",
    "TrainingSource",
    "open_training_source",
    "resolve_data_path",
    "resolve_source_spec",
]

PathLike = str | os.PathLike[str]
REC_NAME = "train.rec"


@runtime_checkable
class TrainingSource(Protocol):
    """A training set as the loaders and the trainer see it (see the module doc)."""

    def __len__(self) -> int: ...

    @property
    def labels(self) -> npt.NDArray[np.int64]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def identity_offsets(self) -> npt.NDArray[np.int64]: ...

    @property
    def identity_rows(self) -> npt.NDArray[np.int64]: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def name(self) -> str: ...

    def read(
        self,
        rows: npt.ArrayLike,
        flip: npt.ArrayLike | None = None,
        out: npt.NDArray[np.uint8] | None = None,
    ) -> npt.NDArray[np.uint8]: ...

    def read_bytes(self, rows: npt.ArrayLike) -> list[bytes]: ...


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class LmdbSpec:
    """An LMDB environment (folder or ``data.mdb``) and its ``key label`` kv file."""

    lmdb: str
    kv: str


@dataclass(frozen=True)
class RecordIOSpec:
    """A RecordIO ``.rec``; ``idx`` None: the ``.idx`` beside it (or a scan, with a warning)."""

    rec: str
    idx: str | None = None


SourceSpec = LmdbSpec | RecordIOSpec


def resolve_data_path(path: PathLike) -> SourceSpec:
    """What one ``--data PATH`` names (see the module doc), or an error saying what was sought.

    A staging folder of an unfinished ``f2c.pack`` is refused.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"training data not found: {p}")
    if p.is_dir():
        check_not_staging(p)
        if (p / LMDB_NAME).exists() and (p / KV_NAME).is_file():
            return LmdbSpec(os.fspath(p / LMDB_NAME), os.fspath(p / KV_NAME))
        if (p / REC_NAME).is_file():
            return RecordIOSpec(os.fspath(p / REC_NAME))
        if (p / "data.mdb").is_file() and p.with_suffix(".kv").is_file():
            return LmdbSpec(os.fspath(p), os.fspath(p.with_suffix(".kv")))
        raise ValueError(
            f"{p}: not training data: expected a packed db folder ({LMDB_NAME} + {KV_NAME}), a "
            f"folder holding {REC_NAME}, or an LMDB folder with its kv file beside it "
            f"({p.with_suffix('.kv').name})"
        )
    suffix = p.suffix.lower()
    if suffix == ".rec":
        return RecordIOSpec(os.fspath(p))
    if suffix == ".idx" and p.with_suffix(".rec").is_file():
        return RecordIOSpec(os.fspath(p.with_suffix(".rec")), os.fspath(p))
    if suffix == ".kv":
        lmdb = p.with_suffix(".lmdb")
        if lmdb.exists():
            return LmdbSpec(os.fspath(lmdb), os.fspath(p))
        raise FileNotFoundError(f"{p}: no LMDB beside this kv file (looked for {lmdb})")
    if p.name == "data.mdb" and p.parent.with_suffix(".kv").is_file():
        return LmdbSpec(os.fspath(p), os.fspath(p.parent.with_suffix(".kv")))
    raise ValueError(
        f"{p}: not training data: expected a .rec file (with its .idx beside it), a kv file "
        "beside its LMDB, or a folder"
    )


def resolve_source_spec(spec: Any) -> SourceSpec:
    """A spec from a path, an (lmdb, kv) pair, a mapping (``{"path"}``, ``{"lmdb", "kv"}`` or
    ``{"rec", "idx"}``) or an object with ``lmdb``/``kv`` or ``path`` attributes (a config
    entry)."""
    if isinstance(spec, LmdbSpec | RecordIOSpec):
        return spec
    if isinstance(spec, str | os.PathLike):
        return resolve_data_path(spec)
    if isinstance(spec, tuple):
        if len(spec) == 2:
            return _pair_spec(spec[0], spec[1])
        raise ValueError(f"a data source is a path or an (lmdb, kv) tuple, got {spec!r}")
    if isinstance(spec, dict):
        values = {k: v for k, v in spec.items() if v not in (None, "")}
    else:
        values = {
            k: getattr(spec, k) for k in ("path", "lmdb", "kv", "rec", "idx")
            if getattr(spec, k, None) not in (None, "")
        }
    keys = set(values)
    if keys == {"path"}:
        return resolve_data_path(values["path"])
    if keys == {"lmdb", "kv"}:
        return _pair_spec(values["lmdb"], values["kv"])
    if keys in ({"rec"}, {"rec", "idx"}):
        return RecordIOSpec(os.fspath(values["rec"]), _opt_path(values.get("idx")))
    raise ValueError(
        f"a data source needs `path`, or `lmdb` and `kv`, or `rec` (and `idx`); got {spec!r}"
    )


def _opt_path(path: PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def _pair_spec(lmdb: PathLike, kv: PathLike) -> LmdbSpec:
    lmdb_path, kv_path = Path(lmdb), Path(kv)
    if lmdb_path.suffix.lower() in (".rec", ".idx") or kv_path.suffix.lower() in (".rec", ".idx"):
        raise ValueError(
            f"({lmdb_path}, {kv_path}) is not an (lmdb, kv) pair; give a RecordIO pack as one "
            "path (its .rec)"
        )
    if not lmdb_path.exists():
        raise FileNotFoundError(f"training db not found: {lmdb_path}")
    if not kv_path.is_file():
        raise FileNotFoundError(f"kv file not found: {kv_path}")
    check_not_staging(lmdb_path.parent if lmdb_path.name == LMDB_NAME else lmdb_path)
    return LmdbSpec(os.fspath(lmdb_path), os.fspath(kv_path))


# --------------------------------------------------------------------------- sources


class _ReaderBacked:
    """Image access through a Rust reader (``LmdbReader`` or ``RecordIOReader``): both take the
    same rows and flips and give the same uint8 batches. Rows, labels and the per-identity CSR
    come from :attr:`_labelled` (a ``KvIndex``, or the ``RecordIOReader`` itself)."""

    reader: Any

    @property
    def _labelled(self) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._labelled)

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return np.asarray(self._labelled.labels)

    @property
    def num_classes(self) -> int:
        return int(self._labelled.num_classes)

    @property
    def identity_offsets(self) -> npt.NDArray[np.int64]:
        return np.asarray(self._labelled.identity_offsets)

    @property
    def identity_rows(self) -> npt.NDArray[np.int64]:
        return np.asarray(self._labelled.identity_rows)

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.reader.image_size
        return int(height), int(width)

    def read(
        self,
        rows: npt.ArrayLike,
        flip: npt.ArrayLike | None = None,
        out: npt.NDArray[np.uint8] | None = None,
    ) -> npt.NDArray[np.uint8]:
        return self.reader.read(rows, flip=flip, out=out)

    def read_bytes(self, rows: npt.ArrayLike) -> list[bytes]:
        return self.reader.read_bytes(rows)


class LmdbSource(_ReaderBacked):
    """One or more (LMDB, kv file) pairs: a ``KvIndex`` (labels of later pairs offset past the
    earlier ones) and an ``LmdbReader`` opened on first read (per process after a fork)."""

    def __init__(
        self,
        lmdb_paths: Sequence[PathLike],
        kv_paths: Sequence[PathLike],
        *,
        num_threads: int | None = None,
    ) -> None:
        if len(lmdb_paths) != len(kv_paths) or not lmdb_paths:
            raise ValueError(
                f"need one kv file per lmdb: got {len(lmdb_paths)} lmdb and {len(kv_paths)} kv"
            )
        specs = [_pair_spec(a, b) for a, b in zip(lmdb_paths, kv_paths, strict=True)]
        self.lmdb_paths = [s.lmdb for s in specs]
        self.kv_paths = [s.kv for s in specs]
        self.num_threads = num_threads
        self.index = KvIndex(self.kv_paths)
        if len(self.index) == 0:
            raise ValueError(f"the kv files hold no images: {', '.join(self.kv_paths)}")
        self._reader: LmdbReader | None = None

    @property
    def reader(self) -> LmdbReader:
        """The ``LmdbReader`` (its environments and threads are per process)."""
        if self._reader is None:
            self._reader = LmdbReader(self.lmdb_paths, self.index, num_threads=self.num_threads)
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        return {"lmdb": self.lmdb_paths, "kv": self.kv_paths, "threads": self.num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["lmdb"], state["kv"], num_threads=state["threads"])  # type: ignore[misc]

    @property
    def _labelled(self) -> KvIndex:
        return self.index  # no reader needed (it opens lazily, per process)

    def __repr__(self) -> str:
        return f"LmdbSource({self.name}, rows={len(self)}, num_classes={self.num_classes})"

    @property
    def name(self) -> str:
        return ", ".join(self.lmdb_paths)



class RecordIOSource(_ReaderBacked):
    """An insightface RecordIO pack read in place (``f2c.RecordIOReader``).

    The reader maps the ``.rec`` and parses the ``.idx`` (and header / identity records) when
    the source is made; a forked worker shares the read-only map, a spawned one re-opens it
    from the paths.
    """

    def __init__(
        self,
        rec: PathLike,
        idx: PathLike | None = None,
        *,
        num_threads: int | None = None,
        label_source: str = "auto",
    ) -> None:
        self.rec = os.fspath(rec)
        self.idx = _opt_path(idx)
        self.num_threads = num_threads
        self.label_source = label_source
        self.reader = RecordIOReader(self.rec, self.idx, num_threads, label_source)

    def __getstate__(self) -> dict[str, Any]:
        return {"rec": self.rec, "idx": self.idx, "threads": self.num_threads,
                "label_source": self.label_source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["rec"], state["idx"], num_threads=state["threads"],
            label_source=state["label_source"],
        )

    @property
    def _labelled(self) -> RecordIOReader:
        return self.reader

    def __repr__(self) -> str:
        return f"RecordIOSource({self.rec}, rows={len(self)}, num_classes={self.num_classes})"

    @property
    def name(self) -> str:
        return self.rec



class MixedSource:
    """Several sources in order: rows follow one another, and the labels of each source are
    offset by the class count of the sources before it (as ``KvIndex`` does for kv files)."""

    def __init__(self, sources: Sequence[TrainingSource]) -> None:
        if not sources:
            raise ValueError("MixedSource needs at least one source")
        self.sources = list(sources)
        counts = [len(s) for s in self.sources]
        classes = [int(s.num_classes) for s in self.sources]
        self.row_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.label_offsets = np.concatenate([[0], np.cumsum(classes)]).astype(np.int64)
        self._labels = np.concatenate([
            np.asarray(s.labels) + off
            for s, off in zip(self.sources, self.label_offsets[:-1], strict=True)
        ])
        self._labels.flags.writeable = False
        offsets = [np.zeros(1, np.int64)]
        rows = []
        for s, row_start in zip(self.sources, self.row_starts[:-1], strict=True):
            offsets.append(np.asarray(s.identity_offsets)[1:] + offsets[-1][-1])
            rows.append(np.asarray(s.identity_rows) + row_start)
        self._identity_offsets = np.concatenate(offsets)
        self._identity_rows = np.concatenate(rows)
        self._image_size: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The sources pickle by path; the combined arrays are rebuilt from them.
        return {"sources": self.sources}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["sources"])  # type: ignore[misc]

    def __len__(self) -> int:
        return int(self.row_starts[-1])

    def __repr__(self) -> str:
        return f"MixedSource({self.sources!r})"

    @property
    def name(self) -> str:
        return " + ".join(s.name for s in self.sources)

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return self._labels

    @property
    def num_classes(self) -> int:
        return int(self.label_offsets[-1])

    @property
    def identity_offsets(self) -> npt.NDArray[np.int64]:
        return self._identity_offsets

    @property
    def identity_rows(self) -> npt.NDArray[np.int64]:
        return self._identity_rows

    @property
    def image_size(self) -> tuple[int, int]:
        if self._image_size is None:
            sizes = [s.image_size for s in self.sources]
            if len(set(sizes)) != 1:
                listed = ", ".join(
                    f"{s.name}: {h}x{w}" for s, (h, w) in zip(self.sources, sizes, strict=True)
                )
                raise ValueError(f"the sources have different image sizes (HxW): {listed}")
            self._image_size = sizes[0]
        return self._image_size

    def _split(self, rows: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise ValueError(f"rows must be a 1-D array of integer rows, got {rows!r}")
        rows = rows.astype(np.int64)
        bad = (rows < 0) | (rows >= len(self))
        if bad.any():
            raise IndexError(
                f"row {int(rows[bad][0])} out of range for a source of {len(self)} rows"
            )
        which = np.searchsorted(self.row_starts, rows, side="right") - 1
        return rows, which

    def read(
        self,
        rows: npt.ArrayLike,
        flip: npt.ArrayLike | None = None,
        out: npt.NDArray[np.uint8] | None = None,
    ) -> npt.NDArray[np.uint8]:
        rows, which = self._split(rows)
        flips = np.zeros(rows.shape, bool) if flip is None else np.asarray(flip, dtype=bool)
        if flips.shape != rows.shape:
            raise ValueError(f"flip has {flips.size} entries for {rows.size} rows")
        height, width = self.image_size
        shape = (rows.size, height, width, 3)
        if out is None:
            out = np.empty(shape, np.uint8)
        elif out.dtype != np.uint8 or out.shape != shape:
            raise ValueError(f"out must be a uint8 array of shape {shape}")
        for i, source in enumerate(self.sources):
            mine = which == i
            if mine.any():
                out[mine] = source.read(rows[mine] - self.row_starts[i], flips[mine])
        return out

    def read_bytes(self, rows: npt.ArrayLike) -> list[bytes]:
        rows, which = self._split(rows)
        out: list[bytes] = [b""] * rows.size
        for i, source in enumerate(self.sources):
            positions = np.flatnonzero(which == i)
            if positions.size:
                data = source.read_bytes(rows[positions] - self.row_starts[i])
                for pos, value in zip(positions.tolist(), data, strict=True):
                    out[pos] = value
        return out


def _open_spec(spec: SourceSpec, num_threads: int | None) -> TrainingSource:
    if isinstance(spec, LmdbSpec):
        return LmdbSource([spec.lmdb], [spec.kv], num_threads=num_threads)
    return RecordIOSource(spec.rec, spec.idx, num_threads=num_threads)


def open_training_source(data: Any, *, num_threads: int | None = None) -> TrainingSource:
    """The training source of ``data``: one spec (a path, an ``(lmdb, kv)`` tuple, a mapping or
    a config entry; see :func:`resolve_source_spec`) or a list of them, mixed in order with
    labels offset. Several LMDB pairs share one ``KvIndex`` and one reader; any other mix is a
    :class:`MixedSource`. ``num_threads``: decode threads per reader (default: all CPUs)."""
    items = list(data) if isinstance(data, list) else [data]
    if not items:
        raise ValueError("no training data given")
    specs = [resolve_source_spec(item) for item in items]
    if len(specs) == 1:
        return _open_spec(specs[0], num_threads)
    pairs = [s for s in specs if isinstance(s, LmdbSpec)]
    if len(pairs) == len(specs):
        return LmdbSource([s.lmdb for s in pairs], [s.kv for s in pairs], num_threads=num_threads)
    return MixedSource([_open_spec(s, num_threads) for s in specs])
