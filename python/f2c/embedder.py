"""``FaceEmbedder``: L2-normalised face embeddings from a checkpoint or an exported ONNX file.

    emb = FaceEmbedder.from_checkpoint("runs/f2c-ir50")       # or .from_onnx("ir50.onnx")
    feats = emb.embed(crops)                  # uint8 RGB [N, S, S, 3] aligned crops -> [N, D]
    feats = emb.embed_faces(images, landmarks5)   # align with f2c.align first

Images are normalised exactly as in training (``f2c.data.transforms.normalize``; the ONNX path
uses the same ``(x − 127.5) / 127.5``), run in batches of ``batch_size``, optionally flip-summed
(``f(x) + f(flip(x))``, one forward of both), then L2-normalised; the result is float32 numpy.
An embedder reuses its input buffer between calls: use one per thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from f2c.align import align_face
from f2c.models import ModelSpec, load_backbone

__all__ = ["FaceEmbedder"]


class _Backend(Protocol):
    def __call__(self, batch: npt.NDArray[np.uint8], flip: bool) -> npt.NDArray[np.float32]: ...


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class _TorchBackend:
    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = device
        # The float input is written into one reused buffer: a fresh multi-MB tensor per batch
        # (allocation, page faults, cold cache) cost up to ~15% of a small backbone's forward.
        self._input: torch.Tensor | None = None

    def _normalised(self, batch: npt.NDArray[np.uint8], copies: int) -> torch.Tensor:
        """``normalize(batch)`` (``copies`` times stacked) in the reused buffer."""
        u8 = torch.from_numpy(batch).to(self.device, non_blocking=True)
        n, h, w, c = u8.shape
        shape = (copies * n, c, h, w)
        if self._input is None or self._input.shape[0] < shape[0] or \
                self._input.shape[1:] != shape[1:]:
            self._input = torch.empty(shape, dtype=torch.float32, device=self.device)
        x = self._input[: shape[0]]
        x[:n].copy_(u8.permute(0, 3, 1, 2))
        # The arithmetic of f2c.data.transforms.normalize, in place (x · 2/255 − 1).
        x[:n].mul_(2.0 / 255.0).sub_(1.0)
        return x

    @torch.inference_mode()
    def __call__(self, batch: npt.NDArray[np.uint8], flip: bool) -> npt.NDArray[np.float32]:
        n = batch.shape[0]
        x = self._normalised(batch, 2 if flip else 1)
        if flip:
            x[n:].copy_(x[:n].flip(3))
        out = self.module(x).float()
        if flip:
            out = out[:n] + out[n:]
        out = torch.nn.functional.normalize(out, dim=1)
        result: npt.NDArray[np.float32] = out.cpu().numpy()
        return result


class _OnnxBackend:
    def __init__(self, session: Any, fixed_batch: int | None) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.fixed_batch = fixed_batch

    def _run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        n = x.shape[0]
        if self.fixed_batch is None:
            out: npt.NDArray[np.float32] = self.session.run([self.output_name],
                                                            {self.input_name: x})[0]
            return out
        parts = []
        for s in range(0, n, self.fixed_batch):
            chunk = x[s : s + self.fixed_batch]
            if len(chunk) < self.fixed_batch:  # the graph has a fixed batch: pad the last one
                pad = np.zeros((self.fixed_batch - len(chunk), *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            parts.append(self.session.run([self.output_name], {self.input_name: chunk})[0])
        return np.concatenate(parts)[:n]

    def __call__(self, batch: npt.NDArray[np.uint8], flip: bool) -> npt.NDArray[np.float32]:
        x = batch.transpose(0, 3, 1, 2).astype(np.float32)
        x -= 127.5
        x /= 127.5
        n = x.shape[0]
        if flip:
            x = np.concatenate([x, x[..., ::-1]])
        out = self._run(np.ascontiguousarray(x)).astype(np.float32, copy=False)
        if flip:
            out = out[:n] + out[n:]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class FaceEmbedder:
    """Embeds aligned face crops with a trained backbone (PyTorch) or an ONNX graph."""

    def __init__(
        self,
        backend: _Backend,
        input_size: int,
        embedding_size: int,
        *,
        batch_size: int = 64,
        flip: bool = False,
        device: str = "cpu",
        spec: ModelSpec | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._backend = backend
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self.device = device
        self.spec = spec

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        spec: ModelSpec,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        flip: bool = False,
    ) -> FaceEmbedder:
        """Wrap a backbone built for ``spec`` (it is moved to ``device`` and put in eval mode)."""
        dev = torch.device(device or _default_device())
        return cls(_TorchBackend(module, dev), spec.size, spec.embedding_size,
                   batch_size=batch_size, flip=flip, device=str(dev), spec=spec)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        net: str = "probe",
        device: str | torch.device | None = None,
        batch_size: int = 64,
        flip: bool = False,
        backbone: str | None = None,
        embedding_size: int | None = None,
    ) -> FaceEmbedder:
        """From an f2c checkpoint file or run folder (``net``: "probe" or "gallery"), or a bare
        state dict when ``backbone`` and ``embedding_size`` are given."""
        loaded = load_backbone(path, net=net, backbone=backbone, embedding_size=embedding_size)
        assert loaded.spec is not None
        return cls.from_module(loaded.module, loaded.spec, device=device,
                               batch_size=batch_size, flip=flip)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | None = None,
        batch_size: int = 64,
        flip: bool = False,
        threads: int | None = None,
    ) -> FaceEmbedder:
        """From an ONNX file with one input ``[N, 3, S, S]`` (RGB, ``(x − 127.5) / 127.5``)
        and one output ``[N, D]`` (``f2c.export`` writes these, as insightface's zoo does)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("FaceEmbedder.from_onnx needs onnxruntime: pip install "
                              "'f2c[export]'") from exc
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path}")
        device = device or _default_device()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(f"device {device!r}: this onnxruntime has no CUDA provider "
                                   f"(install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=providers)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input and one output, got "
                             f"{len(inputs)} and {len(outputs)}")
        shape, out_shape = inputs[0].shape, outputs[0].shape
        if (len(shape) != 4 or shape[1] != 3 or not isinstance(shape[2], int)
                or shape[2] != shape[3] or len(out_shape) != 2
                or not isinstance(out_shape[1], int)):
            raise ValueError(f"{path}: expected input [N, 3, S, S] and output [N, D], got "
                             f"{shape} and {out_shape}")
        fixed = shape[0] if isinstance(shape[0], int) else None
        return cls(_OnnxBackend(session, fixed), shape[2], out_shape[1],
                   batch_size=batch_size, flip=flip, device=device)

    # ------------------------------------------------------------------ embedding

    def _as_batch(
        self, images: npt.ArrayLike | Sequence[npt.ArrayLike] | torch.Tensor
    ) -> npt.NDArray[np.uint8]:
        """``[N, S, S, 3]`` uint8 from an array, a tensor or a list of crops."""
        empty = np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        if not isinstance(images, np.ndarray):
            crops = [self._crop(np.asarray(im), i) for i, im in enumerate(images)]
            return np.stack(crops) if crops else empty
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8 RGB, got {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3] RGB, got shape {images.shape}")
        if images.shape[1:3] == (self.input_size, self.input_size):
            return images
        crops = [self._crop(im, i) for i, im in enumerate(images)]
        return np.stack(crops) if crops else empty

    def _crop(self, image: npt.NDArray[Any], index: int) -> npt.NDArray[np.uint8]:
        """One image as an S×S crop: square crops of another size are resized (bilinear)."""
        if image.dtype != np.uint8:
            raise TypeError(f"image {index}: images must be uint8 RGB, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index}: expected [H, W, 3] RGB, got shape {image.shape}")
        h, w = image.shape[:2]
        if (h, w) == (self.input_size, self.input_size):
            return image
        if h != w:
            raise ValueError(f"image {index}: {h}x{w} is not a square aligned crop; use "
                             f"embed_faces() with landmarks for unaligned images")
        resized = Image.fromarray(image).resize((self.input_size, self.input_size),
                                                Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)

    def embed(
        self,
        images: npt.ArrayLike | Sequence[npt.ArrayLike] | torch.Tensor,
        *,
        flip: bool | None = None,
    ) -> npt.NDArray[np.float32]:
        """L2-normalised float32 ``[N, D]`` for aligned uint8 RGB crops ``[N, H, W, 3]``.

        Square crops of another size than the backbone's are resized (bilinear);
        ``flip`` (default: the embedder's setting) sums the embeddings of each crop and its
        mirror image before normalising.
        """
        batch = self._as_batch(images)
        use_flip = self.flip if flip is None else flip
        n = len(batch)
        if n == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        parts = [
            self._backend(np.ascontiguousarray(batch[s : s + self.batch_size]), use_flip)
            for s in range(0, n, self.batch_size)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def align(
        self,
        images: Sequence[npt.ArrayLike | Image.Image],
        landmarks5: npt.ArrayLike,
    ) -> npt.NDArray[np.uint8]:
        """Crops ``[N, S, S, 3]``: each image warped so its 5 landmarks land on the ArcFace
        template scaled to S (``f2c.align.align_face``)."""
        points = np.asarray(landmarks5, dtype=np.float64)
        if points.ndim == 2:
            points = points[None]
        if points.ndim != 3 or points.shape[1:] != (5, 2):
            raise ValueError(f"landmarks5 must be [N, 5, 2] (x, y), got {points.shape}")
        if len(points) != len(images):
            raise ValueError(f"{len(images)} images but {len(points)} landmark sets")
        crops = [
            align_face(im if isinstance(im, Image.Image) else np.asarray(im, np.uint8), lm,
                       size=self.input_size)
            for im, lm in zip(images, points, strict=True)
        ]
        if not crops:
            return np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        return np.stack(crops)

    def embed_faces(
        self,
        images: Sequence[npt.ArrayLike | Image.Image],
        landmarks5: npt.ArrayLike,
        *,
        flip: bool | None = None,
    ) -> npt.NDArray[np.float32]:
        """Align each image by its 5 landmarks ([N, 5, 2]: eyes, nose, mouth corners), then
        ``embed``."""
        return self.embed(self.align(images, landmarks5), flip=flip)

    def __repr__(self) -> str:
        what = self.spec.backbone if self.spec is not None else "onnx"
        return (f"FaceEmbedder({what}, input {self.input_size}, dim {self.embedding_size}, "
                f"device {self.device}, batch {self.batch_size}, flip {self.flip})")
