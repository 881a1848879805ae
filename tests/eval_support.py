"""Small generated image sets and a tiny embedding network for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from f2c import models


class PixelNet(torch.nn.Module):
    """[N, 3, H, W] → [N, dim]: 4×4 average pooling and a fixed random projection."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(48, dim)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(dim, 48, generator=g))
            self.fc.bias.copy_(torch.randn(dim, generator=g) * 0.1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.pool(x).flatten(1))


def register_pixelnet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``pixelnet`` (native 16 px) a registered backbone for the duration of a test."""
    spec = models.BackboneSpec(
        "pixelnet", lambda embedding_size, input_size: PixelNet(embedding_size), 16,
        size_multiple=4, size_dependent_weights=False,
    )
    monkeypatch.setitem(models.spec._REGISTRY, "pixelnet", spec)


def face_images(
    rng: np.random.Generator, identities: int, per_identity: int, size: int = 16,
    noise: float = 40.0,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [identities·per_identity, size, size, 3] and the identity of each image."""
    base = rng.integers(0, 256, (identities, 4, 4, 3)).astype(np.float64)
    base = base.repeat(size // 4, axis=1).repeat(size // 4, axis=2)
    labels = np.repeat(np.arange(identities), per_identity)
    imgs = base[labels] + rng.normal(0, noise, (len(labels), size, size, 3))
    return np.clip(imgs, 0, 255).astype(np.uint8), labels


def save_png(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")


def write_pair_set(
    root: Path, *, identities: int = 12, per_identity: int = 3, pairs: int = 60, seed: int = 0,
    size: int = 16,
) -> tuple[Path, list[tuple[str, str, int]]]:
    """Images under ``root/images`` and ``root/pairs.txt`` (half same, half different)."""
    rng = np.random.default_rng(seed)
    imgs, labels = face_images(rng, identities, per_identity, size)
    names = [f"images/id{labels[i]:03d}/{i:04d}.png" for i in range(len(imgs))]
    for img, name in zip(imgs, names, strict=True):
        save_png(img, root / name)
    rows = []
    for k in range(pairs):
        same = k % 2 == 0
        ident = rng.integers(identities)
        members = np.flatnonzero(labels == ident)
        if same:
            a, b = rng.choice(members, 2, replace=False)
        else:
            other = (ident + 1 + rng.integers(identities - 1)) % identities
            a, b = rng.choice(members), rng.choice(np.flatnonzero(labels == other))
        rows.append((names[a], names[b], int(same)))
    pairs_path = root / "pairs.txt"
    pairs_path.write_text("".join(f"{a} {b} {s}\n" for a, b, s in rows))
    return pairs_path, rows


def save_checkpoint(path: Path) -> None:
    """A training-style checkpoint of two PixelNets (probe with a DDP prefix, gallery)."""
    probe, gallery = PixelNet(16, seed=0), PixelNet(16, seed=1)
    torch.save(
        {
            "config": {"model": {"backbone": "pixelnet", "embedding_size": 16}},
            "model": {"backbone": "pixelnet", "embedding_size": 16, "image_size": [16, 16]},
            "probe": {f"module.{k}": v for k, v in probe.state_dict().items()},  # DDP prefix
            "gallery": gallery.state_dict(),
        },
        path,
    )


def write_ijb_verification(root: Path, prefix: str = "ijbc", seed: int = 4) -> None:
    """An IJB 1:1 set: 6 subjects x 6 images, two templates per subject, every template pair."""
    rng = np.random.default_rng(seed)
    imgs, labels = face_images(rng, 6, 6)
    names, tids, mids = [], [], []
    for i, (img, ident) in enumerate(zip(imgs, labels, strict=True)):
        names.append(f"{i}.jpg")
        save_png(img, root / "images" / f"{i}.jpg")  # PNG bytes; PIL reads by content
        tids.append(100 + 2 * ident + (i % 6 >= 3))  # two templates per subject
        mids.append(i % 2)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / f"meta/{prefix}_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, tids, mids, strict=True)))
    ts = sorted(set(tids))
    (root / f"meta/{prefix}_template_pair_label.txt").write_text("".join(
        f"{a} {b} {int((a - 100) // 2 == (b - 100) // 2)}\n" for a in ts for b in ts if a < b))


def write_ijb_identification(
    root: Path, prefix: str = "ijbc", galleries: tuple[str, str] = ("G1", "G2"), seed: int = 3
) -> None:
    """An IJB 1:N set: 8 subjects x 4 images; the first gallery holds subjects 0-3, the second
    4-7 (images 0-1 of each); the mixed probes are images 2-3 of every subject."""
    rng = np.random.default_rng(seed)
    imgs, labels = face_images(rng, 8, 4)
    rows = []
    for i, (img, subject) in enumerate(zip(imgs, labels, strict=True)):
        save_png(img, root / "images" / f"frames/{i}.png")
        rows.append((i, int(subject)))
    (root / "meta").mkdir(parents=True, exist_ok=True)
    head = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"
    for name, subjects in zip(galleries, (range(4), range(4, 8)), strict=True):
        (root / f"meta/{prefix}_1N_gallery_{name}.csv").write_text(head + "".join(
            f"{100 + s},{s},frames/{i}.png,{i}\n" for i, s in rows if s in subjects and i % 4 < 2))
    (root / f"meta/{prefix}_1N_probe_mixed.csv").write_text(head + "".join(
        f"{200 + s},{s},frames/{i}.png,{i}\n" for i, s in rows if i % 4 >= 2))


def loop_pool(feats, tids, mids, normalize_images=False, weights=None):
    """Literal definition: per template, per medium, mean; sum over media; normalise."""
    f = feats.astype(np.float64)
    if normalize_images:
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    if weights is not None:
        f = f * weights[:, None]
    out = {}
    for t in sorted(set(tids.tolist())):
        total = np.zeros(f.shape[1])
        in_t = tids == t
        for m in sorted(set(mids[in_t].tolist())):
            total += f[in_t & (mids == m)].mean(0)
        out[t] = total / np.linalg.norm(total)
    return out
