"""What every head's forward returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HeadOutput:
    """The loss to back-propagate and plain-float statistics for logging."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
