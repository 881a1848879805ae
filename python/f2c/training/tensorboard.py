"""TensorBoard event files of a run's metric rows, written by global rank 0 only.

A ``TensorBoardSink`` takes the rows the run's ``MetricsLog`` gets (``kind`` ``"train"``: loss, lr,
images/s, data-wait share, the head's stats such as ``in_pool_fraction``; ``kind`` ``"eval"``:
held-out accuracy) and writes every numeric value as the scalar ``<kind>/<key>`` at the row's
``step``, under ``<run folder>/tensorboard/``. ``tensorboard --logdir runs/`` shows every run.

TensorBoard is an optional extra (``pip install 'f2c[tensorboard]'``): without it,
:func:`open_tensorboard` returns ``None`` and the run writes no event files; nothing here imports
it at module import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TENSORBOARD_DIR", "TensorBoardSink", "open_tensorboard"]

TENSORBOARD_DIR = "tensorboard"  # inside the run folder
_EVENT_PREFIX = "events.out.tfevents."
_NOT_SCALARS = frozenset({"kind", "step", "epoch"})  # the row's identity and x-axes


class TensorBoardSink:
    """Scalar event files in ``log_dir``; ``append`` takes ``MetricsLog`` rows (a metrics sink).

    ``purge_step`` (a resumed run: the checkpoint's step + 1) tells TensorBoard to drop the
    events an earlier, killed process wrote at that step or later, as ``MetricsLog`` drops
    its rows after the checkpoint.
    """

    def __init__(
        self, log_dir: str | os.PathLike[str], *, purge_step: int | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def append(self, row: Mapping[str, Any]) -> None:
        kind = str(row.get("kind", "train"))
        step = int(row["step"])
        for key, value in row.items():
            # bool is an int: flags are not curves.
            if key in _NOT_SCALARS or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{kind}/{key}", float(value), global_step=step)
        # To the file now, as MetricsLog does: events still queued when a process is killed
        # would leave a gap before the checkpoint that the resumed run does not refill.
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _have_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401  # raises ImportError without tensorboard
    except ImportError:
        return False
    return True


def open_tensorboard(
    run_dir: str | os.PathLike[str],
    *,
    is_main: bool,
    enabled: bool = True,
    resume_step: int | None = None,
) -> TensorBoardSink | None:
    """The run's sink on global rank 0 when ``enabled`` and tensorboard is installed, else None.

    A fresh run (``resume_step`` None) removes event files a previous run left in the folder;
    a resumed one purges the events written after ``resume_step``.
    """
    if not (enabled and is_main):
        return None
    if not _have_tensorboard():
        print("note: tensorboard is not installed, so no event files are written "
              "(pip install 'f2c[tensorboard]')", file=sys.stderr, flush=True)
        return None
    log_dir = Path(run_dir) / TENSORBOARD_DIR
    if resume_step is None and log_dir.is_dir():
        for old in log_dir.glob(f"{_EVENT_PREFIX}*"):
            old.unlink()
    purge = None if resume_step is None else resume_step + 1
    return TensorBoardSink(log_dir, purge_step=purge)
