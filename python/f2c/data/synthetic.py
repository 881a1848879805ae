"""Synthetic identities: procedurally rendered face-like images, hard enough to be a real test.

Every identity is a fixed random draw of geometry (face shape, eye spacing and size, brow,
nose, mouth), colours (skin, hair, irises, lips) and marks (moles, beard, glasses, hairline and
hair style). Every image of it adds nuisance: head pose (roll, yaw, pitch, scale, shift),
expression (eye opening, gaze, smile, open mouth, raised brows), lighting (direction,
strength, a brightness gradient, colour cast, gain, gamma), a cluttered random background,
occluders, blur, sensor noise and JPEG compression at a random quality. Identity cues live in
face coordinates, so they survive pose; raw pixels do not (the pairs score at most 75% with
pixel cosine similarity, see :func:`pixel_cosine_accuracy`).

Rendering is vectorised numpy over batches of images: each pixel gets a material (background,
hair, skin, iris, ...) by painting shapes in face coordinates, then materials are coloured and
lit. Everything is deterministic from the seed.

Layout of a dataset folder:

- ``train.lmdb``, ``train.kv``, ``labels.tsv`` — training identities (``f2c.data.db`` format),
- ``test/images/<identity>/<n>.jpg`` — held-out identities,
- ``test/pairs.txt`` — LFW-style ``path_a path_b 1|0`` (relative to ``test/``), 10 contiguous,
  identity-disjoint folds, half genuine,
- ``test/pairs.bin`` — the same pairs as an insightface-style pickle of
  ``(list of JPEG bytes, list of bool)``,
- ``synthetic.json`` — the parameters and counts; its presence marks the folder complete.

    python -m f2c.data.synthetic --out data/synth --identities 1500 --images-per-identity 25
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import multiprocessing
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from tqdm import tqdm

from f2c.data.db import DbLayout, TrainingDbWriter, staging_dir

__all__ = [
    "GENERATOR_VERSION",
    "SyntheticDataset",
    "make_synthetic_dataset",
    "main",
    "pixel_cosine_accuracy",
    "render_identity_images",
    "sample_identities",
    "sample_nuisance",
]

GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"
NUM_FOLDS = 10

Params = dict[str, npt.NDArray[np.float32]]

# Materials, painted in this order (later ones cover earlier ones).
(
    BG,
    BLOB1,
    BLOB2,
    NECK,
    HAIR,
    SKIN,
    BLUSH,
    MOLE,
    BEARD,
    NOSTRIL,
    LIP,
    MOUTH,
    SCLERA,
    IRIS,
    PUPIL,
    BROW,
    GLASSES,
    OCCLUDER,
) = range(18)
NUM_MATERIALS = 18

_HAIR_COLOURS = np.array(
    [
        [22, 18, 16], [55, 38, 26], [95, 62, 38], [140, 100, 60], [200, 165, 105],
        [230, 205, 150], [150, 60, 30], [120, 120, 120], [200, 200, 200], [70, 45, 60],
    ],
    dtype=np.float32,
)
_IRIS_COLOURS = np.array(
    [[70, 40, 20], [35, 25, 20], [60, 110, 170], [70, 130, 80], [120, 130, 140], [130, 95, 45]],
    dtype=np.float32,
)
_SKIN_LIGHT = np.array([240, 205, 180], dtype=np.float32)
_SKIN_DARK = np.array([85, 55, 38], dtype=np.float32)


# --------------------------------------------------------------------------- sampling


def sample_identities(rng: np.random.Generator, n: int) -> Params:
    """Identity parameters of ``n`` identities (arrays of length n; colours [n, 3])."""

    def u(lo: float, hi: float) -> npt.NDArray[np.float32]:
        return rng.uniform(lo, hi, n).astype(np.float32)

    tone = rng.uniform(0, 1, n)[:, None]
    skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK
    skin *= rng.normal(1, 0.07, (n, 3))
    hair = _HAIR_COLOURS[rng.integers(0, len(_HAIR_COLOURS), n)] * rng.normal(1, 0.1, (n, 3))
    iris = _IRIS_COLOURS[rng.integers(0, len(_IRIS_COLOURS), n)] * rng.normal(1, 0.12, (n, 3))
    lip = skin * np.array([0.78, 0.48, 0.5]) * rng.normal(1, 0.08, (n, 3))
    bald = rng.uniform(0, 1, n) < 0.1
    has_beard = rng.uniform(0, 1, n) < 0.25
    has_glasses = rng.uniform(0, 1, n) < 0.2
    glasses = np.where(
        rng.uniform(0, 1, n)[:, None] < 0.5,
        rng.uniform(10, 60, (n, 3)),  # dark frames
        rng.uniform(90, 200, (n, 3)),  # metal / coloured frames
    )
    return {
        "skin": np.clip(skin, 20, 255).astype(np.float32),
        "hair": np.clip(hair, 5, 250).astype(np.float32),
        "iris": np.clip(iris, 5, 250).astype(np.float32),
        "lip": np.clip(lip, 10, 250).astype(np.float32),
        "glasses_colour": glasses.astype(np.float32),
        "face_rx": u(0.60, 0.80),
        "face_ry": u(0.86, 1.04),
        "jaw": u(0.78, 1.02),
        "chin_pow": u(1.5, 2.6),
        "hairline": np.where(bald, -1.5, rng.uniform(-0.85, -0.48, n)).astype(np.float32),
        "fringe": u(0.0, 0.3),
        "part": u(-0.6, 0.6),
        "hair_volume": np.where(bald, 0.0, rng.uniform(0.03, 0.25, n)).astype(np.float32),
        "hair_length": np.where(bald, -2.0, rng.uniform(-0.35, 0.95, n)).astype(np.float32),
        "eye_dx": u(0.22, 0.34),
        "eye_v": u(-0.22, -0.06),
        "eye_rx": u(0.07, 0.11),
        "eye_ratio": u(0.38, 0.62),
        "iris_ratio": u(0.75, 1.0),
        "brow_gap": u(0.05, 0.14),
        "brow_thick": u(0.014, 0.045),
        "brow_len": u(0.08, 0.15),
        "brow_tilt": u(-0.4, 0.4),
        "brow_dark": u(0.55, 1.0),
        "nose_len": u(0.2, 0.36),
        "nose_w": u(0.045, 0.1),
        "mouth_v": u(0.34, 0.52),
        "mouth_w": u(0.1, 0.21),
        "lip_t": u(0.018, 0.045),
        "beard": np.where(has_beard, rng.uniform(0.45, 0.95, n), 0.0).astype(np.float32),
        "beard_top": u(0.22, 0.4),
        "glasses": has_glasses.astype(np.float32),
        "blush": u(0.0, 0.35),
        "mole_u": rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32),
        "mole_v": rng.uniform(-0.3, 0.7, (n, 2)).astype(np.float32),
        "mole_r": np.where(
            rng.uniform(0, 1, (n, 2)) < 0.6, rng.uniform(0.018, 0.045, (n, 2)), 0.0
        ).astype(np.float32),
    }


def sample_nuisance(rng: np.random.Generator, n: int) -> Params:
    """Per-image nuisance of ``n`` images: pose, expression, lighting, background, degradations."""

    def u(lo: float, hi: float, *shape: int) -> npt.NDArray[np.float32]:
        return rng.uniform(lo, hi, (n, *shape)).astype(np.float32)

    az = rng.uniform(0, 2 * np.pi, n)
    el = rng.uniform(0.15, 1.2, n)  # 0: grazing light, pi/2: frontal
    light = np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], 1)
    occluded = rng.uniform(0, 1, n) < 0.08
    return {
        "roll": np.clip(rng.normal(0, 0.1, n), -0.3, 0.3).astype(np.float32),
        "yaw": u(-0.4, 0.4),
        "pitch": u(-0.22, 0.22),
        "scale": np.clip(np.exp(rng.normal(0, 0.09, n)), 0.82, 1.22).astype(np.float32),
        "tx": np.clip(rng.normal(0, 0.04, n), -0.1, 0.1).astype(np.float32),
        "ty": np.clip(rng.normal(0, 0.04, n), -0.1, 0.1).astype(np.float32),
        "eye_open": np.clip(rng.uniform(0.15, 1.25, n), 0.15, 1.0).astype(np.float32),
        "gaze": u(-0.35, 0.35),
        "smile": u(-0.5, 1.0),
        "mouth_open": np.clip(rng.uniform(-0.04, 0.05, n), 0, None).astype(np.float32),
        "brow_raise": u(-0.02, 0.045),
        "hair_jitter": u(0.85, 1.15),
        "light": light.astype(np.float32),
        "diffuse": u(0.15, 0.75),
        "gradient": rng.normal(0, 0.35, (n, 2)).astype(np.float32),
        "gain": u(0.55, 1.3),
        "gamma": u(0.85, 1.18),
        "cast": np.exp(rng.normal(0, 0.06, (n, 3))).astype(np.float32),
        "bg": u(0, 255, 3),
        "blob_colour": u(0, 255, 2, 3),
        "blob_u": u(-1.6, 1.6, 2),
        "blob_v": u(-1.6, 1.6, 2),
        "blob_r": u(0.2, 0.9, 2),
        "occluded": occluded.astype(np.float32),
        "occ_colour": u(0, 255, 3),
        "occ_u": u(-1.0, 1.0),
        "occ_v": u(-0.6, 1.2),
        "occ_w": u(0.15, 0.5),
        "occ_h": u(0.15, 0.5),
        "noise": u(0.0, 9.0),
        "blur": u(0.35, 1.4),
        "quality": rng.integers(35, 96, n).astype(np.float32),
    }


# --------------------------------------------------------------------------- rendering


def _col(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A per-image value [B] as [B, 1, 1] for broadcasting over pixels."""
    return x.reshape(-1, 1, 1)


_F = np.float32  # scalars as float32 keep every pixel array in float32


def _inside(du: np.ndarray, dv: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """(du/rx)² + (dv/ry)² < 1."""
    a = du / rx
    a *= a
    b = dv / ry
    b *= b
    a += b
    return a < 1


def _render_materials(ident: Params, nuis: Params, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel material ids [B, S, S] (uint8) and lighting factors [B, S, S] (float32).

    Only cheap element-wise ops (no pow/exp/where on pixel arrays): this is the hot loop.
    """
    batch = len(nuis["roll"])
    grid = ((np.arange(size, dtype=_F) + _F(0.5)) / _F(size) - _F(0.5)).astype(_F)
    px, py = grid[None, None, :], grid[None, :, None]

    # Image → head coordinates: undo shift, roll and scale. 1 unit = 0.55 frame at scale 1.
    inv_scale = _col(_F(1 / 0.55) / nuis["scale"])
    cos_r = _col(np.cos(nuis["roll"]) * inv_scale[:, 0, 0])
    sin_r = _col(np.sin(nuis["roll"]) * inv_scale[:, 0, 0])
    x = px - _col(nuis["tx"])
    y = py - _col(nuis["ty"])
    head_u = cos_r * x + sin_r * y
    head_v = cos_r * y - sin_r * x
    head_v -= _F(0.08)
    mat = np.zeros((batch, size, size), np.uint8)

    def paint(material: int, mask: np.ndarray) -> None:
        # Materials are numbered in painting order, so "paint over" is a maximum.
        np.maximum(mat, mask.view(np.uint8) * np.uint8(material), out=mat)

    # Background clutter.
    for k, material in ((0, BLOB1), (1, BLOB2)):
        r = _col(nuis["blob_r"][:, k])
        paint(material, _inside(head_u - _col(nuis["blob_u"][:, k]),
                                head_v - _col(nuis["blob_v"][:, k]), r, r * _F(0.7)))

    # Neck and head: an ellipse whose half-width narrows below the centre line (jaw, chin).
    face_rx, face_ry = _col(ident["face_rx"]), _col(ident["face_ry"])
    abs_u = np.abs(head_u)
    paint(NECK, (abs_u < face_rx * _F(0.55)) & (head_v > _F(0.3)))
    down = np.clip(head_v / face_ry, 0, 1)
    narrowing = _col(_F(1) - ident["jaw"]) + _col(ident["chin_pow"] - _F(1.5)) * _F(0.3) * down
    width = face_rx * (_F(1) - narrowing * down)
    head = _inside(head_u, head_v, width, face_ry)

    # Hair: an enlarged head outline (volume), extended down the sides for long hair.
    volume = _col(ident["hair_volume"] * nuis["hair_jitter"])
    outer = _inside(head_u, head_v + volume * _F(0.5), face_rx + volume, face_ry + volume)
    outer |= (abs_u < face_rx + volume) & (head_v < _col(ident["hair_length"]))
    outer &= volume > _F(0.005)
    paint(HAIR, outer)

    # Face-plane coordinates: inner features sit in front of the head centre, so yaw and pitch
    # shift them sideways/up and foreshorten them.
    sin_y, cos_y = _col(np.sin(nuis["yaw"])), _col(np.cos(nuis["yaw"]))
    sin_p, cos_p = _col(np.sin(nuis["pitch"])), _col(np.cos(nuis["pitch"]))
    fu = (head_u - _F(0.55) * sin_y) / cos_y
    fv = (head_v - _F(0.55) * sin_p) / cos_p
    au = np.abs(fu)

    # Skin below the hairline, which rises at the temples and dips in a fringe by the parting.
    d = fu - _col(ident["part"])
    d *= d
    d *= _F(10)
    d += _F(1)
    hairline = _col(ident["fringe"]) / d
    rel = fu / face_rx
    rel *= rel
    hairline += _F(0.35) * rel + _col(ident["hairline"])
    paint(SKIN, head & (fv > hairline))

    # Cheeks, moles, beard.
    blush = _inside(au - _F(0.36), fv - _F(0.18), _F(0.14), _F(0.1))
    paint(BLUSH, blush & head & _col(ident["blush"] > 0.12))
    for k in range(2):
        r = _col(ident["mole_r"][:, k] + _F(1e-6))
        mole = _inside(fu - _col(ident["mole_u"][:, k]), fv - _col(ident["mole_v"][:, k]), r, r)
        paint(MOLE, mole & head & _col(ident["mole_r"][:, k] > 0))
    mouth_v, mouth_w = _col(ident["mouth_v"]), _col(ident["mouth_w"])
    beard = (fv > _col(ident["beard_top"]) + _F(0.12)) | (
        (fv > mouth_v - _F(0.1)) & (au < mouth_w * _F(1.2))
    )
    paint(BEARD, beard & head & _col(ident["beard"] > 0))

    # Nose: nostrils either side of the tip, shifted further by yaw (the tip is in front).
    eye_v = _col(ident["eye_v"])
    nose_w = _col(ident["nose_w"])
    nose_u = np.abs(fu - _F(0.3) * sin_y / cos_y) - nose_w * _F(0.6)
    nostril = _inside(nose_u, fv - eye_v - _col(ident["nose_len"]), nose_w * _F(0.45), _F(0.022))
    paint(NOSTRIL, nostril & head)

    # Mouth: lips curved by the smile, dark inside when open.
    curve = fu / mouth_w
    curve *= curve
    curve *= _col(nuis["smile"] * _F(0.06))
    smile_v = fv - mouth_v + curve
    mouth_open = _col(nuis["mouth_open"])
    paint(LIP, _inside(fu, smile_v, mouth_w, _col(ident["lip_t"]) + mouth_open) & head)
    paint(MOUTH, _inside(fu, smile_v, mouth_w * _F(0.8), mouth_open + _F(1e-4)) & head)

    # Eyes (folded left/right): sclera, iris and pupil; the lids close with eye_open. The
    # irises both move with the gaze, so they are folded around the gaze offset.
    eye_dx, eye_rx = _col(ident["eye_dx"]), _col(ident["eye_rx"])
    eye_u = au - eye_dx
    eye_dv = fv - eye_v
    eye_ry = eye_rx * _col(ident["eye_ratio"])
    sclera = _inside(eye_u, eye_dv, eye_rx, eye_ry * _col(nuis["eye_open"]))
    iris_r = eye_ry * _col(ident["iris_ratio"])
    iris_u = np.abs(fu - _col(nuis["gaze"]) * eye_rx * _F(0.45)) - eye_dx
    paint(SCLERA, sclera)
    paint(IRIS, sclera & _inside(iris_u, eye_dv, iris_r, iris_r))
    pupil_r = iris_r * _F(0.42)
    paint(PUPIL, sclera & _inside(iris_u, eye_dv, pupil_r, pupil_r))

    # Brows, tilted (mirrored by the fold), raised by expression.
    brow_v = eye_v - eye_ry - _col(ident["brow_gap"]) - _col(nuis["brow_raise"])
    brow_dv = fv - brow_v + _col(ident["brow_tilt"]) * eye_u
    paint(BROW, _inside(eye_u, brow_dv, _col(ident["brow_len"]), _col(ident["brow_thick"])))

    # Glasses: a ring around each eye.
    ring_rx, ring_ry = eye_rx * _F(1.75), eye_rx * _F(1.3)
    ring = _inside(eye_u, eye_dv, ring_rx, ring_ry)
    ring &= ~_inside(eye_u, eye_dv, ring_rx - _F(0.025), ring_ry - _F(0.025))
    paint(GLASSES, ring & _col(ident["glasses"] > 0))

    # Occluder (a hand, a microphone): an axis-aligned box in head coordinates.
    occ = np.abs(head_u - _col(nuis["occ_u"])) < _col(nuis["occ_w"])
    occ &= np.abs(head_v - _col(nuis["occ_v"])) < _col(nuis["occ_h"])
    paint(OCCLUDER, occ & _col(nuis["occluded"] > 0))

    # Lighting: Lambert on the head ellipsoid (normals from head coordinates) on the person,
    # 1 elsewhere, times a brightness gradient across the frame.
    nx = np.clip(head_u / face_rx, -1, 1)
    ny = np.clip(head_v / face_ry, -1, 1)
    nz = _F(1) - nx * nx
    nz -= ny * ny
    np.clip(nz, 0.02, 1, out=nz)
    np.sqrt(nz, out=nz)
    light = nuis["light"]
    diffuse = _col(nuis["diffuse"])
    dot = nx * _col(light[:, 0])
    dot += ny * _col(light[:, 1])
    dot += nz * _col(light[:, 2])
    np.clip(dot, 0, None, out=dot)
    dot -= _F(0.5)
    dot *= diffuse  # lit - 1 = diffuse * (max(n.l, 0) - 0.5)
    on_person = (mat >= NECK) & (mat != OCCLUDER)
    shade = dot * on_person
    shade += _F(1)
    grad = nuis["gradient"]
    shade *= _F(1) + _col(grad[:, 0]) * px + _col(grad[:, 1]) * py
    return mat, shade


def _palette(ident: Params, nuis: Params) -> np.ndarray:
    """Material colours [B, NUM_MATERIALS, 3], with the image's gain, cast and gamma applied."""
    batch = len(nuis["roll"])
    pal = np.zeros((batch, NUM_MATERIALS, 3), np.float32)
    skin, hair = ident["skin"], ident["hair"]
    pal[:, BG] = nuis["bg"]
    pal[:, BLOB1] = nuis["blob_colour"][:, 0]
    pal[:, BLOB2] = nuis["blob_colour"][:, 1]
    pal[:, NECK] = skin * 0.8
    pal[:, HAIR] = hair
    pal[:, SKIN] = skin
    blush = ident["blush"][:, None]
    pal[:, BLUSH] = skin * (1 - blush) + np.array([215, 95, 95], np.float32) * blush
    pal[:, MOLE] = skin * 0.45
    beard = ident["beard"][:, None]
    pal[:, BEARD] = skin * (1 - beard) + hair * beard
    pal[:, NOSTRIL] = skin * 0.5
    pal[:, LIP] = ident["lip"]
    pal[:, MOUTH] = np.array([45, 20, 25], np.float32)
    pal[:, SCLERA] = np.array([235, 232, 225], np.float32)
    pal[:, IRIS] = ident["iris"]
    pal[:, PUPIL] = np.array([12, 10, 10], np.float32)
    pal[:, BROW] = hair * ident["brow_dark"][:, None]
    pal[:, GLASSES] = ident["glasses_colour"]
    pal[:, OCCLUDER] = nuis["occ_colour"]
    pal = np.clip(pal * nuis["cast"][:, None, :], 0, 255) / 255
    pal **= nuis["gamma"][:, None, None]
    pal *= 255 * nuis["gain"][:, None, None]
    return pal.astype(np.float32)


def _blur(img: np.ndarray, sigma: npt.NDArray[np.float32]) -> np.ndarray:
    """Separable 5-tap Gaussian blur of [B, S, S, C] with a per-image sigma (edges clamped)."""
    taps = np.arange(-2, 3, dtype=np.float32)
    w = np.exp(-(taps[None, :] ** 2) / (2 * np.maximum(sigma, 0.05)[:, None] ** 2))
    w = (w / w.sum(1, keepdims=True)).astype(np.float32)
    size = img.shape[1]
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        src = np.pad(img, pad, mode="edge")
        out = np.zeros_like(img)
        for k in range(5):
            window = src[:, k : k + size] if axis == 1 else src[:, :, k : k + size]
            out += window * w[:, k, None, None, None]
        img = out
    return img


def render_identity_images(
    ident: Params, nuis: Params, size: int = 112, *, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """Renders images [B, size, size, 3] uint8 (RGB) before JPEG compression.

    ``ident`` holds per-image identity parameters (rows repeated per image) and ``nuis`` the
    per-image nuisance; ``rng`` draws the sensor noise.
    """
    mat, shade = _render_materials(ident, nuis, size)
    pal = _palette(ident, nuis)
    batch = mat.shape[0]
    flat = (np.arange(batch, dtype=np.intp)[:, None, None] * NUM_MATERIALS + mat).reshape(-1)
    img = np.empty((batch, size, size, 3), np.float32)
    for c in range(3):
        img[..., c] = np.take(pal[:, :, c].reshape(-1), flat).reshape(batch, size, size)
    img *= shade[..., None]
    img = _blur(img, nuis["blur"] * np.float32(size / 112))
    # Luminance noise: uniform bytes rescaled to the image's standard deviation.
    noise = np.frombuffer(rng.bytes(batch * size * size), np.uint8).reshape(batch, size, size)
    noise = noise.astype(np.float32) - np.float32(127.5)
    noise *= _col(nuis["noise"] / np.float32(73.9))
    img += noise[..., None]
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _encode(image: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=int(quality))
    return out.getvalue()


def _take(params: Params, index: npt.NDArray[np.int64]) -> Params:
    return {k: v[index] for k, v in params.items()}


def _render_jpegs(
    ident: Params, owners: npt.NDArray[np.int64], nuis: Params, size: int,
    rng: np.random.Generator, chunk: int = 16,
) -> list[bytes]:
    """JPEG bytes of images whose identity rows are ``owners`` (into ``ident``)."""
    out: list[bytes] = []
    for start in range(0, len(owners), chunk):
        sl = slice(start, start + chunk)
        n = _take(nuis, np.arange(len(owners))[sl])
        images = render_identity_images(_take(ident, owners[sl]), n, size, rng=rng)
        out.extend(_encode(image, int(q)) for image, q in zip(images, n["quality"], strict=True))
    return out


@dataclass(frozen=True)
class _Job:
    """A group of identities to render: their parameters and global indices (the seeds)."""

    ident: Params
    ids: npt.NDArray[np.int64]
    per_id: int
    stream: int  # which split's nuisance streams
    seed: int
    size: int


def _run_job(job: _Job) -> list[bytes]:
    # Every identity's nuisance and every job's noise come from their own generators, so the
    # output does not depend on how jobs are spread over processes.
    nuis = _concat([
        sample_nuisance(np.random.default_rng([job.seed, job.stream, int(i)]), job.per_id)
        for i in job.ids
    ])
    owners = np.repeat(np.arange(len(job.ids)), job.per_id)
    noise = np.random.default_rng([job.seed, job.stream + 100, int(job.ids[0])])
    return _render_jpegs(job.ident, owners, nuis, job.size, noise)


def _keep_freed_memory() -> None:
    """Worker initialiser: stop glibc from returning freed arrays to the kernel.

    Rendering churns through many short-lived multi-megabyte arrays; with glibc's defaults
    each one is fresh memory and costs a page fault per 4 KiB, more than the arithmetic.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _jobs(
    ident: Params, per_id: int, stream: int, seed: int, size: int
) -> list[_Job]:
    n = len(ident["skin"])
    group = max(1, 96 // per_id)
    return [
        _Job(_take(ident, np.arange(a, min(a + group, n))), np.arange(a, min(a + group, n)),
             per_id, stream, seed, size)
        for a in range(0, n, group)
    ]


def _render_all(jobs: list[_Job], workers: int) -> Iterator[list[bytes]]:
    if workers <= 1:
        yield from map(_run_job, jobs)
        return
    ctx = multiprocessing.get_context("spawn")  # no threads or handles inherited
    with ctx.Pool(workers, initializer=_keep_freed_memory) as pool:
        yield from pool.imap(_run_job, jobs)


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class SyntheticDataset:
    root: Path
    lmdb_path: Path
    kv_path: Path
    labels_path: Path
    pairs_path: Path
    images_dir: Path
    bin_path: Path
    num_classes: int
    num_images: int
    num_pairs: int


def _dataset(root: Path, manifest: dict[str, int]) -> SyntheticDataset:
    layout = DbLayout(root)
    return SyntheticDataset(
        root=root,
        lmdb_path=layout.lmdb_path,
        kv_path=layout.kv_path,
        labels_path=layout.labels_path,
        pairs_path=root / "test" / "pairs.txt",
        images_dir=root / "test" / "images",
        bin_path=root / "test" / "pairs.bin",
        num_classes=int(manifest["num_identities"]),
        num_images=int(manifest["num_train_images"]),
        num_pairs=int(manifest["num_pairs"]),
    )


def _test_images_per_identity(ids_per_fold: int, genuine_per_fold: int) -> int:
    """Images per held-out identity so a fold offers ≥ 1.5× the distinct genuine pairs needed."""
    k = 2
    while ids_per_fold * k * (k - 1) // 2 < 1.5 * genuine_per_fold and k < 64:
        k += 1
    return k


def _make_pairs(
    rng: np.random.Generator, folds: list[np.ndarray], per_identity: int, pairs_per_fold: int
) -> list[tuple[int, int, int, int, bool]]:
    """(id_a, img_a, id_b, img_b, same) per pair; fold f uses only the identities folds[f]."""
    pairs: list[tuple[int, int, int, int, bool]] = []
    genuine_n = pairs_per_fold // 2
    impostor_n = pairs_per_fold - genuine_n
    tri_a, tri_b = np.triu_indices(per_identity, 1)
    for ids in folds:
        candidates = [(i, a, b) for i in ids for a, b in zip(tri_a, tri_b, strict=True)]
        if len(candidates) < genuine_n:
            raise ValueError("too few held-out images for the genuine pairs of a fold")
        for c in rng.choice(len(candidates), genuine_n, replace=False):
            i, a, b = candidates[c]
            pairs.append((int(i), int(a), int(i), int(b), True))
        seen: set[tuple[int, int, int, int]] = set()
        while len(seen) < impostor_n:
            i, j = rng.choice(ids, 2, replace=False)
            a, b = rng.integers(0, per_identity, 2)
            key = (int(min(i, j)), int(a if i < j else b), int(max(i, j)), int(b if i < j else a))
            if key not in seen:
                seen.add(key)
                pairs.append((*key, False))
    return pairs


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    *,
    num_identities: int = 1000,
    images_per_identity: int = 20,
    num_test_identities: int = 300,
    pairs_per_fold: int = 60,
    image_size: int = 112,
    seed: int = 0,
    progress: bool = False,
    workers: int | None = None,
) -> SyntheticDataset:
    """Builds (or re-uses, when complete with the same parameters) a synthetic dataset folder.

    Training identities get labels 0..num_identities-1 in the LMDB + kv format; held-out
    identities (disjoint) give ``NUM_FOLDS`` folds of ``pairs_per_fold`` pairs, half genuine.
    ``workers`` rendering processes (default: up to 4 for sets over 4,000 images, else none);
    the output does not depend on it.
    """
    params = {
        "version": GENERATOR_VERSION,
        "num_identities": int(num_identities),
        "images_per_identity": int(images_per_identity),
        "num_test_identities": int(num_test_identities),
        "pairs_per_fold": int(pairs_per_fold),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    if num_identities < 1 or images_per_identity < 1:
        raise ValueError("need at least one training identity and one image per identity")
    if pairs_per_fold < 2 or pairs_per_fold % 2:
        raise ValueError(f"pairs_per_fold must be even and at least 2, got {pairs_per_fold}")
    if num_test_identities < 2 * NUM_FOLDS:
        raise ValueError(
            f"need at least {2 * NUM_FOLDS} held-out identities (2 per fold), "
            f"got {num_test_identities}"
        )
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    root = Path(out_dir)
    manifest_path = root / MANIFEST_NAME
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        existing = {k: manifest.get(k) for k in params}
        if existing != params:
            raise ValueError(
                f"{root} holds a synthetic dataset with other parameters ({existing}); "
                "use another folder or delete it"
            )
        return _dataset(root, manifest)
    if root.exists():
        raise FileExistsError(f"{root} exists but is not a complete synthetic dataset")

    if workers is None:
        total = num_identities * images_per_identity
        workers = min(os.cpu_count() or 1, 4) if total > 4000 else 0
    with staging_dir(root) as tmp:
        manifest = _build(tmp, params, progress, workers)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return _dataset(root, manifest)


def _build(tmp: Path, params: dict[str, int], progress: bool, workers: int) -> dict[str, int]:
    seed, size = params["seed"], params["image_size"]
    n_train, per_id = params["num_identities"], params["images_per_identity"]
    n_test, pairs_per_fold = params["num_test_identities"], params["pairs_per_fold"]
    ids_per_fold = n_test // NUM_FOLDS
    per_test = _test_images_per_identity(ids_per_fold, pairs_per_fold // 2)

    train_ident = sample_identities(np.random.default_rng([seed, 1]), n_train)
    test_ident = sample_identities(np.random.default_rng([seed, 3]), n_test)
    train_jobs = _jobs(train_ident, per_id, 2, seed, size)
    test_jobs = _jobs(test_ident, per_test, 4, seed, size)
    names = [f"id{i:06d}" for i in range(n_train)]
    test_jpegs: list[bytes] = []
    bar = tqdm(
        total=n_train * per_id + n_test * per_test, unit="img", disable=not progress,
        desc="synthetic identities",
    )
    with bar, TrainingDbWriter(tmp, names) as writer:
        results = _render_all(train_jobs + test_jobs, workers)
        for job, jpegs in zip(train_jobs + test_jobs, results, strict=True):
            if job.stream == 2:
                for k, jpeg in enumerate(jpegs):
                    label = int(job.ids[k // per_id])
                    writer.add(f"{names[label]}/{k % per_id:04d}", label, jpeg)
            else:
                test_jpegs += jpegs
            bar.update(len(jpegs))

    # Held-out identities: images as files, identity-disjoint folds of pairs.
    test_dir = tmp / "test"
    rel = [f"images/t{i:05d}/{k:02d}.jpg" for i in range(n_test) for k in range(per_test)]
    for path, jpeg in zip(rel, test_jpegs, strict=True):
        target = test_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(jpeg)
    pair_rng = np.random.default_rng([seed, 5])
    folds = np.array_split(pair_rng.permutation(n_test), NUM_FOLDS)
    pairs = _make_pairs(pair_rng, folds, per_test, pairs_per_fold)
    with open(test_dir / "pairs.txt", "w", encoding="utf-8", newline="\n") as f:
        for ia, a, ib, b, same in pairs:
            f.write(f"{rel[ia * per_test + a]} {rel[ib * per_test + b]} {int(same)}\n")
    bins: list[bytes] = []
    issame: list[bool] = []
    for ia, a, ib, b, same in pairs:
        # A fresh bytes object per entry: pickle stores a repeated object as a shared reference,
        # which f2c's .bin reader refuses (it bounds the decoded size by the file size).
        bins += [bytes(memoryview(test_jpegs[ia * per_test + a])),
                 bytes(memoryview(test_jpegs[ib * per_test + b]))]
        issame.append(bool(same))
    # Plain bytes and bools only: loadable by a restricted unpickler.
    (test_dir / "pairs.bin").write_bytes(pickle.dumps((bins, issame), protocol=4))
    return {
        **params,
        "num_train_images": n_train * per_id,
        "num_test_images": n_test * per_test,
        "test_images_per_identity": per_test,
        "num_pairs": len(pairs),
    }


def _concat(parts: Sequence[Params]) -> Params:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- pixel baseline


def pixel_cosine_accuracy(pairs_path: str | os.PathLike[str]) -> float:
    """10-fold verification accuracy of cosine similarity between raw RGB pixel vectors.

    A floor for the learned features: the pairs are read and scored by ``f2c.evaluation`` (a
    pairs file or a ``.bin`` pack; the exact k-fold threshold of ``evaluation.metrics``), only
    the features are the pixels themselves.
    """
    from f2c.evaluation.metrics import kfold_accuracy
    from f2c.evaluation.pairs import cosine_pair_scores, load_pair_set

    pairs = load_pair_set(pairs_path)
    vectors = [pairs.images.load(i).reshape(-1) for i in range(len(pairs.images))]
    if len({v.size for v in vectors}) != 1:
        raise ValueError(f"{pairs_path}: images of different sizes")
    scores = cosine_pair_scores(np.stack(vectors).astype(np.float32), pairs.left, pairs.right)
    accuracy, _ = kfold_accuracy(scores, pairs.same, NUM_FOLDS)
    return accuracy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m f2c.data.synthetic",
        description="Render a synthetic face-identity dataset: a training db (LMDB + kv) and "
        "held-out verification pairs (pairs.txt over image files, and pairs.bin).",
    )
    parser.add_argument("--out", required=True, help="dataset folder (created; re-used if same)")
    parser.add_argument("--identities", type=int, default=1000, help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=20)
    parser.add_argument("--test-identities", type=int, default=300, help="held-out identities")
    parser.add_argument(
        "--pairs-per-fold", type=int, default=60, help="pairs per fold (10 folds; 600 = LFW)"
    )
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="rendering processes (default: auto)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        data = make_synthetic_dataset(
            args.out,
            num_identities=args.identities,
            images_per_identity=args.images_per_identity,
            num_test_identities=args.test_identities,
            pairs_per_fold=args.pairs_per_fold,
            image_size=args.size,
            seed=args.seed,
            progress=not args.no_progress,
            workers=args.workers,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    acc = pixel_cosine_accuracy(data.pairs_path)
    print(
        f"{data.root}: {data.num_images} training images of {data.num_classes} identities; "
        f"{data.num_pairs} pairs in {data.pairs_path}; raw-pixel cosine accuracy {acc:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
