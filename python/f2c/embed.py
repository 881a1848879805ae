"""Embed a folder of aligned face crops.

    python -m f2c.embed IMAGE_DIR --checkpoint runs/f2c-ir50 --out feats.npy [--flip]
    python -m f2c.embed IMAGE_DIR --onnx ir50.onnx --out feats.npy

Every image under IMAGE_DIR (recursively; .jpg .jpeg .png .bmp .webp), in sorted path order, is
read as RGB; square crops are resized to the backbone's input size. Writes ``feats.npy``
(float32 ``[N, D]``, L2-normalised) and, beside it, ``feats.txt``: the image paths relative to
IMAGE_DIR, one per line, in row order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from tqdm import tqdm

from f2c.cli import UserError, add_debug_option, positive_int, run_cli
from f2c.embedder import FaceEmbedder

__all__ = ["IMAGE_SUFFIXES", "embed_folder", "list_images", "main"]

PROG = "python -m f2c.embed"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, sorted by their path relative to it."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read(path: Path, size: int) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except OSError as exc:
        raise UserError(f"{path}: cannot read image: {exc}") from exc
    if rgb.size != (size, size):
        if rgb.size[0] != rgb.size[1]:
            raise UserError(f"{path}: {rgb.size[0]}x{rgb.size[1]} is not a square aligned crop")
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _batches(
    files: Sequence[Path], size: int, batch: int, workers: int
) -> Iterator[npt.NDArray[np.uint8]]:
    """Decoded batches; the next batch is decoded while the current one is embedded."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        chunks = [files[s : s + batch] for s in range(0, len(files), batch)]
        pending = [pool.submit(_read, f, size) for f in chunks[0]] if chunks else []
        for i in range(len(chunks)):
            images = [f.result() for f in pending]
            if i + 1 < len(chunks):
                pending = [pool.submit(_read, f, size) for f in chunks[i + 1]]
            yield np.stack(images)


def embed_folder(
    embedder: FaceEmbedder,
    root: Path,
    *,
    workers: int = 2,
    progress: bool = True,
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Embeddings ``[N, D]`` of every image under ``root`` and their relative paths."""
    files = list_images(root)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    feats = np.empty((len(files), embedder.embedding_size), np.float32)
    done = 0
    with tqdm(total=len(files), unit="img", disable=not progress, desc="embed") as bar:
        for batch in _batches(files, embedder.input_size, embedder.batch_size, workers):
            feats[done : done + len(batch)] = embedder.embed(batch)
            done += len(batch)
            bar.update(len(batch))
    return feats, [f.relative_to(root).as_posix() for f in files]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, metavar="IMAGE_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="f2c checkpoint file or run folder")
    src.add_argument("--onnx", type=Path, help="an exported ONNX model")
    p.add_argument("--out", required=True, type=Path, help="features .npy (paths go to .txt)")
    p.add_argument("--net", choices=("probe", "gallery"), default="probe")
    p.add_argument("--model", help="backbone name, if the checkpoint does not record it")
    p.add_argument("--embedding-size", type=positive_int)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--flip", action="store_true", help="flip-sum test-time augmentation")
    p.add_argument("--workers", type=positive_int, default=2, help="image decoding threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_debug_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m f2c.embed``: 0 on success; a user error prints one line and returns 2."""
    return run_cli(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    if out.suffix != ".npy":
        raise UserError(f"--out must end in .npy, got {out}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.onnx is not None:
        embedder = FaceEmbedder.from_onnx(args.onnx, device=args.device,
                                          batch_size=args.batch_size, flip=args.flip)
    else:
        embedder = FaceEmbedder.from_checkpoint(
            args.checkpoint, net=args.net, device=args.device, batch_size=args.batch_size,
            flip=args.flip, backbone=args.model, embedding_size=args.embedding_size)
    feats, names = embed_folder(embedder, args.images, workers=args.workers,
                                progress=args.progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats)
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"{n}\n" for n in names))
    print(f"wrote {out} ({feats.shape[0]} x {feats.shape[1]} float32) and {listing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
