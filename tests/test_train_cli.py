"""``python -m f2c.train`` option layering: defaults, default job, file, options, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from f2c.config import Config, ConfigError
from f2c.train import build_config, build_parser
from f2c.training.checkpoint import CHECKPOINT_FORMAT, atomic_save
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
