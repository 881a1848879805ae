"""Small generated image sets and a tiny embedding network for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


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
