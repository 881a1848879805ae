"""Pack training data into an f2c training db (``train.lmdb``, ``train.kv``, ``labels.tsv``).

Three kinds of input:

* an image folder ``root/<identity>/<image>``;
* WebFace-style splits: one root whose identity folders sit one level further down
  (``root/0/<identity>/…``, ``root/1/…``; detected, or forced with ``--layout splits``), or
  several roots given one after the other. Identities are named ``<split>/<identity>`` so names
  stay unique across splits (a name found in several splits gives several identities, and a
  note says so);
* an insightface RecordIO pack (``train.rec`` with its ``train.idx``, or the folder holding
  them): the JPEG bytes are copied as they are, never re-encoded; labels are those of the pack.

Labels of folders follow the sorted identity names (split by split), so the same tree gives the
same labels on every machine. Folder images are stored as JPEG crops of ``size``×``size``: JPEGs
already at that size (RGB, no landmarks given) are stored byte for byte; others are aligned with 5
landmarks onto the ArcFace template, or else centre-cropped to a square and resized, and
re-encoded.

Every JPEG stored is first checked with the reader's own strict decoder (``validate_jpeg``): a
truncated or corrupt JPEG, or a header claiming more than ``max_side`` pixels per side, is a bad
image (an error naming it, or skipped and listed with ``--skip-bad``). ``--no-verify`` copies a
RecordIO pack's bytes at disk speed, checking its record structure, labels and JPEG headers
(not the entropy-coded data).

The db folder is built under a temporary name and renamed when complete (``f2c.data.db``); a
leftover staging folder never opens as a db and is removed by the next pack of the same output.

    python -m f2c.pack faces/ packed/ --size 112 --landmarks faces/landmarks.txt --workers 2
    python -m f2c.pack webface42m/ packed/ --size 112            # root/0 … root/9 splits
    python -m f2c.pack ms1m-retinaface-t1/train.rec packed/       # RecordIO → LMDB
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from f2c._native import RecordIOReader, validate_jpeg
from f2c.align import align_face
from f2c.cli import add_debug_option, run_cli
from f2c.data.db import DbLayout, TrainingDbWriter, staging_dir, validate_key
from f2c.data.sources import RecordIOSpec, resolve_data_path

__all__ = [
    "BadImageError",
    "PackResult",
    "main",
    "pack_image_folder",
    "pack_recordio",
    "read_landmarks",
]

PROG = "python -m f2c.pack"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
REPORT_NAME = "skipped.tsv"
# Largest image side accepted (the reader's limit).
MAX_SIDE = 8192
Layout = Literal["auto", "flat", "splits"]


class BadImageError(ValueError):
    """An image that cannot be packed (unreadable, corrupt, too large, no landmarks, bad name)."""


@dataclass(frozen=True)
class PackResult:
    root: Path
    lmdb_path: Path
    kv_path: Path
    labels_path: Path
    num_images: int
    num_classes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    report_path: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Task:
    path: str  # absolute
    key: str  # relative path, '/'-separated
    landmarks: tuple[float, ...] | None


def read_landmarks(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A landmark file (``relpath x1 y1 … x5 y5`` per line) → {relpath: [5, 2] array}."""
    result: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=10)
            if len(parts) != 11:
                raise ValueError(
                    f"{os.fspath(path)}:{line_no}: expected `relpath x1 y1 ... x5 y5`"
                )
            try:
                values = np.array([float(v) for v in parts[1:]], dtype=np.float64)
            except ValueError:
                raise ValueError(
                    f"{os.fspath(path)}:{line_no}: landmark coordinates must be numbers"
                ) from None
            result[parts[0].replace(os.sep, "/")] = values.reshape(5, 2)
    return result


# --------------------------------------------------------------------------- folder scan


def _printable(path: str | os.PathLike[str]) -> str:
    """A path as text even when its name is not UTF-8 (undecodable bytes shown escaped)."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def _utf8_name(path: str) -> bool:
    try:
        os.path.basename(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_image(entry: os.DirEntry[str]) -> bool:
    return entry.name.lower().endswith(IMAGE_EXTENSIONS)


def _has_images(folder: str) -> bool:
    """True when ``folder`` directly holds an image file (entries that cannot be read count
    as not images)."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    if _is_image(entry) and entry.is_file():
                        return True
                except OSError:
                    continue
    except OSError:
        return False
    return False


def _subfolders(folder: Path) -> tuple[list[os.DirEntry[str]], list[tuple[str, str]]]:
    """Sub-folders of ``folder`` sorted by name, and (path, reason) of entries that cannot be
    examined (a symlink loop). A folder name that is not UTF-8 raises ``BadImageError``."""
    out, problems = [], []
    with os.scandir(folder) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir()
            except OSError as exc:
                problems.append((entry.path, f"cannot examine: {exc}"))
                continue
            if is_dir:
                if not _utf8_name(entry.path):
                    raise BadImageError(
                        f"{_printable(entry.path)}: folder name is not valid UTF-8 (identity "
                        "names are stored as UTF-8 text); rename it"
                    )
                out.append(entry)
    return sorted(out, key=lambda e: e.name), problems


def detect_layout(root: Path) -> Literal["flat", "splits"]:
    """``flat`` when identity folders sit directly under ``root`` (they hold images), ``splits``
    when they sit one level further down (``root/<split>/<identity>/<image>``)."""
    for sub in _subfolders(root)[0]:
        if _has_images(sub.path):
            return "flat"
        for subsub in _subfolders(Path(sub.path))[0]:
            if _has_images(subsub.path):
                return "splits"
    raise ValueError(
        f"no images found under {root} (expected root/<identity>/<image> or "
        "root/<split>/<identity>/<image>)"
    )


@dataclass(frozen=True)
class _Split:
    prefix: str  # '' for a single flat root, else '<split>/'
    path: Path


def _splits(roots: Sequence[Path], layout: Layout) -> list[_Split]:
    """The folders whose sub-folders are identities, with the prefix of their names."""
    named: list[tuple[str, Path]] = []
    for root in roots:
        kind = detect_layout(root) if layout == "auto" else layout
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        if kind == "flat":
            named.append((prefix, root))
        else:
            named.extend(
                (f"{prefix}{sub.name}/", Path(sub.path)) for sub in _subfolders(root)[0]
            )
    seen: dict[str, Path] = {}
    for prefix, path in named:
        if prefix in seen:
            raise ValueError(
                f"two splits are both named {prefix.rstrip('/')!r}: {seen[prefix]} and {path} "
                "(identity names would collide; give roots distinct folder names)"
            )
        seen[prefix] = path
    return [_Split(prefix, path) for prefix, path in named]


@dataclass
class _Scan:
    identities: list[str] = field(default_factory=list)
    images: list[tuple[int, Path, str]] = field(default_factory=list)  # (label, path, key)
    bad: list[tuple[Path, str, str]] = field(default_factory=list)  # (path, key, reason)
    notes: list[str] = field(default_factory=list)


def _scan(splits: Sequence[_Split]) -> _Scan:
    """Identity names (``prefix + folder``), in split then name order, and every image file."""
    scan = _Scan()
    where: dict[str, list[str]] = {}
    for split in splits:
        folders, problems = _subfolders(split.path)
        for path, reason in problems:
            name = _printable(os.path.basename(path))
            scan.bad.append((Path(path), f"{split.prefix}{name}/", reason))
        for entry in folders:
            files = []
            with os.scandir(entry.path) as it:
                for f in it:
                    if not _is_image(f):
                        continue
                    key = f"{split.prefix}{entry.name}/{_printable(f.name)}"
                    try:
                        regular = f.is_file()
                    except OSError as exc:  # a symlink loop, a vanished file
                        scan.bad.append((Path(f.path), key, f"cannot examine: {exc}"))
                        continue
                    if not regular:
                        continue
                    if not _utf8_name(f.path):
                        scan.bad.append(
                            (Path(f.path), key, "file name is not valid UTF-8 (keys are UTF-8)")
                        )
                        continue
                    files.append(f)
            if not files:
                continue
            label = len(scan.identities)
            scan.identities.append(split.prefix + entry.name)
            where.setdefault(entry.name, []).append(split.prefix.rstrip("/"))
            scan.images.extend(
                (label, Path(f.path), f"{split.prefix}{entry.name}/{f.name}")
                for f in sorted(files, key=lambda f: f.name)
            )
    repeated = {name: s for name, s in where.items() if len(s) > 1}
    if repeated:
        shown = "; ".join(f"{name} in {', '.join(s)}" for name, s in list(repeated.items())[:5])
        scan.notes.append(
            f"{len(repeated)} identity name(s) occur in several splits and were packed as "
            f"separate identities (<split>/<name>): {shown}"
        )
    return scan


# --------------------------------------------------------------------------- images


def _bounded(width: int, height: int, max_side: int) -> str:
    if width > max_side or height > max_side:
        return f"image of {width}x{height} pixels is above the limit of {max_side} per side"
    return ""


def _prepare(task: _Task, size: int, quality: int, max_side: int) -> tuple[bytes | None, str]:
    """The JPEG bytes to store for one image, or (None, reason)."""
    try:
        with open(task.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return None, f"unreadable file: {exc}"
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg:
        # The reader's own strict decoder: what is stored here decodes in training.
        try:
            validate_jpeg(data, max_side)
        except ValueError as exc:
            return None, f"bad JPEG: {exc}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            too_big = _bounded(*image.size, max_side)
            if too_big:
                return None, too_big
            as_is = (
                is_jpeg
                and task.landmarks is None
                and image.format == "JPEG"
                and image.mode == "RGB"
                and image.size == (size, size)
            )
            if as_is:
                return data, ""
            image.load()
            rgb = image.convert("RGB")
    except Exception as exc:  # any decoder failure marks the image bad
        return None, f"unreadable image: {type(exc).__name__}: {exc}"
    if task.landmarks is not None:
        try:
            crop = Image.fromarray(align_face(rgb, np.reshape(task.landmarks, (5, 2)), size))
        except ValueError as exc:
            return None, f"cannot align: {exc}"
    else:
        w, h = rgb.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        crop = rgb.crop((left, top, left + side, top + side))
        if side != size:
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    crop.save(out, format="JPEG", quality=quality)
    return out.getvalue(), ""


def _prepare_star(args: tuple[_Task, int, int, int]) -> tuple[bytes | None, str]:
    return _prepare(*args)


def _results(
    tasks: Sequence[_Task], size: int, quality: int, max_side: int, workers: int
) -> Iterator[tuple[bytes | None, str]]:
    jobs = ((t, size, quality, max_side) for t in tasks)
    if workers <= 1:
        yield from map(_prepare_star, jobs)
        return
    # spawn: no inherited threads or open LMDB handles in the workers.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_prepare_star, jobs, chunksize=32)


def _write_report(folder: Path, skipped: Sequence[tuple[str, str]]) -> None:
    with open(folder / REPORT_NAME, "w", encoding="utf-8", newline="\n") as f:
        f.write("path\treason\n")
        for key, reason in skipped:
            f.write(f"{key}\t{' '.join(reason.split())}\n")
        f.flush()
        os.fsync(f.fileno())


def _result(out: Path, count: int, classes: int, skipped: list[tuple[str, str]],
            skip_bad: bool, notes: list[str]) -> PackResult:
    layout = DbLayout(out)
    return PackResult(
        root=layout.root,
        lmdb_path=layout.lmdb_path,
        kv_path=layout.kv_path,
        labels_path=layout.labels_path,
        num_images=count,
        num_classes=classes,
        skipped=skipped,
        report_path=out / REPORT_NAME if skip_bad else None,
        notes=notes,
    )


def pack_image_folder(
    root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    size: int = 112,
    landmarks: str | os.PathLike[str] | dict[str, np.ndarray] | None = None,
    quality: int = 95,
    workers: int = 1,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    layout: Layout = "auto",
    max_side: int = MAX_SIDE,
) -> PackResult:
    """Packs image folders (see the module doc) into the db folder ``out``.

    ``root`` is one folder or several (splits). Without ``skip_bad`` the first bad image stops
    packing with :class:`BadImageError` naming it (and no db is left behind); with it, bad
    images are listed in ``out/skipped.tsv``.
    """
    roots = [Path(root)] if isinstance(root, str | os.PathLike) else [Path(r) for r in root]
    if not roots:
        raise ValueError("no image folder given")
    for r in roots:
        if not r.is_dir():
            raise FileNotFoundError(f"image root {r} is not a directory")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if layout not in ("auto", "flat", "splits"):
        raise ValueError(f"layout must be auto, flat or splits, got {layout!r}")
    marks = read_landmarks(landmarks) if isinstance(landmarks, str | os.PathLike) else landmarks
    scan = _scan(_splits(roots, layout))
    if not scan.images:
        where = ", ".join(map(str, roots))
        raise ValueError(f"no images found under {where} (expected root/<identity>/<image>)")
    if scan.bad and not skip_bad:
        path, _, reason = scan.bad[0]
        raise BadImageError(f"{_printable(path)}: {reason}")

    tasks: list[_Task] = []
    bad: dict[int, str] = {}
    for i, (_, path, key) in enumerate(scan.images):
        points = None
        if marks is not None:
            found = marks.get(key)
            if found is None:
                bad[i] = "no landmarks for this image"
            else:
                points = tuple(float(v) for v in np.asarray(found).reshape(-1))
        try:
            validate_key(key)
        except ValueError as exc:
            bad[i] = str(exc)
        tasks.append(_Task(os.fspath(path), key, points))

    skipped: list[tuple[str, str]] = [(key, reason) for _, key, reason in scan.bad]
    with staging_dir(out, overwrite=overwrite) as tmp:
        with TrainingDbWriter(tmp, scan.identities) as writer:
            results = _results(
                [t for i, t in enumerate(tasks) if i not in bad], size, quality, max_side,
                workers,
            )
            bar = tqdm(total=len(tasks), unit="img", disable=not progress, desc="pack")
            with bar:
                for i, (label, path, key) in enumerate(scan.images):
                    if i in bad:
                        value, reason = None, bad[i]
                    else:
                        value, reason = next(results)
                    bar.update(1)
                    if value is None:
                        if not skip_bad:
                            raise BadImageError(f"{_printable(path)}: {reason}")
                        skipped.append((key, reason))
                        continue
                    writer.add(key, label, value)
            if writer.count == 0:
                raise BadImageError(f"every image under {', '.join(map(str, roots))} was unusable")
            count = writer.count
        if skip_bad:
            _write_report(tmp, skipped)
    return _result(Path(out), count, len(scan.identities), skipped, skip_bad, scan.notes)


# --------------------------------------------------------------------------- RecordIO


def pack_recordio(
    rec: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    idx: str | os.PathLike[str] | None = None,
    label_source: str = "auto",
    verify: bool = True,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    batch: int = 1024,
    num_threads: int | None = None,
) -> PackResult:
    """Copies the JPEGs of an insightface RecordIO pack into the db folder ``out``.

    Keys are the record indices, zero-padded to one width (so LMDB appends them in order);
    identity names in ``labels.tsv`` are the class ids. With ``verify`` every image is decoded
    by the reader's strict decoder first (in parallel); without, the record structure, the
    labels and each JPEG's headers (a JPEG of the pack's image size) are checked, not its
    entropy-coded data. The bytes are copied by the Rust core, without passing through Python.
    Bad records stop the pack with an error naming the record, or are skipped and listed with
    ``skip_bad``.
    """
    reader = RecordIOReader(rec, idx, num_threads, label_source)
    rows_total = len(reader)
    keys = reader.keys()
    width = len(str(int(keys.max())))
    ascending = bool(np.all(np.diff(keys) > 0))
    names = [str(c) for c in range(reader.num_classes)]
    skipped: list[tuple[str, str]] = []
    with staging_dir(out, overwrite=overwrite) as tmp:
        with TrainingDbWriter(tmp, names, append=ascending) as writer:
            bar = tqdm(total=rows_total, unit="img", disable=not progress, desc="pack")
            starts = range(0, rows_total, batch)

            def decoded(start: int) -> np.ndarray:
                """The rows of the batch at ``start`` whose images decode (all of them
                without ``verify``)."""
                rows = np.arange(start, min(start + batch, rows_total), dtype=np.int64)
                reader.prefetch(rows)  # from disk in order, not page by page
                if not verify:
                    return rows
                return _passing(reader, rows, reader.read, skip_bad, skipped)

            # One thread prefetches (and with ``verify`` decodes) the next batch while this one
            # copies the last: the reader's decode and the LMDB copy both run without the GIL.
            with bar, ThreadPoolExecutor(max_workers=1) as ahead:
                pending = ahead.submit(decoded, starts[0])
                for i in range(len(starts)):
                    rows = pending.result()
                    if i + 1 < len(starts):
                        pending = ahead.submit(decoded, starts[i + 1])
                    # A batch holding a record that is not a JPEG of the pack's size is refused
                    # whole (its transaction aborted); with skip_bad its records then go one by one.
                    _passing(reader, rows, partial(writer.add_recordio, reader, key_width=width),
                             skip_bad, skipped)
                    bar.update(min(batch, rows_total - starts[i]))
            if writer.count == 0:
                raise BadImageError(f"every record of {rec} was unusable")
            count = writer.count
        if skip_bad:
            _write_report(tmp, skipped)
    return _result(Path(out), count, reader.num_classes, skipped, skip_bad, [])


def _passing(
    reader: RecordIOReader,
    rows: np.ndarray,
    check: Callable[[np.ndarray], object],
    skip_bad: bool,
    skipped: list[tuple[str, str]],
) -> np.ndarray:
    """``rows`` that ``check`` accepts (``check`` may also do the work, such as copying them). A
    refused batch raises ``BadImageError`` (its message names the record) or, with
    ``skip_bad``, is checked row by row, the refused ones going to ``skipped``."""
    try:
        check(rows)
        return rows
    except ValueError as exc:
        if not skip_bad:
            raise BadImageError(str(exc)) from None
    good = []
    for row in rows.tolist():
        try:
            check(np.array([row], dtype=np.int64))
        except ValueError as exc:
            skipped.append((str(reader.key(row)), str(exc)))
            continue
        good.append(row)
    return np.asarray(good, dtype=np.int64)


# --------------------------------------------------------------------------- CLI


def _recordio_input(sources: Sequence[str]) -> RecordIOSpec | None:
    """The RecordIO pack named by ``sources`` (one .rec, or a folder holding train.rec)."""
    specs = []
    for s in sources:
        p = Path(s)
        if p.suffix.lower() in (".rec", ".idx") or (p.is_dir() and (p / "train.rec").is_file()):
            specs.append(resolve_data_path(p))
    if not specs:
        return None
    if len(sources) > 1:
        raise ValueError("a RecordIO pack is packed on its own (one .rec per output db)")
    spec = specs[0]
    assert isinstance(spec, RecordIOSpec)
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m f2c.pack``: 0 when packed; bad inputs print one line and return 2 (``--debug``
    or ``F2C_DEBUG=1`` shows the traceback)."""
    # Bad inputs surface as ValueError (BadImageError, malformed packs) or OSError.
    return run_cli(PROG, _pack, argv, user_errors=(ValueError, OSError))


def _pack(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pack image folders (root/<identity>/<image>, WebFace-style splits) or an "
        "insightface RecordIO pack into a training db folder (train.lmdb, train.kv, "
        "labels.tsv).",
    )
    parser.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="image folder(s): one per split, or one root of root/<split>/<identity> folders; "
        "or one .rec (its .idx beside it) or a folder holding train.rec",
    )
    parser.add_argument("out", help="output db folder (must not exist unless --overwrite)")
    parser.add_argument("--size", type=int, default=112, help="crop size (112, or 224 for r50)")
    parser.add_argument(
        "--landmarks", help="file of `relpath x1 y1 ... x5 y5` lines: align onto ArcFace"
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoding")
    parser.add_argument("--workers", type=int, default=1, help="decode/encode processes")
    parser.add_argument(
        "--layout", choices=("auto", "flat", "splits"), default="auto",
        help="flat: root/<identity>/<image>; splits: root/<split>/<identity>/<image>; "
        "auto: detect (default)",
    )
    parser.add_argument(
        "--max-side", type=int, default=MAX_SIDE,
        help=f"refuse images larger than this per side (default {MAX_SIDE})",
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip bad images (listed in skipped.tsv)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-verify", action="store_true",
        help="RecordIO: copy the JPEG bytes without decoding them first (disk speed; headers "
        "are checked, the image data only when training reads it)",
    )
    parser.add_argument(
        "--label-source", choices=("auto", "records"), default="auto",
        help="RecordIO: labels from the identity records when the pack has them (auto), or "
        "from every record's own header",
    )
    add_debug_option(parser)
    args = parser.parse_args(argv)
    rec = _recordio_input(args.sources)
    if rec is not None:
        result = pack_recordio(
            rec.rec, args.out, idx=rec.idx, label_source=args.label_source,
            verify=not args.no_verify, skip_bad=args.skip_bad, overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    else:
        result = pack_image_folder(
            args.sources,
            args.out,
            size=args.size,
            landmarks=args.landmarks,
            quality=args.quality,
            workers=args.workers,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            layout=args.layout,
            max_side=args.max_side,
        )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"packed {result.num_images} images of {result.num_classes} identities into "
        f"{result.root}" + (f"; skipped {len(result.skipped)} (see {result.report_path})"
                            if result.skipped else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
