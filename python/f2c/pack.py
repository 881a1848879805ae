"""Pack an image-folder tree (``root/<identity>/<image>``) into a training db.

Labels follow the sorted identity names, so the same tree gives the same labels on every
machine. Images are stored as JPEG crops of ``size``×``size``: JPEGs already at that size (RGB,
no landmarks given) are stored byte for byte; others are aligned with 5 landmarks onto the
ArcFace template, or else centre-cropped to a square and resized, and re-encoded.

The db folder is built under a temporary name and renamed when complete (``f2c.data.db``).

    python -m f2c.pack faces/ packed/ --size 112 --landmarks faces/landmarks.txt --workers 2
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from f2c.align import align_face
from f2c.data.db import DbLayout, TrainingDbWriter, staging_dir, validate_key

__all__ = ["BadImageError", "PackResult", "main", "pack_image_folder", "read_landmarks"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
REPORT_NAME = "skipped.tsv"


class BadImageError(ValueError):
    """An image that cannot be packed (unreadable, no landmarks, unsupported name)."""


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


def _scan(root: Path) -> tuple[list[str], list[tuple[int, Path, str]]]:
    """Sorted identity names and (label, path, key) of every image file, in label order."""
    identities: list[str] = []
    images: list[tuple[int, Path, str]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        files = sorted(
            (f for f in os.scandir(entry.path) if f.is_file() and
             f.name.lower().endswith(IMAGE_EXTENSIONS)),
            key=lambda f: f.name,
        )
        if not files:
            continue
        label = len(identities)
        identities.append(entry.name)
        images.extend((label, Path(f.path), f"{entry.name}/{f.name}") for f in files)
    return identities, images


def _prepare(task: _Task, size: int, quality: int) -> tuple[bytes | None, str]:
    """The JPEG bytes to store for one image, or (None, reason)."""
    try:
        with open(task.path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            as_is = (
                task.landmarks is None
                and image.format == "JPEG"
                and image.mode == "RGB"
                and image.size == (size, size)
            )
            if as_is:
                return data, ""
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


def _prepare_star(args: tuple[_Task, int, int]) -> tuple[bytes | None, str]:
    return _prepare(*args)


def _results(
    tasks: Sequence[_Task], size: int, quality: int, workers: int
) -> Iterator[tuple[bytes | None, str]]:
    jobs = ((t, size, quality) for t in tasks)
    if workers <= 1:
        yield from map(_prepare_star, jobs)
        return
    # spawn: no inherited threads or open LMDB handles in the workers.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_prepare_star, jobs, chunksize=32)


def pack_image_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 112,
    landmarks: str | os.PathLike[str] | dict[str, np.ndarray] | None = None,
    quality: int = 95,
    workers: int = 1,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PackResult:
    """Packs ``root/<identity>/<image>`` into the db folder ``out`` (see module doc).

    Without ``skip_bad`` the first bad image stops packing with :class:`BadImageError` naming
    it (and no db is left behind); with it, bad images are listed in ``out/skipped.tsv``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    marks = read_landmarks(landmarks) if isinstance(landmarks, str | os.PathLike) else landmarks
    identities, images = _scan(root)
    if not images:
        raise ValueError(f"no images found under {root} (expected root/<identity>/<image>)")

    tasks: list[_Task] = []
    bad: dict[int, str] = {}
    for i, (_, path, key) in enumerate(images):
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

    skipped: list[tuple[str, str]] = []
    with staging_dir(out, overwrite=overwrite) as tmp:
        with TrainingDbWriter(tmp, identities) as writer:
            results = _results(
                [t for i, t in enumerate(tasks) if i not in bad], size, quality, workers
            )
            bar = tqdm(total=len(tasks), unit="img", disable=not progress, desc="pack")
            with bar:
                for i, (label, _, key) in enumerate(images):
                    if i in bad:
                        value, reason = None, bad[i]
                    else:
                        value, reason = next(results)
                    bar.update(1)
                    if value is None:
                        if not skip_bad:
                            raise BadImageError(f"{images[i][1]}: {reason}")
                        skipped.append((key, reason))
                        continue
                    writer.add(key, label, value)
            if writer.count == 0:
                raise BadImageError(f"every image under {root} was unusable")
            count = writer.count
        report = None
        if skip_bad:
            report = Path(out) / REPORT_NAME
            with open(tmp / REPORT_NAME, "w", encoding="utf-8") as f:
                f.write("path\treason\n")
                for key, reason in skipped:
                    f.write(f"{key}\t{reason}\n")
    layout = DbLayout(Path(out))
    return PackResult(
        root=layout.root,
        lmdb_path=layout.lmdb_path,
        kv_path=layout.kv_path,
        labels_path=layout.labels_path,
        num_images=count,
        num_classes=len(identities),
        skipped=skipped,
        report_path=report,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m f2c.pack",
        description="Pack root/<identity>/<image> into a training db folder "
        "(train.lmdb, train.kv, labels.tsv).",
    )
    parser.add_argument("root", help="image folder: one sub-folder per identity")
    parser.add_argument("out", help="output db folder (must not exist unless --overwrite)")
    parser.add_argument("--size", type=int, default=112, help="crop size (112, or 224 for r50)")
    parser.add_argument(
        "--landmarks", help="file of `relpath x1 y1 ... x5 y5` lines: align onto ArcFace"
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoding")
    parser.add_argument("--workers", type=int, default=1, help="decode/encode processes")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (listed in skipped.tsv)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        result = pack_image_folder(
            args.root,
            args.out,
            size=args.size,
            landmarks=args.landmarks,
            quality=args.quality,
            workers=args.workers,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"packed {result.num_images} images of {result.num_classes} identities into "
        f"{result.root}" + (f"; skipped {len(result.skipped)} (see {result.report_path})"
                            if result.skipped else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
