"""``HeadBatch``: what every head's ``forward`` takes.

One training step embeds two views, x and y, of the same step's images (docs/design.md §1): the
probe embeddings of both views, x's rows first; their labels; and, for a head that reads them
(``requires_gallery``), the gallery network's embeddings of the same rows. The F²C head uses the
views separately (its two passes); the FC baselines use all rows at once, so they see exactly
the images and labels F²C sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["HeadBatch"]


@dataclass(frozen=True)
class HeadBatch:
    """Probe embeddings ``[n_x + n_y, D]`` (view x first), labels ``[n_x + n_y]``, ``n_x``.

    ``gallery`` holds the gallery network's embeddings of the same rows, or None when the step
    skipped the gallery forward (heads whose ``requires_gallery`` is False never read it).
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    split: int
    gallery: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [n, D], got {tuple(self.embeddings.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [{n}], got {tuple(self.labels.shape)}")
        if not 0 <= self.split <= n:
            raise ValueError(f"split must be in [0, {n}], got {self.split}")
        if self.gallery is not None and self.gallery.shape != self.embeddings.shape:
            raise ValueError(
                f"gallery must have the embeddings' shape {tuple(self.embeddings.shape)}, got "
                f"{tuple(self.gallery.shape)}"
            )

    @classmethod
    def from_views(
        cls,
        probe_x: torch.Tensor,
        labels_x: torch.Tensor,
        probe_y: torch.Tensor,
        labels_y: torch.Tensor,
        gallery_x: torch.Tensor | None = None,
        gallery_y: torch.Tensor | None = None,
    ) -> HeadBatch:
        """Concatenate the two views (gradients flow back to ``probe_x`` and ``probe_y``)."""
        if (gallery_x is None) != (gallery_y is None):
            raise ValueError("give the gallery embeddings of both views or of neither")
        gallery = None
        if gallery_x is not None and gallery_y is not None:
            gallery = torch.cat([gallery_x, gallery_y])
        return cls(
            embeddings=torch.cat([probe_x, probe_y]),
            labels=torch.cat([labels_x, labels_y]),
            split=probe_x.shape[0],
            gallery=gallery,
        )

    @property
    def num_rows(self) -> int:
        return int(self.embeddings.shape[0])

    def view(self, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(probe embeddings, labels, gallery embeddings or None) of view ``"x"`` or ``"y"``."""
        rows = {"x": slice(0, self.split), "y": slice(self.split, None)}[which]
        gallery = self.gallery[rows] if self.gallery is not None else None
        return self.embeddings[rows], self.labels[rows], gallery
