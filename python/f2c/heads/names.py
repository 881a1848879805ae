"""The names of the heads and margins, declared once.

Torch-free on purpose: ``f2c.config`` types its fields with these, and the head modules check
their arguments against them.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["HeadName", "MarginKind"]

HeadName = Literal["f2c", "fc", "partial_fc"]
MarginKind = Literal["cosface", "arcface", "svsoftmax"]
