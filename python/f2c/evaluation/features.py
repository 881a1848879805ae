"""Batched feature extraction, and a small on-disk store so one extraction serves many metrics.

Images reach the network exactly as in training: uint8 RGB ``[N, H, W, 3]`` batches, moved to
the device, then :func:`f2c.data.transforms.normalize`. Features are returned *raw* (not
L2-normalised); each benchmark normalises where its protocol says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from f2c.data.transforms import normalize
from f2c.evaluation.errors import ImageError, InputError

__all__ = [
    "ArrayImages",
    "Embedder",
    "EncodedImages",
    "ImageFiles",
    "ImageSource",
    "cached_features",
    "extract_features",
    "load_features",
    "require_files",
    "save_features",
]

MANIFEST_VERSION = 2  # 2: manifests record the images' content fingerprint


class ImageSource(Protocol):
    """Anything with a length, a stable id per image, a fingerprint of the content, and a loader
    returning uint8 RGB HxWx3."""

    def __len__(self) -> int: ...

    def ids(self) -> list[str]: ...

    def fingerprint(self) -> str: ...

    def load(self, index: int) -> np.ndarray: ...


def _to_rgb_array(img: Image.Image, image_size: int | None, what: str) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if image_size is not None and img.size != (image_size, image_size):
        if img.size[0] != img.size[1]:
            raise InputError(
                f"{what}: image is {img.size[0]}x{img.size[1]}, not square; expected an aligned "
                f"crop (resizing would distort it)"
            )
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def require_files(paths: Sequence[Path], what: str, hint: str = "") -> None:
    """Refuse a list of image files in which one is missing, naming the first missing one."""
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise FileNotFoundError(f"{what} not found: {missing}" + (f" ({hint})" if hint else ""))


class _Listed:
    """Images known by one id each (the ids name rows in the feature store)."""

    def __init__(self, count: int, ids: Sequence[Any] | None, what: str) -> None:
        self._ids = [str(i) for i in (range(count) if ids is None else ids)]
        if len(self._ids) != count:
            raise ValueError(f"{count} {what} but {len(self._ids)} ids")

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return self._ids


def _digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=20)
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))  # lengths too: chunk boundaries are content
        h.update(c)
    return h.hexdigest()


class ImageFiles(_Listed):
    """Images on disk (any format PIL reads), optionally resized to ``image_size`` squares.

    The fingerprint is taken from each file's metadata, not its bytes (hashing a million
    images would cost as much as reading them): path, size, mtime_ns, ctime_ns, inode and
    device. Replacing a file (a new inode) or writing it (new ctime) changes it; only a
    rewrite that keeps the size within one timestamp tick of the file system would not.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        ids: Sequence[str] | None = None,
        image_size: int | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        super().__init__(len(self.paths), [str(p) for p in paths] if ids is None else ids,
                         "paths")
        self.image_size = image_size

    def fingerprint(self) -> str:
        def stat(p: Path) -> bytes:
            try:
                st = p.stat()
            except FileNotFoundError:
                raise FileNotFoundError(f"image not found: {p}") from None
            fields = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
            return f"{p}|{fields}".encode(errors="surrogateescape")

        return "stat:" + _digest(stat(p) for p in self.paths)

    def load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return _to_rgb_array(img, self.image_size, str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {path}") from None
        except OSError as e:
            raise ImageError(f"{path}: cannot decode image: {e}") from e


class EncodedImages(_Listed):
    """Encoded images held in memory (e.g. the JPEG bytes of an insightface ``.bin`` pack);
    the fingerprint hashes every byte."""

    def __init__(
        self, blobs: Sequence[bytes], ids: Sequence[str], image_size: int | None = None
    ) -> None:
        super().__init__(len(blobs), ids, "images")
        self.blobs = blobs
        self.image_size = image_size

    def fingerprint(self) -> str:
        return "blake2b:" + _digest(self.blobs)

    def load(self, index: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(self.blobs[index])) as img:
                return _to_rgb_array(img, self.image_size, self._ids[index])
        except OSError as e:
            raise ImageError(f"{self._ids[index]}: cannot decode image: {e}") from e


class ArrayImages(_Listed):
    """A uint8 ``[N, H, W, 3]`` array already in memory; the fingerprint hashes its pixels."""

    def __init__(self, images: np.ndarray, ids: Sequence[str] | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}"
            )
        super().__init__(len(images), ids, "images")
        self.images = images

    def fingerprint(self) -> str:
        shape = str(self.images.shape).encode()
        return "blake2b:" + _digest([shape, np.ascontiguousarray(self.images).tobytes()])

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def _stack(arrays: list[np.ndarray], ids: list[str], start: int) -> np.ndarray:
    shape = arrays[0].shape
    for j, a in enumerate(arrays):
        if a.shape != shape or a.ndim != 3 or a.shape[-1] != 3:
            raise InputError(
                f"image {ids[start + j]} has shape {a.shape}, but {ids[start]} has {shape}; "
                f"all images of a benchmark must be aligned crops of one size (or set image_size)"
            )
    return np.stack(arrays)


def _use_amp(amp: bool | None, device: torch.device) -> bool:
    if amp is None:
        return device.type == "cuda"
    if amp and device.type != "cuda":
        raise ValueError(f"mixed precision is only used on CUDA devices, not on {device}")
    return amp


def extract_features(
    model: torch.nn.Module,
    images: ImageSource,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    flip: bool = True,
    amp: bool | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embed every image; returns raw float32 features ``[N, D]`` in image order.

    ``flip=True`` returns ``f(x) + f(flip(x))`` (horizontal flip, summed; the two halves share
    one forward pass). ``amp=None`` uses float16 autocast on CUDA and plain fp32 elsewhere;
    ``amp=True`` on a CPU device is refused. The model runs in eval mode under
    ``torch.inference_mode`` and its train/eval mode is restored afterwards. ``workers`` threads
    decode the next batch while the current one runs through the network.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dev = torch.device(device)
    use_amp = _use_amp(amp, dev)
    n = len(images)
    ids = images.ids()
    starts = list(range(0, n, batch_size))
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

            def submit(start: int) -> list[Future[np.ndarray]]:
                stop = min(start + batch_size, n)
                return [pool.submit(images.load, i) for i in range(start, stop)]

            pending = submit(starts[0]) if starts else []
            for b, start in enumerate(starts):
                arrays = [f.result() for f in pending]
                pending = submit(starts[b + 1]) if b + 1 < len(starts) else []
                batch = torch.from_numpy(_stack(arrays, ids, start)).to(dev, non_blocking=True)
                chunks.append(_embed(model, batch, flip, use_amp))
                if progress is not None:
                    progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("no images to embed")
    return np.concatenate(chunks)


def _embed(model: torch.nn.Module, batch: torch.Tensor, flip: bool, use_amp: bool) -> np.ndarray:
    with torch.inference_mode():
        x = normalize(batch)
        if flip:
            x = torch.cat([x, x.flip(3)])
        with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
            out = model(x)
        out = out.float()
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"the model must map [N, 3, H, W] to [N, D]; got output {tuple(out.shape)}"
            )
        if flip:
            half = batch.shape[0]
            out = out[:half] + out[half:]
        return out.cpu().numpy()


# ---------------------------------------------------------------- feature store


def _stem_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    stem = Path(stem)
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def save_features(
    stem: str | os.PathLike[str], features: np.ndarray, manifest: dict[str, Any]
) -> None:
    """Write ``<stem>.npy`` (float32 ``[N, D]``) and ``<stem>.json`` (the manifest) atomically.

    The manifest must hold ``images`` (one id per row); ``count``, ``embedding_size``, ``date``
    and ``version`` are filled in here.
    """
    images = manifest.get("images")
    if not isinstance(images, list) or len(images) != len(features):
        raise ValueError("manifest['images'] must list one id per feature row")
    npy, js = _stem_paths(stem)
    npy.parent.mkdir(parents=True, exist_ok=True)
    full = dict(manifest)
    full.update(
        count=int(features.shape[0]),
        embedding_size=int(features.shape[1]),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        version=MANIFEST_VERSION,
    )
    tmp_npy = npy.with_name(npy.name + ".tmp.npy")
    np.save(tmp_npy, np.ascontiguousarray(features, dtype=np.float32))
    tmp_js = js.with_name(js.name + ".tmp")
    tmp_js.write_text(json.dumps(full, indent=1))
    os.replace(tmp_npy, npy)
    os.replace(tmp_js, js)  # the manifest last: its presence marks a complete store


def load_features(
    stem: str | os.PathLike[str], mmap: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a store written by :func:`save_features`; checks the row count against the manifest."""
    npy, js = _stem_paths(stem)
    if not js.exists():
        raise FileNotFoundError(f"feature manifest not found: {js}")
    try:
        manifest = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{js}: not a valid JSON manifest: {e}") from e
    feats = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    if feats.ndim != 2 or feats.shape[0] != manifest.get("count"):
        raise ValueError(
            f"{npy}: shape {feats.shape} does not match the manifest's count "
            f"{manifest.get('count')}"
        )
    return feats, manifest


def cached_features(
    stem: str | os.PathLike[str] | None,
    model: torch.nn.Module,
    images: ImageSource,
    *,
    model_id: str,
    flip: bool = True,
    extra: dict[str, Any] | None = None,
    **extract_kwargs: Any,
) -> np.ndarray:
    """Features for ``images``, re-used from ``<stem>.npy`` when its manifest matches.

    A store matches when its image ids, the images' content fingerprint
    (:meth:`ImageSource.fingerprint`: a hash of every byte for in-memory images such as a
    ``.bin`` pack, the size, mtime_ns, ctime_ns and inode of every file for images on disk),
    ``model_id``, ``flip`` and ``extra`` (e.g. the image size) are equal to this request's;
    otherwise the features are extracted and the store is (re)written. So a pack replaced in
    place by another of the same name is embedded again, never served the old features.
    ``stem=None``, or a source without a ``fingerprint``, disables the store.
    """
    fingerprint = getattr(images, "fingerprint", None)
    if fingerprint is None:
        stem = None
    want: dict[str, Any] = {
        "images": images.ids(),
        "content": None if stem is None else fingerprint(),  # type: ignore[misc]
        "model": model_id,
        "flip": flip,
        "extra": extra or {},
    }
    if stem is not None:
        npy, js = _stem_paths(stem)
        if js.exists() and npy.exists():
            feats, manifest = load_features(stem)
            if all(manifest.get(k) == v for k, v in want.items()):
                return feats
    feats = extract_features(model, images, flip=flip, **extract_kwargs)
    if stem is not None:
        save_features(stem, feats, want)
    return feats


@dataclass(frozen=True)
class Embedder:
    """How a benchmark's images become features: the network and how it is run.

    ``image_size`` is recorded in the store's manifest (the image sources do the resizing).
    """

    model: torch.nn.Module
    model_id: str = "model"  # identifies the weights in the store's manifest
    flip: bool = True
    device: str | torch.device = "cpu"
    batch_size: int = 128
    image_size: int | None = None

    def features(
        self, images: ImageSource, stem: str | os.PathLike[str] | None = None
    ) -> np.ndarray:
        """Raw features of ``images``, through the store ``stem`` (None: no store)."""
        return cached_features(
            stem, self.model, images, model_id=self.model_id, flip=self.flip,
            extra={"image_size": self.image_size}, device=self.device,
            batch_size=self.batch_size,
        )
