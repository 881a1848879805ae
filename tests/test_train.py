"""End-to-end training runs on a tiny synthetic db: outputs, DDP, exact resume, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_support import (
    assert_same_state,
    load,
    run_module,
    subprocess_env,
    tiny_dataset,
    tiny_run_args,
)

import f2c.training.step as step_module
from f2c.config import config_from_dict
from f2c.data.sources import open_training_source
from f2c.data.synthetic import SyntheticDataset
from f2c.train import build_config, build_parser, main
from f2c.training.checkpoint import atomic_save
from f2c.training.loop import Trainer, TrainingError
from f2c.training.runtime import Runtime

SUMMARY_KEYS = {
    "held_out_accuracy", "pixel_baseline_accuracy", "head", "wall_seconds",
    "images_per_second", "data_wait_share",
}


# In-process runs share the machine with other tests: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("train") / "tiny")


def test_single_process_run_writes_every_output(data: SyntheticDataset, tmp_path: Path) -> None:
    assert main(tiny_run_args(data, tmp_path, "--name", "one", "--train.checkpoint_every", "5",
                              "--train.eval_every_epoch", "true")) == 0
    run = tmp_path / "one"
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["head"] == "f2c" and summary["status"] == "finished"
    assert summary["steps"] == 2 * (96 // 8)
    assert 0.0 <= summary["held_out_accuracy"] <= 1.0
    assert 0.0 <= summary["pixel_baseline_accuracy"] <= 1.0
    assert summary["images_per_second"] > 0 and 0 <= summary["data_wait_share"] < 1
    assert summary["pool_size"] >= 2 * 12  # default pool: twice the per-pass minimum
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, *range(2, 25, 2)]
    assert all(0.0 <= r["in_pool_fraction"] <= 1.0 for r in train_rows)
    assert len([r for r in rows if r["kind"] == "eval"]) == 2
    assert (run / "metrics.csv").read_text().startswith("kind,step,epoch,loss,lr")
    assert (run / "metrics.png").stat().st_size > 1000
    # The saved config is the resolved one and loads back.
    config = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert config.model.backbone == "tinyfacenet" and config.train.name == "one"
    # The checkpoint is weights_only-loadable and complete, and the evaluator can use it.
    ckpt = load(run / "checkpoint.pt")
    assert ckpt["finished"] and ckpt["global_step"] == 24 and ckpt["epoch"] == 2
    assert {"probe", "gallery", "head", "optimizer", "scaler", "rng", "config"} <= set(ckpt)
    assert ckpt["head"]["kind"] == "f2c" and len(ckpt["head"]["index"]["keys"]) > 0
    from f2c.evaluate import load_checkpoint_model

    loaded = load_checkpoint_model(run / "checkpoint.pt", net="gallery")
    assert loaded.backbone == "tinyfacenet" and loaded.embedding_size == 32


@pytest.mark.parametrize("head", ["fc", "partial_fc"])
def test_baseline_heads_train_on_the_same_batches(
    data: SyntheticDataset, tmp_path: Path, head: str
) -> None:
    # With gradient clipping on: the shared step clips the sharded centres' norm over ranks.
    assert main(tiny_run_args(data, tmp_path, "--head", head, "--train.max_steps", "3",
                              "--optim.clip_grad_norm", "5")) == 0
    summary = json.loads((tmp_path / f"{head}-tinyfacenet" / "summary.json").read_text())
    assert summary["head"] == head and summary["steps"] == 3
    assert summary["in_pool_fraction"] is None and summary["pool_size"] is None
    ckpt = load(tmp_path / f"{head}-tinyfacenet" / "checkpoint.pt")
    assert "head_momentum_full" in ckpt["optimizer"]  # head momentum stored whole


def test_sigkill_then_resume_matches_an_uninterrupted_run(
    data: SyntheticDataset, tmp_path: Path
) -> None:
    """Bitwise on CPU: same weights, pool, pointers, LRU, optimiser and RNG state."""
    args = tiny_run_args(data, tmp_path, "--epochs", "3", "--train.checkpoint_every", "4",
                         "--workers", "2")
    full = run_module([*args, "--name", "full"])
    assert full.returncode == 0, full.stderr[-3000:]

    cmd = [sys.executable, "-m", "f2c.train", *args, "--name", "killed"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if checkpoint.exists():
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load(checkpoint)
    assert not state["finished"], "the run ended before it could be killed"
    killed_at = state["global_step"]
    assert 0 < killed_at < 36

    resumed = run_module([*args, "--name", "killed"])  # same folder: continues
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {tmp_path / 'killed'} at step {killed_at}" in resumed.stderr
    a, b = load(tmp_path / "full" / "checkpoint.pt"), load(checkpoint)
    assert a["global_step"] == b["global_step"] == 36
    assert_same_state(a, b, skip=("/config",))
    metrics = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_checkpoint_written_before_the_step_refactor_resumes_exactly(
    data: SyntheticDataset, tmp_path: Path
) -> None:
    """Checkpoints from before carry ``identity_position`` (always equal to ``global_step``);
    nothing reads it now, and such a checkpoint continues the run bitwise."""
    straight = tiny_run_args(data, tmp_path, "--name", "straight", "--train.max_steps", "5")
    assert main(straight) == 0
    assert main(tiny_run_args(data, tmp_path, "--name", "old", "--train.max_steps", "3")) == 0
    path = tmp_path / "old" / "checkpoint.pt"
    state = load(path)
    assert "identity_position" not in state
    atomic_save({**state, "identity_position": state["global_step"]}, path)
    assert main(["--resume", str(tmp_path / "old"), "--train.max_steps", "5"]) == 0
    a, b = load(tmp_path / "straight" / "checkpoint.pt"), load(path)
    assert a["global_step"] == b["global_step"] == 5
    assert_same_state(a, b, skip=("/config",))


def test_two_process_gloo_run_and_resume_on_one_process(
    data: SyntheticDataset, tmp_path: Path
) -> None:
    args = tiny_run_args(data, tmp_path, "--head", "fc", "--batch-size", "4",
                         "--train.max_steps", "4", "--name", "ddp")
    result = run_module(args, torchrun=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    ckpt = load(tmp_path / "ddp" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["head"]["kind"] == "fc"
    assert ckpt["step_in_epoch"] == 4 and ckpt["steps_per_epoch"] == 96 // 8

    # One process loads the 2-rank checkpoint: the sharded FC centres and their momentum are
    # stored whole and re-sharded (here: into one shard).
    config, _ = build_config(build_parser().parse_args(["--resume", str(tmp_path / "ddp")]))
    runtime = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    db = open_training_source(data.root)
    trainer = Trainer(config, runtime, db, tmp_path / "ddp")
    trainer.load_state_dict(ckpt)
    assert_same_state(trainer.head.full_state_dict(), ckpt["head"])
    momentum = [trainer.optimizer.state[p]["momentum_buffer"] for p in trainer.head.parameters()]
    full_momentum = ckpt["optimizer"]["head_momentum_full"]
    assert torch.equal(momentum[0], full_momentum["weight"])
    assert trainer.best_effort_resume  # world size changed: data order differs from here on
    # Same share of the epoch: 4 of 12 two-rank steps = 8 of 24 one-rank steps.
    assert trainer.step_in_epoch == 8 and trainer.steps_per_epoch == 24

    assert main(["--resume", str(tmp_path / "ddp"), "--train.max_steps", "6"]) == 0
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 6
    assert summary["resumed_from_step"] == 4


def test_two_process_f2c_run_and_resume_on_one_process(
    data: SyntheticDataset, tmp_path: Path
) -> None:
    """The F²C head under torchrun (gloo): the pool is not sharded, so its saved state serves
    any world size; the run continues on one process."""
    args = tiny_run_args(data, tmp_path, "--head", "f2c", "--batch-size", "4",
                         "--train.max_steps", "4", "--name", "ddp-f2c")
    result = run_module(args, torchrun=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp-f2c" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["head"] == "f2c"
    assert 0.0 < summary["in_pool_fraction"] <= 1.0
    ckpt = load(tmp_path / "ddp-f2c" / "checkpoint.pt")
    head = ckpt["head"]
    assert ckpt["world_size"] == 2 and head["kind"] == "f2c"
    # Gallery writes from both ranks' labels filled part of the pool.
    assert 0 < len(head["index"]["keys"]) <= head["pool_size"]

    # The default pool size depends on the world size; the continued run keeps the saved pool.
    assert main(["--resume", str(tmp_path / "ddp-f2c"), "--train.max_steps", "6"]) == 0
    summary = json.loads((tmp_path / "ddp-f2c" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 6
    assert summary["resumed_from_step"] == 4 and summary["pool_size"] == head["pool_size"]


def test_resume_into_a_different_pool_size_is_a_clear_error(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_run_args(data, tmp_path, "--head", "f2c", "--head.pool_size", "12",
                         "--train.max_steps", "2", "--name", "pool")
    assert main(args) == 0
    saved = load(tmp_path / "pool" / "checkpoint.pt")["head"]["pool_size"]
    assert saved == 12
    message = _error_of(capsys, ["--resume", str(tmp_path / "pool"), "--head.pool_size", "18",
                                 "--train.max_steps", "4"])
    assert "checkpoint's head does not fit" in message and "pool_size=12" in message



@pytest.mark.parametrize("damage", ["wrong_shape", "negative_step", "no_config"])
def test_resume_from_a_malformed_checkpoint_is_one_line_naming_it(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    import torch

    args = tiny_run_args(data, tmp_path, "--train.max_steps", "2", "--name", "bad")
    assert main(args) == 0
    path = tmp_path / "bad" / "checkpoint.pt"
    state = load(path)
    if damage == "wrong_shape":
        key = next(k for k, v in state["probe"].items() if v.ndim == 4)
        state["probe"][key] = state["probe"][key][:, :1].clone()
        expected = key
    elif damage == "negative_step":
        state["global_step"] = -3
        expected = "global_step"
    else:
        del state["config"]
        expected = "config"
    torch.save(state, path)
    message = _error_of(capsys, ["--resume", str(path), "--train.max_steps", "4"])
    assert str(path) in message and expected in message
    errors = [line for line in message.splitlines() if "error" in line]
    assert "Traceback" not in message and len(errors) == 1


# ------------------------------------------------------------------------------ errors


def _error_of(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


def test_missing_db_and_bad_kv_are_clear_errors(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_run_args(data, tmp_path)
    i = args.index("--data")
    missing = [*args[:i], "--data", str(tmp_path / "gone.lmdb"), str(data.kv_path), *args[i + 3:]]
    assert "training db not found" in _error_of(capsys, missing)
    bad = tmp_path / "bad.kv"
    bad.write_text("k0 0\nk1 one\n")
    bad_kv = [*args[:i], "--data", str(data.lmdb_path), str(bad), *args[i + 3:]]
    err = _error_of(capsys, bad_kv)
    assert "bad.kv" in err and "2" in err


def test_pool_too_small_names_the_minimum(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error_of(capsys, tiny_run_args(data, tmp_path, "--head.pool_size", "11"))
    assert "pool too small" in err and "at least 12" in err


def test_more_ranks_than_identities(data: SyntheticDataset, tmp_path: Path) -> None:
    config, _ = build_config(build_parser().parse_args(tiny_run_args(data, tmp_path)))
    db = open_training_source(data.root)
    many = Runtime(rank=0, world_size=25, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="more ranks than identities"):
        Trainer(config, many, db, tmp_path)
    four = Runtime(rank=0, world_size=4, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="needs 32"):
        Trainer(config, four, db, tmp_path)


def test_amp_on_cpu_is_refused(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error_of(capsys, tiny_run_args(data, tmp_path, "--train.amp", "bf16"))
    assert "needs a CUDA device" in err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = step_module.normalize
    calls = {"n": 0}

    def poisoned(batch: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = real(batch)
        return out * float("nan") if calls["n"] == 7 else out

    monkeypatch.setattr(step_module, "normalize", poisoned)
    err = _error_of(capsys, tiny_run_args(data, tmp_path, "--name", "nan",
                                          "--train.checkpoint_every", "3"))
    assert "loss became nan at step 7" in err
    ckpt = load(tmp_path / "nan" / "checkpoint.pt")
    assert ckpt["global_step"] == 6 and not ckpt["finished"]
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"].startswith("stopped: loss became nan")
    assert summary["last_good_checkpoint"].endswith("checkpoint.pt")


def test_a_finished_run_is_not_overwritten(
    data: SyntheticDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_run_args(data, tmp_path, "--name", "done", "--train.max_steps", "2")
    assert main(args) == 0
    capsys.readouterr()
    assert "holds a finished run" in _error_of(capsys, args)
    assert main([*args, "--fresh"]) == 0
