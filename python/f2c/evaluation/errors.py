"""Errors in what the user gave an evaluation: printed as one line by the CLIs (``f2c.cli``).

Both are also the built-in type a library caller would catch (``ValueError``, ``OSError``), so
code written against the plain types keeps working.
"""

from __future__ import annotations

from f2c.cli import UserError

__all__ = ["ImageError", "InputError"]


class InputError(UserError, ValueError):
    """A benchmark input — protocol file, pack, list, or its fit to the protocol — that is
    malformed; the message names the file (and line where there is one)."""


class ImageError(UserError, OSError):
    """An image that cannot be decoded; the message names it."""
