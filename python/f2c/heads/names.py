"""The names of the heads, margins and loss weightings, declared once.

Torch-free on purpose: ``f2c.config`` types its fields with these, and the head modules check
their arguments against them.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["HeadName", "LossWeighting", "MarginKind"]

HeadName = Literal["f2c", "fc", "partial_fc"]
MarginKind = Literal["cosface", "arcface", "svsoftmax"]
# How the F²C loss weighs the probe rows: "paper" is the CE mean over in-pool rows plus the
# outlier mean over outlier rows; "row_equal" gives every probe row the same weight.
LossWeighting = Literal["paper", "row_equal"]
