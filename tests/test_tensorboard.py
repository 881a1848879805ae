"""TensorBoard event files from metric rows: written on rank 0, read back, absent without it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from f2c.training.tensorboard import TENSORBOARD_DIR, open_tensorboard


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``log_dir``'s event files, as TensorBoard itself reads them."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def _train_row(step: int, loss: float) -> dict[str, Any]:
    return {"kind": "train", "step": step, "epoch": step / 10, "loss": loss, "lr": 0.1 / step,
            "images_per_second": 100.0 + step, "data_wait_share": 0.02,
            "in_pool_fraction": 0.5 + step / 100, "resumed": False, "note": "text"}


@pytest.fixture
def tensorboard_installed() -> None:
    pytest.importorskip("torch.utils.tensorboard")


@pytest.mark.usefixtures("tensorboard_installed")
def test_rows_become_scalars_under_the_run_folder(tmp_path: Path) -> None:
    sink = open_tensorboard(tmp_path, is_main=True)
    assert sink is not None
    for step in (1, 2, 4):
        sink.append(_train_row(step, loss=10.0 - step))
    sink.append({"kind": "eval", "step": 4, "epoch": 1, "held_out_accuracy": 0.75})
    sink.close()
    scalars = _scalars(tmp_path / TENSORBOARD_DIR)
    assert set(scalars) == {
        "train/loss", "train/lr", "train/images_per_second", "train/data_wait_share",
        "train/in_pool_fraction", "eval/held_out_accuracy",
    }  # not the step, epoch, a flag or a string
    assert scalars["train/loss"] == [(1, 9.0), (2, 8.0), (4, 6.0)]
    assert [s for s, _ in scalars["train/lr"]] == [1, 2, 4]
    assert scalars["train/lr"][1][1] == pytest.approx(0.05)
    assert scalars["eval/held_out_accuracy"] == [(4, 0.75)]


@pytest.mark.usefixtures("tensorboard_installed")
def test_resume_purges_events_after_the_checkpoint_and_fresh_start_clears(
    tmp_path: Path,
) -> None:
    first = open_tensorboard(tmp_path, is_main=True)
    assert first is not None
    for step in range(1, 7):
        first.append(_train_row(step, loss=float(step)))
    first.close()
    # Killed after step 6, the checkpoint was at step 3: the continued run rewrites 4, 5, ...
    resumed = open_tensorboard(tmp_path, is_main=True, resume_step=3)
    assert resumed is not None
    for step in (4, 5):
        resumed.append(_train_row(step, loss=100.0 + step))
    resumed.close()
    assert _scalars(tmp_path / TENSORBOARD_DIR)["train/loss"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0)
    ]
    fresh = open_tensorboard(tmp_path, is_main=True)
    assert fresh is not None
    fresh.append(_train_row(1, loss=7.0))
    fresh.close()
    assert _scalars(tmp_path / TENSORBOARD_DIR)["train/loss"] == [(1, 7.0)]
    assert len(list((tmp_path / TENSORBOARD_DIR).iterdir())) == 1


def test_only_global_rank_zero_and_only_when_enabled(tmp_path: Path) -> None:
    assert open_tensorboard(tmp_path, is_main=False) is None
    assert open_tensorboard(tmp_path, is_main=True, enabled=False) is None
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_without_tensorboard_there_is_no_sink_and_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry makes `import torch.utils.tensorboard` raise ImportError, as without the
    # tensorboard package.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert open_tensorboard(tmp_path, is_main=True) is None
    assert "pip install 'f2c[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / TENSORBOARD_DIR).exists()


@pytest.mark.usefixtures("tensorboard_installed")
def test_rows_are_on_disk_when_the_process_is_killed(tmp_path: Path) -> None:
    """A killed run keeps every row appended before the kill (the resumed run only rewrites
    rows after its checkpoint, so lost rows would stay a gap)."""
    pid = os.fork()
    if pid == 0:  # child: append and die without closing anything
        try:
            sink = open_tensorboard(tmp_path, is_main=True)
            assert sink is not None
            for step in (1, 2, 3):
                sink.append(_train_row(step, loss=float(step)))
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _scalars(tmp_path / TENSORBOARD_DIR)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
