"""Training configuration: typed dataclasses, YAML/TOML files, command-line overrides.

A configuration has five sections — ``data``, ``model``, ``head``, ``optim``, ``train`` — each a
dataclass below. Values come, in increasing priority, from the dataclass defaults, a config file
(``.yaml``/``.yml`` or ``.toml``) and command-line overrides ``--section.key VALUE`` (for example
``--optim.lr 0.05``, ``--head.name fc``, ``--optim.milestones 8,14,17``). Unknown keys and values
of the wrong type are errors that name the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

HeadName = Literal["f2c", "fc", "partial_fc"]
MarginKind = Literal["cosface", "arcface", "svsoftmax"]
Schedule = Literal["multistep", "cosine"]
Amp = Literal["none", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


@dataclass
class DataSource:
    """One training db: an LMDB directory and its ``key label`` kv file."""

    lmdb: str
    kv: str


@dataclass
class SyntheticConfig:
    """The synthetic dataset built (once, cached) when ``data.sources`` is empty."""

    num_identities: int = 800
    images_per_identity: int = 12
    num_test_identities: int = 200
    pairs_per_fold: int = 200  # 10 folds: 2,000 held-out pairs
    image_size: int = 48  # small for the CPU default job (tinyfacenet takes any multiple of 16)
    seed: int = 0
    # None: $F2C_CACHE, else ~/.cache/f2c.
    cache_dir: str | None = None


@dataclass
class DataConfig:
    # Several sources are combined with label offsets, in order. Empty: the synthetic dataset.
    sources: list[DataSource] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # DataLoader worker processes, split between the two loaders (instance gets the odd one).
    # 0 reads in the training process: on a CPU-only machine the Rust reader costs ~1-2% of a
    # step, and workers would compete with the compute threads for the cores.
    workers: int = 2
    # Batches each worker keeps ready (DataLoader prefetch_factor); ignored with 0 workers.
    prefetch: int = 2


@dataclass
class ModelConfig:
    backbone: str = "mobilefacenet"
    embedding_size: int = 512


@dataclass
class HeadConfig:
    name: HeadName = "f2c"
    # F²C pool size Q: give pool_size or pool_ratio (of the number of classes), not both.
    # Neither: 1% of the classes, raised to twice the minimum the batch needs.
    pool_size: int | None = None
    pool_ratio: float | None = None
    margin: MarginKind = "cosface"
    m: float = 0.4
    s: float = 32.0
    ema_momentum: float = 0.99
    # partial_fc: share of the negative class centres sampled per step.
    sample_rate: float = 0.1


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: Schedule = "multistep"
    # Epochs (fractions allowed) at which multistep multiplies the lr by gamma.
    milestones: list[float] = field(default_factory=lambda: [8.0, 14.0, 17.0])
    gamma: float = 0.1
    # Linear warm-up from 0 over this many epochs (fractions allowed).
    warmup_epochs: float = 0.0
    # Cosine schedule floor.
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    batch_size: int = 64  # per rank, instance loader; the identity loader gives as many ids
    epochs: int = 19
    # Stop after this many steps in total (None: run all epochs); for smoke tests.
    max_steps: int | None = None
    amp: Amp = "none"
    compile: bool = False
    seed: int = 0
    device: Device = "auto"
    # torch intra-op CPU threads per process (None: torch's default, one per core). On a busy
    # machine, 1 avoids OpenMP threads waiting on each other while other processes hold the CPUs.
    threads: int | None = None
    out_dir: str = "runs"
    # Run directory name under out_dir; None: "<head>-<backbone>" ("synthetic-<head>").
    name: str | None = None
    checkpoint_every: int = 500  # steps; a checkpoint is also written after every epoch
    log_every: int = 10  # steps between metric rows
    eval_pairs: str | None = None  # held-out pairs file (LFW style); synthetic data brings one
    eval_batch_size: int = 256
    eval_flip: bool = True
    eval_every_epoch: bool = True
    # DDP buffer broadcast each forward; off: ranks sync BN buffers at checkpoints instead.
    broadcast_buffers: bool = False
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML and ``torch.load(weights_only=True)`` safe)."""
        return dataclasses.asdict(self)

    def run_name(self) -> str:
        """``train.name``, else ``<head>-<backbone>`` (``synthetic-<head>`` without data)."""
        if self.train.name:
            return self.train.name
        if not self.data.sources:
            return f"synthetic-{self.head.name}"
        return f"{self.head.name}-{self.model.backbone}"

    def validate(self) -> None:
        """Cross-field checks that a type check cannot express."""
        checks: list[tuple[bool, str]] = [
            (self.train.batch_size >= 2 and self.train.batch_size % 2 == 0,
             "train.batch_size must be an even number >= 2 (F²C splits it in halves)"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (self.train.max_steps is None or self.train.max_steps >= 1,
             "train.max_steps must be >= 1"),
            (self.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
            (self.train.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
            (self.data.workers >= 0, "data.workers must be >= 0"),
            (self.train.threads is None or self.train.threads >= 1, "train.threads must be >= 1"),
            (self.data.prefetch >= 1, "data.prefetch must be >= 1"),
            (self.model.embedding_size >= 1, "model.embedding_size must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
            (0.0 <= self.head.ema_momentum < 1.0, "head.ema_momentum must be in [0, 1)"),
            (0.0 < self.head.sample_rate <= 1.0, "head.sample_rate must be in (0, 1]"),
            (self.head.pool_size is None or self.head.pool_size >= 1,
             "head.pool_size must be >= 1"),
            (self.head.pool_ratio is None or 0.0 < self.head.pool_ratio <= 1.0,
             "head.pool_ratio must be in (0, 1]"),
            (self.head.pool_size is None or self.head.pool_ratio is None,
             "give head.pool_size or head.pool_ratio, not both"),
            (sorted(self.optim.milestones) == list(self.optim.milestones),
             "optim.milestones must be increasing"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "head": HeadConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


# ---------------------------------------------------------------------------------------------
# Typed conversion of plain values (from files or strings) into dataclass fields.


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{_type_name(inner)} or null"
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` (already parsed: from YAML/TOML or ``_parse_string``) against ``tp``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: '{where}': null is not allowed (expected {_type_name(tp)})")
    tp = inner
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            allowed = ", ".join(map(repr, choices))
            raise ConfigError(f"{source}: '{where}': {value!r} is not one of {allowed}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{where}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, where, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{where}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{where}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: '{where}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: '{where}': expected a string, got {value!r}")
    raise ConfigError(f"{source}: '{where}': unsupported field type {tp!r}")  # a bug in this module


def _build(cls: type, values: Any, where: str, source: str) -> Any:
    """Build dataclass ``cls`` at dotted position ``where`` from a plain mapping."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping of keys, got {values!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{where}.{unknown[0]}' (known in {where}: {', '.join(names)})"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}", source) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field (DataSource.lmdb/kv) is missing
        raise ConfigError(f"{source}: '{where}': {exc}") from exc


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a ``Config`` from a nested plain dict; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    unknown = [k for k in values if k not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"{source}: unknown section '{unknown[0]}' (sections: {', '.join(SECTIONS)})"
        )
    sections = {
        name: _build(cls, values.get(name) or {}, name, source) for name, cls in SECTIONS.items()
    }
    return Config(**sections)


def _load_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        raise ConfigError(f"{path}: TOML config files need Python >= 3.11; use YAML") from None
    return tomllib.loads(text)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a ``.yaml``/``.yml``/``.toml``/``.json`` file into a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix in (".yaml", ".yml"):
            values = yaml.safe_load(text)
        elif suffix == ".toml":
            values = _load_toml(text, path)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format {suffix!r} (use .yaml, .toml, .json)")
    except (yaml.YAMLError, ValueError) as exc:  # TOMLDecodeError, JSONDecodeError: ValueError
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, str] | None = None,
) -> Config:
    """Defaults ← file at ``path`` ← ``overrides`` (``"section.key" -> string value``)."""
    values: dict[str, Any] = load_config_file(path) if path is not None else {}
    config = config_from_dict(values, str(path) if path is not None else "config")
    if overrides:
        config = apply_overrides(config, overrides)
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------
# Command-line overrides: "section.key" -> string.


def _parse_string(text: str, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    tp = inner
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        stripped = text.strip().strip("[]")
        parts = [p.strip() for p in stripped.split(",") if p.strip()]
        return [_parse_string(p, item_tp, f"{where}[{i}]") for i, p in enumerate(parts)]
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {text!r}") from None
    return text


def override_keys() -> dict[str, Any]:
    """Every overridable ``section.key`` (scalar and list fields) with its type."""
    keys: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        for name, tp in _hints(cls).items():
            _, inner = _is_optional(tp)
            if dataclasses.is_dataclass(inner):
                for sub, sub_tp in _hints(inner).items():
                    keys[f"{section}.{name}.{sub}"] = sub_tp
            elif typing.get_origin(inner) is list and dataclasses.is_dataclass(
                typing.get_args(inner)[0]
            ):
                continue  # data.sources: given as --data LMDB KV pairs
            else:
                keys[f"{section}.{name}"] = tp
    return keys


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``config`` with ``overrides`` (``"a.b" -> str`` or typed value)."""
    values = config.to_dict()
    keys = override_keys()
    for key, raw in overrides.items():
        if key == "data.sources":
            values["data"]["sources"] = raw
            continue
        if key not in keys:
            raise ConfigError(f"unknown option --{key} (see --help for the list)")
        where = f"--{key}"
        value = _parse_string(raw, keys[key], where) if isinstance(raw, str) else raw
        node = values
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config_from_dict(values, "command line")


def save_config(config: Config, run_dir: str | os.PathLike[str]) -> Path:
    """Write the resolved configuration as ``config.yaml`` into ``run_dir``."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path
