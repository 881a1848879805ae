"""Five-point face alignment onto the ArcFace template.

The five landmarks are, in order: left eye, right eye, nose tip, left mouth corner, right mouth
corner (image coordinates, x right, y down; pixel ``(i, j)`` has its centre at ``x=j, y=i``).
A similarity transform (rotation, uniform scale, translation) fitted by least squares
(Umeyama's closed form) maps them onto the template; the crop is the image warped by it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = ["ARCFACE_TEMPLATE_112", "align_face", "estimate_similarity", "template"]

# Landmark positions of the insightface ArcFace 112×112 crop (a published fact, in pixels).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int = 112) -> npt.NDArray[np.float64]:
    """The template for a ``size``×``size`` crop (112 as published; other sizes scaled)."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: npt.ArrayLike, dst: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The 2×3 similarity matrix ``M`` minimising Σ‖M·[src;1] − dst‖² (Umeyama, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching [n >= 2, 2] point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("landmarks are all at one point")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # the best orthogonal map would be a reflection: take the nearest rotation
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(
    image: Image.Image | npt.NDArray[np.uint8],
    landmarks: npt.ArrayLike,
    size: int = 112,
) -> npt.NDArray[np.uint8]:
    """The ``size``×``size`` RGB crop that puts ``landmarks`` ([5, 2]) on the template."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if points.shape != (5, 2):
        raise ValueError(f"need 5 landmarks (x, y), got {points.shape[0]}")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    forward = estimate_similarity(points, template(size))
    # PIL wants the inverse map (output pixel -> input position) and samples at pixel centres
    # (x + 0.5), while landmarks use the centre-at-integer convention: shift by half a pixel.
    a = forward[:, :2]
    inv_a = np.linalg.inv(a)
    inv_t = -inv_a @ forward[:, 2]
    pil_t = inv_t + 0.5 - inv_a @ np.array([0.5, 0.5])
    coeffs = (inv_a[0, 0], inv_a[0, 1], pil_t[0], inv_a[1, 0], inv_a[1, 1], pil_t[1])
    warped = image.transform(
        (size, size), Image.Transform.AFFINE, data=coeffs, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)
