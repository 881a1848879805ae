"""Configuration: files (YAML/TOML), overrides, validation and the saved resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from f2c.config import (
    Config,
    ConfigError,
    DataSource,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)


def test_defaults_are_valid() -> None:
    config = load_config()
    assert config.head.name == "f2c"
    assert config.optim.milestones == [8.0, 14.0, 17.0]
    assert config.run_name() == "synthetic-f2c"


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n"
        "  sources:\n"
        "    - {lmdb: a.lmdb, kv: a.kv}\n"
        "    - {lmdb: b.lmdb, kv: b.kv}\n"
        "head: {name: partial_fc, sample_rate: 0.2}\n"
        "optim: {lr: 0.05, milestones: [2, 4]}\n"
        "train: {batch_size: 32}\n"
    )
    config = load_config(path, {"optim.lr": "0.01", "train.max_steps": "7", "head.pool_size": "9"})
    assert config.data.sources == [DataSource("a.lmdb", "a.kv"), DataSource("b.lmdb", "b.kv")]
    assert config.head.name == "partial_fc" and config.head.sample_rate == 0.2
    assert config.optim.lr == 0.01  # the override wins over the file
    assert config.optim.milestones == [2.0, 4.0]  # ints in the file become floats
    assert config.train.batch_size == 32 and config.train.max_steps == 7
    assert config.head.pool_size == 9


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[head]\nname = "fc"\nm = 0.35\n[train]\nepochs = 3\namp = "bf16"\n')
    config = load_config(path)
    assert config.head.name == "fc" and config.head.m == 0.35
    assert config.train.epochs == 3 and config.train.amp == "bf16"


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"optim": {"lrr": 0.1}}, "optim.lrr"),
        ({"optimizer": {}}, "optimizer"),
        ({"head": {"name": "softmax"}}, "head.name"),
        ({"train": {"batch_size": "64"}}, "train.batch_size"),
        ({"train": {"compile": 1}}, "train.compile"),
        ({"data": {"sources": [{"lmdb": "a"}]}}, "data.sources[0]"),
        ({"data": {"synthetic": {"size": 3}}}, "data.synthetic.size"),
    ],
)
def test_bad_file_values_name_the_key(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match="run.yaml") as info:
        config_from_dict(values, "run.yaml")
    assert needle in str(info.value)


def test_bad_overrides_name_the_option() -> None:
    with pytest.raises(ConfigError, match="--optim.lrr"):
        load_config(None, {"optim.lrr": "1"})
    with pytest.raises(ConfigError, match="--train.epochs"):
        load_config(None, {"train.epochs": "many"})
    with pytest.raises(ConfigError, match="--train.progress"):
        load_config(None, {"train.progress": "maybe"})


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match="even"):
        load_config(None, {"train.batch_size": "7"})
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, {"head.pool_size": "10", "head.pool_ratio": "0.1"})
    with pytest.raises(ConfigError, match="increasing"):
        load_config(None, {"optim.milestones": "5,2"})


def test_unknown_file_format_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "run.ini"
    bad.write_text("[x]\n")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = apply_overrides(Config(), {"head.name": "fc", "optim.milestones": "1,2"})
    config.data.sources = [DataSource("x.lmdb", "x.kv")]
    path = save_config(config, tmp_path / "run")
    assert path.name == "config.yaml"
    again = config_from_dict(yaml.safe_load(path.read_text()), str(path))
    assert again == config
