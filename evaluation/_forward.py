"""Shared by the per-benchmark scripts: forward to ``python -m f2c.evaluate``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from f2c.evaluate import main


def forward(kind: str, argv: Sequence[str] | None = None) -> None:
    """``script.py PATH [f2c.evaluate options]`` → ``--benchmark KIND=PATH [options]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        sys.exit(f"usage: {sys.argv[0]} PATH --checkpoint CKPT --out DIR [f2c.evaluate options]\n"
                 f"(PATH is the {kind} data; see evaluation/README.md; "
                 f"`python -m f2c.evaluate --help` lists the options)")
    status = main(["--benchmark", f"{kind}={args[0]}", *args[1:]])
    if status:
        sys.exit(status)
