"""Configuration: files (YAML/TOML), overrides, validation and the saved resolved config."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from f2c import heads
from f2c.config import (
    RANGES,
    Config,
    ConfigError,
    DataSource,
    HeadConfig,
    apply_overrides,
    check_inputs,
    config_from_dict,
    get_dotted,
    is_optional,
    load_config,
    merge_dicts,
    override_keys,
    resolve_config,
    save_config,
    set_dotted,
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


# ------------------------------------------------------------------ ranges of numeric keys


def _numeric(tp: Any) -> bool:
    _, inner = is_optional(tp)
    if typing.get_origin(inner) is list:
        (inner,) = typing.get_args(inner)
    return inner in (int, float)


def test_every_numeric_key_has_a_range() -> None:
    numeric = {key for key, tp in override_keys().items() if _numeric(tp)}
    assert numeric == set(RANGES)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optim.gamma", "-0.1"),
        ("optim.gamma", "0"),
        ("optim.gamma", "1.5"),
        ("optim.lr", "0"),
        ("optim.lr", "nan"),
        ("optim.lr", "inf"),
        ("optim.momentum", "-0.5"),
        ("optim.momentum", "1"),
        ("optim.weight_decay", "-1e-4"),
        ("optim.min_lr", "-0.001"),
        ("optim.warmup_epochs", "-1"),
        ("optim.clip_grad_norm", "0"),
        ("optim.clip_grad_norm", "-5"),
        ("train.seed", "-1"),
        ("train.seed", str(2**32)),
        ("train.epochs", "0"),
        ("train.max_steps", "0"),
        ("train.threads", "0"),
        ("train.checkpoint_every", "-1"),
        ("train.log_every", "0"),
        ("train.eval_batch_size", "0"),
        ("train.batch_size", "0"),
        ("train.batch_size", "7"),
        ("head.s", "0"),
        ("head.s", "-32"),
        ("head.m", "-0.1"),
        ("head.m", "2"),
        ("head.sv_t", "0.9"),
        ("head.ema_momentum", "1"),
        ("head.ema_momentum", "-0.1"),
        ("head.sample_rate", "0"),
        ("head.sample_rate", "1.5"),
        ("head.pool_size", "0"),
        ("head.pool_ratio", "0"),
        ("head.pool_ratio", "1.1"),
        ("model.embedding_size", "0"),
        ("data.workers", "-1"),
        ("data.prefetch", "0"),
        ("data.synthetic.num_identities", "0"),
        ("data.synthetic.images_per_identity", "0"),
        ("data.synthetic.num_test_identities", "19"),
        ("data.synthetic.pairs_per_fold", "3"),
        ("data.synthetic.pairs_per_fold", "0"),
        ("data.synthetic.image_size", "40"),
        ("data.synthetic.image_size", "16"),
        ("data.synthetic.seed", "-3"),
    ],
)
def test_out_of_range_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')} must be .*, got "):
        load_config(None, {key: value})


def test_list_items_are_checked_one_by_one() -> None:
    with pytest.raises(ConfigError, match=r"optim\.milestones\[1\] must be >= 0"):
        load_config(None, {"optim.milestones": "2,-1"})


def test_range_edges_that_are_allowed() -> None:
    config = load_config(None, {
        "optim.gamma": "1", "optim.momentum": "0", "optim.weight_decay": "0",
        "train.seed": str(2**32 - 1), "head.sv_t": "1", "head.m": "0", "head.pool_ratio": "1",
        "head.sample_rate": "1", "optim.min_lr": "0.1", "optim.lr": "0.1",
        "data.synthetic.image_size": "32", "data.synthetic.num_test_identities": "20",
        "train.checkpoint_every": "0", "data.workers": "0", "optim.clip_grad_norm": "0.5",
    })
    assert config.optim.gamma == 1.0 and config.train.seed == 2**32 - 1
    assert config.optim.min_lr == config.optim.lr


def test_cross_field_ranges() -> None:
    with pytest.raises(ConfigError, match=r"optim\.min_lr must be in \[0, optim\.lr = 0\.005\]"):
        load_config(None, {"optim.lr": "0.005", "optim.min_lr": "0.43"})
    with pytest.raises(ConfigError, match=r"head\.m must be < pi/2"):
        load_config(None, {"head.margin": "arcface", "head.m": "1.6"})
    assert load_config(None, {"head.margin": "cosface", "head.m": "1.6"}).head.m == 1.6
    assert load_config(None, {"head.margin": "arcface", "head.m": "0.5"}).head.m == 0.5
    with pytest.raises(ConfigError, match=r"model\.backbone must be one of .*'resnet9'"):
        load_config(None, {"model.backbone": "resnet9"})


def test_ranges_are_checked_for_file_values_too(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim: {gamma: -0.1}\n")
    with pytest.raises(ConfigError, match="optim.gamma"):
        load_config(path)


# ------------------------------------------------------------------ new keys, margin, names


def test_new_keys_parse_and_default(tmp_path: Path) -> None:
    defaults = Config()
    assert defaults.model.init_from is None and defaults.model.init_net == "probe"
    assert defaults.optim.clip_grad_norm is None
    assert defaults.head.sv_t == 1.2
    assert defaults.train.tensorboard is True
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {init_from: w.pt, init_net: gallery}\n"
        "optim: {clip_grad_norm: 5}\n"
        "head: {sv_t: 1.4}\n"
        "train: {tensorboard: false}\n"
    )
    config = load_config(path, {"optim.clip_grad_norm": "none"})
    assert config.model.init_from == "w.pt" and config.model.init_net == "gallery"
    assert config.optim.clip_grad_norm is None  # "none" clears an optional value
    assert config.head.sv_t == 1.4
    assert config.train.tensorboard is False
    assert load_config(path).optim.clip_grad_norm == 5.0
    with pytest.raises(ConfigError, match="'model.init_net': 'ema' is not one of"):
        load_config(None, {"model.init_net": "ema"})


def test_removed_loss_weighting_key_paper_loads_row_equal_is_refused(tmp_path: Path) -> None:
    # Configs and checkpoints written before the key was removed carry head.loss_weighting:
    # "paper" is today's only behaviour and is dropped; anything else says why it is gone.
    path = tmp_path / "old.yaml"
    path.write_text("head: {loss_weighting: paper, sv_t: 1.4}\n")
    config = load_config(path)
    assert config.head.sv_t == 1.4 and not hasattr(config.head, "loss_weighting")
    assert "loss_weighting" not in config.to_dict()["head"]
    base = Config().to_dict()
    base["head"]["loss_weighting"] = "paper"
    assert resolve_config(base=base) == Config()
    assert load_config(None, {"head.loss_weighting": "paper"}) == load_config()
    for value in ("row_equal", "mean"):
        path.write_text(f"head: {{loss_weighting: {value}}}\n")
        with pytest.raises(ConfigError, match=r"old.yaml: 'head.loss_weighting' was removed.*"
                           rf"one-percent-2026-12-01.*not better.*\(got '{value}'\)"):
            load_config(path)
    base["head"]["loss_weighting"] = "row_equal"
    with pytest.raises(ConfigError, match="ckpt.pt: saved config: 'head.loss_weighting' was"):
        resolve_config(base=base, base_source="ckpt.pt: saved config")
    with pytest.raises(ConfigError, match="command line: 'head.loss_weighting' was removed"):
        load_config(None, {"head.loss_weighting": "row_equal"})


def test_sv_t_reaches_the_margin_config() -> None:
    config = load_config(None, {"head.margin": "svsoftmax", "head.sv_t": "1.5", "head.m": "0.3",
                                "head.s": "40"})
    margin = config.head.margin_config()
    assert margin == heads.MarginConfig(kind="svsoftmax", margin=0.3, scale=40.0, sv_t=1.5)
    # The value changes the logits of a hard negative: t·cos + t − 1, scaled.
    cos = torch.tensor([[0.5, 0.45]])
    target = torch.tensor([0])
    logits = heads.margin_logits(cos, target, margin)
    assert math.isclose(float(logits[0, 1]), 40.0 * (1.5 * 0.45 + 0.5), rel_tol=1e-6)


def test_head_and_margin_names_come_from_heads() -> None:
    hints = typing.get_type_hints(HeadConfig)
    assert hints["name"] is heads.HeadName
    assert hints["margin"] is heads.MarginKind
    assert "loss_weighting" not in hints and not hasattr(heads, "LossWeighting")


# ------------------------------------------------------------------ layering


def test_dotted_helpers_and_merge() -> None:
    values: dict[str, Any] = {"a": {"b": 1}}
    set_dotted(values, "a.c.d", 2)
    assert values == {"a": {"b": 1, "c": {"d": 2}}} and get_dotted(values, "a.c.d") == 2
    merged = merge_dicts({"a": {"b": 1, "c": [1]}, "x": 0}, {"a": {"c": [2]}, "y": 3})
    assert merged == {"a": {"b": 1, "c": [2]}, "x": 0, "y": 3}


def test_layer_precedence() -> None:
    preset = {"optim.lr": 0.2, "train.epochs": 4, "train.log_every": 3}
    file_values = {"optim": {"lr": 0.3}, "train": {"epochs": 5}}
    config = resolve_config(file_values, {"optim.lr": "0.4"}, preset=preset)
    assert config.optim.lr == 0.4  # override > file
    assert config.train.epochs == 5  # file > preset
    assert config.train.log_every == 3  # preset > defaults
    assert config.train.batch_size == Config().train.batch_size
    # A data source anywhere turns the preset off.
    with_file_data = resolve_config({"data": {"sources": [{"lmdb": "a", "kv": "b"}]}},
                                    preset=preset)
    with_option_data = resolve_config(None, {"data.sources": [{"lmdb": "a", "kv": "b"}]},
                                      preset=preset)
    for config in (with_file_data, with_option_data):
        assert config.train.log_every == Config().train.log_every
    # A base (a checkpoint's config) replaces defaults and preset alike.
    base = Config().to_dict()
    base["train"]["log_every"] = 7
    config = resolve_config(file_values, {"optim.lr": "0.4"}, base=base, preset=preset)
    assert config.train.log_every == 7 and config.train.epochs == 5 and config.optim.lr == 0.4


def test_a_base_without_the_new_keys_takes_their_defaults() -> None:
    old = Config().to_dict()
    for section, key in [("model", "init_from"), ("model", "init_net"), ("head", "sv_t"),
                         ("optim", "clip_grad_norm"),
                         ("train", "tensorboard")]:
        del old[section][key]
    config = resolve_config(base=old)
    assert config == Config()


def test_a_bad_base_names_its_source() -> None:
    with pytest.raises(ConfigError, match="ckpt.pt: saved config.*optim.lrr"):
        resolve_config(base={"optim": {"lrr": 1}}, base_source="ckpt.pt: saved config")


# ------------------------------------------------------------------ input paths


def test_check_inputs_names_every_missing_path(tmp_path: Path) -> None:
    lmdb = tmp_path / "train.lmdb"
    lmdb.mkdir()
    kv = tmp_path / "train.kv"
    kv.write_text("a 0\n")
    config = Config()
    config.data.sources = [DataSource(str(lmdb), str(kv))]
    check_inputs(config)  # all present
    config.train.eval_pairs = str(tmp_path / "pairs.txt")
    config.model.init_from = str(tmp_path / "w.pt")
    config.data.sources.append(DataSource(str(tmp_path / "b.lmdb"), str(lmdb)))
    with pytest.raises(ConfigError) as info:
        check_inputs(config)
    message = str(info.value)
    assert f"data.sources[1].lmdb: training db not found: {tmp_path / 'b.lmdb'}" in message
    assert f"data.sources[1].kv: kv file is not a file: {lmdb}" in message
    assert f"train.eval_pairs: pairs file not found: {tmp_path / 'pairs.txt'}" in message
    assert f"model.init_from: weights file not found: {tmp_path / 'w.pt'}" in message
    assert "data.sources[0]" not in message
