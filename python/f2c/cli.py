"""Command-line entry points: user mistakes print one line, internal bugs keep their traceback.

Every f2c CLI runs its ``main`` through :func:`run_cli`. An error the user can fix — a bad
option, a missing input file, a malformed checkpoint or pack — is printed as
``<prog>: error: <message>`` on stderr with exit status 2 (argparse's status for usage errors).
Anything else is a bug in f2c and propagates with its traceback. ``--debug`` on the command line
(see :func:`add_debug_option`) or ``F2C_DEBUG=1`` in the environment re-raises user errors too,
to show where they came from.

Torch-free and importing nothing from f2c, so every module can use it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "DEBUG_ENV",
    "UserError",
    "add_debug_option",
    "debug_requested",
    "is_user_error",
    "positive_int",
    "run_cli",
]

DEBUG_ENV = "F2C_DEBUG"


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts and sizes: a whole number >= 1, else a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

# f2c's own user-facing errors that live in modules with heavy imports (torch). They are looked
# up in sys.modules rather than imported: an exception of a class can only exist once its module
# has been imported, and a CLI that never loaded the trainer should not pay for importing it.
_USER_ERRORS_ELSEWHERE = (
    ("f2c.training.checkpoint", "CheckpointError"),
    ("f2c.training.loop", "TrainingError"),
)

# Input paths the user named that cannot be opened.
_PATH_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class UserError(Exception):
    """A mistake the user can fix; the CLIs print its message as one line, no traceback."""


def is_user_error(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``exc`` is one of f2c's user-facing errors (or one of ``extra``)."""
    known: list[type[BaseException]] = [UserError, *_PATH_ERRORS, *extra]
    for module_name, class_name in _USER_ERRORS_ELSEWHERE:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            known.append(cls)
    return isinstance(exc, tuple(known))


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show the traceback of user errors) to ``parser``."""
    parser.add_argument(
        "--debug", action="store_true",
        help=f"show the traceback of errors as well (or set {DEBUG_ENV}=1)",
    )


def debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` among ``argv`` or ``F2C_DEBUG`` set to something other than 0/empty."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def run_cli(
    prog: str,
    main: Callable[[list[str]], int],
    argv: Sequence[str] | None = None,
    *,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``main(argv)`` and return its exit status; a user error prints one line, status 2.

    ``user_errors``: more exception classes to treat as user errors (besides :class:`UserError`,
    missing or unreadable input paths and f2c's checkpoint and training errors).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except Exception as exc:
        if debug_requested(args) or not is_user_error(exc, user_errors):
            raise
        message = str(exc).strip() or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 2
