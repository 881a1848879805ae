"""Training-db files on disk: layout, writer, label map and the Caffe ``Datum`` wrapper.

A packed db is a folder holding

- ``train.lmdb/`` — the LMDB environment; value = the JPEG bytes of one aligned crop,
- ``train.kv`` — one ``key label`` line per image (single space; the label follows the last
  space), in the order the records were written,
- ``labels.tsv`` — ``label<TAB>identity name`` per identity, labels in sorted-name order.

Writers build the folder under a temporary name holding a marker file and rename it when
complete, so a folder with the final name is always whole and a leftover staging folder never
opens as a db (see :func:`staging_dir`, :func:`check_not_staging`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from f2c._native import LmdbWriter, RecordIOReader

__all__ = [
    "KV_NAME",
    "LABELS_NAME",
    "LMDB_NAME",
    "STAGING_MARKER",
    "DbLayout",
    "TrainingDbWriter",
    "check_not_staging",
    "encode_datum",
    "read_label_map",
    "staging_dir",
    "validate_key",
]

LMDB_NAME = "train.lmdb"
KV_NAME = "train.kv"
LABELS_NAME = "labels.tsv"
# Present in a staging folder from its creation until just before its rename.
STAGING_MARKER = ".f2c-staging"
# Suffixes tempfile.mkdtemp gives staging (".tmp-") and replaced (".old-") folders.
_STAGING_NAME = re.compile(r"\.(tmp|old)-[A-Za-z0-9_]{8}$")

# LMDB's default maximum key size.
MAX_KEY_BYTES = 511


@dataclass(frozen=True)
class DbLayout:
    """Paths of the files of a packed db folder."""

    root: Path

    @property
    def lmdb_path(self) -> Path:
        return self.root / LMDB_NAME

    @property
    def kv_path(self) -> Path:
        return self.root / KV_NAME

    @property
    def labels_path(self) -> Path:
        return self.root / LABELS_NAME


def validate_key(key: str) -> bytes:
    """The UTF-8 bytes of a record key, or ``ValueError`` if the kv format cannot hold it."""
    raw = key.encode("utf-8")
    if not raw:
        raise ValueError("empty record key")
    if b"\n" in raw or b"\r" in raw:
        raise ValueError(f"record key {key!r} contains a line break")
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"record key {key!r} is longer than {MAX_KEY_BYTES} bytes")
    return raw


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_datum(
    image: bytes,
    *,
    label: int | None = None,
    image_field: int = 4,
    shape: tuple[int, int, int] | None = None,
) -> bytes:
    """A Caffe ``Datum`` protobuf holding encoded ``image`` bytes.

    ``image_field`` 4 is Caffe's ``data``; 1 reproduces writers that put the bytes in field 1.
    ``shape`` (channels, height, width) fills fields 1–3 (only with ``image_field=4``).
    """
    if image_field not in (1, 4):
        raise ValueError(f"image_field must be 4 (Caffe's data) or 1, got {image_field}")
    out = bytearray()
    if shape is not None:
        if image_field == 1:
            raise ValueError("shape fields cannot be combined with image_field=1")
        for field, value in zip((1, 2, 3), shape, strict=True):
            out += _varint(field << 3) + _varint(int(value))
    out += _varint(image_field << 3 | 2) + _varint(len(image)) + image
    if label is not None:
        out += _varint(5 << 3) + _varint(int(label))
    if image_field == 4:
        out += _varint(7 << 3) + _varint(1)  # encoded = true
    return bytes(out)


def read_label_map(path: str | os.PathLike[str]) -> dict[str, int]:
    """``labels.tsv`` → {identity name: label}."""
    mapping: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            label, sep, name = line.rstrip("\n").partition("\t")
            if not sep or not label.isdigit() or not name:
                raise ValueError(f"{os.fspath(path)}:{line_no}: expected `label<TAB>name`")
            mapping[name] = int(label)
    return mapping


class TrainingDbWriter:
    """Writes records into a db folder (LMDB + kv + label map), committing in batches.

    The LMDB part is written by the Rust core (:class:`f2c._native.LmdbWriter`): the map grows
    on demand, so no size has to be guessed up front. With ``append`` the keys arrive in
    increasing byte order and LMDB appends them (no B-tree search, full pages); a key out of
    order is then an error. Commits do not wait for the disk: :meth:`close` syncs everything
    once (a writer that dies before it leaves only a staging folder, which is discarded). Use
    as a context manager; :meth:`close` also writes the label map.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        identity_names: Sequence[str],
        *,
        commit_every: int = 2048,
        initial_map_size: int = 1 << 30,
        append: bool = False,
    ) -> None:
        self.layout = DbLayout(Path(root))
        self.layout.root.mkdir(parents=True, exist_ok=True)
        for name in identity_names:
            if not name or "\t" in name or "\n" in name or "\r" in name:
                raise ValueError(f"identity name {name!r} cannot be stored in {LABELS_NAME}")
        self.identity_names = list(identity_names)
        self._lmdb = LmdbWriter(self.layout.lmdb_path, initial_map_size, append)
        self._kv = open(self.layout.kv_path, "w", encoding="utf-8", newline="\n")
        self._pending_keys: list[bytes] = []
        self._pending_values: list[bytes] = []
        self._commit_every = commit_every
        self.count = 0
        self._closed = False

    def add(self, key: str, label: int, value: bytes) -> None:
        self.add_many([key], [label], [value])

    def add_many(self, keys: Sequence[str], labels: Sequence[int], values: Sequence[bytes]) -> None:
        """:meth:`add` for many records at once (the same checks, less per-record work)."""
        if not len(keys) == len(labels) == len(values):
            raise ValueError(
                f"{len(keys)} keys, {len(labels)} labels and {len(values)} values differ in number"
            )
        raw = [validate_key(key) for key in keys]
        top = len(self.identity_names)
        if labels and not all(0 <= label < top for label in labels):
            bad = next(label for label in labels if not 0 <= label < top)
            raise ValueError(f"label {bad} outside 0..{top - 1}")
        self._pending_keys.extend(raw)
        self._pending_values.extend(values)
        self._kv.write("".join(f"{k} {label}\n" for k, label in zip(keys, labels, strict=True)))
        self.count += len(keys)
        if len(self._pending_keys) >= self._commit_every:
            self._flush()

    def add_recordio(self, reader: RecordIOReader, rows: np.ndarray, key_width: int) -> None:
        """Copies the JPEG bytes of ``rows`` of a RecordIO pack as they are, keyed by their
        record index zero-padded to ``key_width`` digits, labelled with the reader's labels.

        One transaction: all of ``rows`` or, when one is not a JPEG of the pack's image size
        (``ValueError`` naming the record), none. The entropy-coded data is not checked here.
        """
        self._flush()
        if len(self.identity_names) < reader.num_classes:
            raise ValueError(
                f"{reader.num_classes} classes in the pack but {len(self.identity_names)} "
                "identity names"
            )
        lines = self._lmdb.put_recordio(reader, rows, key_width)
        self._kv.write(lines.decode("ascii"))
        self.count += len(rows)

    def _flush(self) -> None:
        if not self._pending_keys:
            return
        keys, values = self._pending_keys, self._pending_values
        self._pending_keys, self._pending_values = [], []
        self._lmdb.put_many(keys, values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
            self._lmdb.close()  # syncs the environment
            # Durable before the staging folder is renamed into place.
            self._kv.flush()
            os.fsync(self._kv.fileno())
        finally:
            self._lmdb.abort()  # a no-op once closed
            self._kv.close()
        with open(self.layout.labels_path, "w", encoding="utf-8", newline="\n") as f:
            for label, name in enumerate(self.identity_names):
                f.write(f"{label}\t{name}\n")
            f.flush()
            os.fsync(f.fileno())

    def abort(self) -> None:
        """Closes the files without finishing the label map (the folder is then discarded)."""
        if not self._closed:
            self._closed = True
            self._lmdb.abort()
            self._kv.close()

    def __enter__(self) -> TrainingDbWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_not_staging(folder: str | os.PathLike[str]) -> None:
    """``ValueError`` if ``folder`` is a staging (or replaced) folder of ``f2c.pack``."""
    folder = Path(folder)
    if (folder / STAGING_MARKER).exists() or _STAGING_NAME.search(folder.name):
        raise ValueError(
            f"{folder} is a staging folder of an unfinished or interrupted pack, not a db "
            "(f2c.pack builds under a temporary name and renames the folder when complete); "
            "pack again"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_staging(final: str | os.PathLike[str]) -> list[Path]:
    """Removes the staging folders of earlier, dead packs of ``final`` (``<name>.tmp-*`` /
    ``<name>.old-*``) and returns them; one still being written by a live pack on this host is
    kept and named in a warning."""
    final = Path(final)
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    for entry in sorted(final.parent.iterdir()):
        if not (entry.name.startswith(f"{final.name}.") and _STAGING_NAME.search(entry.name)):
            continue
        if not entry.is_dir() or entry.is_symlink():
            continue
        owner = _staging_owner(entry / STAGING_MARKER)
        if owner is not None and owner[0] == socket.gethostname() and _pid_alive(owner[1]):
            warnings.warn(
                f"{entry}: staging folder of a running pack (pid {owner[1]}); left alone",
                stacklevel=3,
            )
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _staging_owner(marker: Path) -> tuple[str, int] | None:
    """(host, pid) written in a staging marker, or None when absent or unreadable."""
    try:
        host, _, pid = marker.read_text(encoding="utf-8").strip().rpartition(" ")
        return host, int(pid)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling folder of ``final`` renamed to ``final`` when the block succeeds.

    The folder holds a marker file (host and pid of the writer) until just before the rename,
    and carries a ``<name>.tmp-*`` name until the rename: :func:`check_not_staging` refuses
    either. Stale staging folders of earlier packs of ``final`` are removed first (and named in
    a warning). On an exception (Ctrl-C included) the temporary folder is removed.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in clear_stale_staging(final):
        warnings.warn(f"removed {stale}, left by an interrupted pack", stacklevel=3)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        (tmp / STAGING_MARKER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield tmp
        (tmp / STAGING_MARKER).unlink()
        _fsync_dir(tmp)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f"{final.name}.old-", dir=final.parent))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
