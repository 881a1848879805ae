"""TensorBoard event files from metric rows: written on rank 0, read back, absent without it."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from train_support import tiny_dataset, tiny_run_args

from f2c.data.synthetic import SyntheticDataset
from f2c.train import main
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


# ------------------------------------------------------------------ a real (tiny) run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("tensorboard") / "tiny")



@pytest.mark.usefixtures("tensorboard_installed", "one_thread")
def test_a_run_writes_its_metric_rows_as_events(data: SyntheticDataset, tmp_path: Path) -> None:
    # One epoch of 12 steps with the end-of-epoch evaluation: train and eval rows.
    args = tiny_run_args(data, tmp_path, "--epochs", "1", "--train.eval_every_epoch", "true",
                         "--name", "tb")
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").open()]
    train = [r for r in rows if r["kind"] == "train"]
    scalars = _scalars(tmp_path / "tb" / TENSORBOARD_DIR)
    for key in ("loss", "lr", "in_pool_fraction", "images_per_second", "data_wait_share"):
        assert [s for s, _ in scalars[f"train/{key}"]] == [r["step"] for r in train], key
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx(
            [r[key] for r in train], rel=1e-6), key
    assert scalars["eval/held_out_accuracy"] == [
        (r["step"], pytest.approx(r["held_out_accuracy"])) for r in rows if r["kind"] == "eval"
    ] != []


@pytest.mark.usefixtures("one_thread")
def test_a_run_without_tensorboard_or_with_it_off_writes_no_events(
    data: SyntheticDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    off = tiny_run_args(data, tmp_path, "--train.max_steps", "2", "--name", "off",
                        "--train.tensorboard", "false")
    assert main(off) == 0
    assert not (tmp_path / "off" / TENSORBOARD_DIR).exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    missing = tiny_run_args(data, tmp_path, "--train.max_steps", "2", "--name", "missing")
    assert main(missing) == 0
    assert (tmp_path / "missing" / "summary.json").is_file()
    assert not (tmp_path / "missing" / TENSORBOARD_DIR).exists()
