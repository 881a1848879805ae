"""``python -m f2c.train`` option layering: defaults, default job, file, options, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from f2c.cli import UserError, run_cli
from f2c.config import Config, ConfigError
from f2c.train import PROG, build_config, build_parser, main
from f2c.training.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_save
from f2c.training.default_job import DEFAULT_JOB
from f2c.training.loop import TrainingError
from f2c.training.run import plan_run


def _config(*argv: str) -> tuple[Config, bool]:
    return build_config(build_parser().parse_args(list(argv)))


def _get(config: Config, key: str) -> object:
    node: object = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_no_data_means_the_default_job() -> None:
    config, auto_named = _config()
    assert auto_named and not config.data.sources
    for key, value in DEFAULT_JOB.items():
        assert _get(config, key) == value, key
    assert config.run_name() == "synthetic-f2c"
    # Options still win over the default job; shortcuts and full keys both work.
    config, _ = _config("--head", "fc", "--train.epochs", "1", "--lr", "0.3")
    assert config.head.name == "fc" and config.train.epochs == 1 and config.optim.lr == 0.3
    assert config.model.backbone == DEFAULT_JOB["model.backbone"]


def test_real_data_keeps_the_paper_defaults(tmp_path: Path) -> None:
    config, _ = _config("--data", "a.lmdb", "a.kv", "--data", "b.lmdb", "b.kv")
    assert [s.lmdb for s in config.data.sources] == ["a.lmdb", "b.lmdb"]
    assert config.train.epochs == Config().train.epochs == 19
    assert config.model.backbone == "mobilefacenet"
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  sources: [{lmdb: x.lmdb, kv: x.kv}]\ntrain: {epochs: 3}\n")
    config, _ = _config(str(path), "--train.epochs", "5")
    assert config.train.epochs == 5 and config.data.sources[0].kv == "x.kv"
    assert config.optim.milestones == [8.0, 14.0, 17.0]


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        _config("--epochs", "two")
    with pytest.raises(ConfigError, match="once"):
        _config("a.yaml", "--config", "b.yaml")
    with pytest.raises(SystemExit):
        _config("--no-such-option", "1")


def test_resume_starts_from_the_checkpoint_config(tmp_path: Path) -> None:
    saved, _ = _config("--head", "partial_fc", "--epochs", "3", "--name", "old")
    atomic_save({"format": CHECKPOINT_FORMAT, "config": saved.to_dict()},
                tmp_path / "checkpoint.pt")
    config, _ = _config("--resume", str(tmp_path), "--epochs", "6")
    assert config.head.name == "partial_fc" and config.train.name == "old"
    assert config.train.epochs == 6


def test_plan_run_continues_refuses_or_renames(tmp_path: Path) -> None:
    config, _ = _config("--out-dir", str(tmp_path))
    run = tmp_path / "synthetic-f2c"
    assert plan_run(config).run_dir == run and plan_run(config).resume_from is None
    atomic_save({"format": CHECKPOINT_FORMAT, "finished": False}, run / "checkpoint.pt")
    assert plan_run(config).resume_from == run / "checkpoint.pt"  # unfinished: continue
    atomic_save({"format": CHECKPOINT_FORMAT, "finished": True}, run / "checkpoint.pt")
    assert plan_run(config, auto_named=True).run_dir == tmp_path / "synthetic-f2c-2"
    with pytest.raises(TrainingError, match="finished run"):
        plan_run(config, auto_named=False)
    assert plan_run(config, fresh=True).resume_from is None
    with pytest.raises(TrainingError, match="no checkpoint"):
        plan_run(config, resume=str(tmp_path / "elsewhere"))


def test_resume_from_a_checkpoint_written_before_the_new_keys(tmp_path: Path) -> None:
    saved, _ = _config("--head", "fc", "--name", "old")
    old = saved.to_dict()
    del old["head"]["sv_t"], old["train"]["tensorboard"]
    del old["model"]["init_from"], old["model"]["init_net"], old["optim"]["clip_grad_norm"]
    atomic_save({"format": CHECKPOINT_FORMAT, "config": old}, tmp_path / "checkpoint.pt")
    config, _ = _config("--resume", str(tmp_path))
    assert config == saved
    assert config.head.sv_t == 1.2 and config.train.tensorboard is True


def test_resume_from_a_checkpoint_with_the_removed_loss_weighting_key(tmp_path: Path) -> None:
    saved, _ = _config("--name", "old")
    old = saved.to_dict()
    old["head"]["loss_weighting"] = "paper"  # as every checkpoint written before its removal
    atomic_save({"format": CHECKPOINT_FORMAT, "config": old}, tmp_path / "checkpoint.pt")
    config, _ = _config("--resume", str(tmp_path))
    assert config == saved
    old["head"]["loss_weighting"] = "row_equal"
    atomic_save({"format": CHECKPOINT_FORMAT, "config": old}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="checkpoint.pt: saved config.*loss_weighting.*removed"):
        _config("--resume", str(tmp_path))


def test_removed_loss_weighting_option_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--head.loss_weighting", "row_equal"]) == 2
    err = capsys.readouterr().err
    assert "head.loss_weighting" in err and "removed" in err and "not better" in err
    assert "--head.loss_weighting" not in build_parser().format_help()


def test_help_shows_each_range() -> None:
    text = build_parser().format_help()
    assert "--optim.gamma FLOAT" in text and "in (0, 1]" in " ".join(text.split())
    assert "--debug" in text


# ------------------------------------------------------------------ error reporting


def test_bad_value_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--optim.gamma", "-0.1"]) == 2
    err = capsys.readouterr().err
    assert err == f"{PROG}: error: optim.gamma must be in (0, 1], got -0.1\n"


def test_missing_input_paths_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "lfw" / "pairs.txt"
    out = tmp_path / "runs"
    assert main(["--eval-pairs", str(pairs), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"train.eval_pairs: pairs file not found: {pairs}" in err
    assert not out.exists()  # no run folder: nothing started
    assert main(["--data", str(tmp_path / "a.lmdb"), str(tmp_path / "a.kv"),
                 "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.sources[0].lmdb" in err and "data.sources[0].kv" in err
    assert not out.exists()


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="optim.momentum"):
        main(["--optim.momentum", "-0.5", "--debug"])
    monkeypatch.setenv("F2C_DEBUG", "1")
    with pytest.raises(ConfigError, match="optim.momentum"):
        main(["--optim.momentum", "-0.5"])
    monkeypatch.setenv("F2C_DEBUG", "0")
    assert main(["--optim.momentum", "-0.5"]) == 2


@pytest.mark.parametrize(
    "error",
    [UserError("bad"), ConfigError("bad"), CheckpointError("bad"), TrainingError("bad"),
     FileNotFoundError(2, "No such file or directory", "x.bin")],
)
def test_run_cli_prints_user_errors(
    error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(argv: list[str]) -> int:
        raise error

    assert run_cli("prog", fails, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("prog: error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(type(error)):
        run_cli("prog", fails, ["--debug"])


def test_run_cli_keeps_tracebacks_of_bugs() -> None:
    def buggy(argv: list[str]) -> int:
        raise KeyError("internal")

    with pytest.raises(KeyError):
        run_cli("prog", buggy, [])
    with pytest.raises(ValueError, match="plain"):  # a plain ValueError is not a user error
        run_cli("prog", lambda argv: int("plain"), [])
    assert run_cli("prog", lambda argv: len(argv), ["a", "b"]) == 2  # main's status passes


def test_the_module_exits_2_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "F2C_DEBUG"}
    result = subprocess.run(
        [sys.executable, "-m", "f2c.train", "--train.seed", "-1", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert result.returncode == 2
    assert result.stderr == f"{PROG}: error: train.seed must be in [0, 4294967296), got -1\n"
