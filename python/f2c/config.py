"""Training configuration: typed dataclasses, YAML/TOML files, command-line overrides.

A configuration has five sections — ``data``, ``model``, ``head``, ``optim``, ``train`` — each a
dataclass below. Values come in layers, lowest priority first (:func:`resolve_config`):

1. the dataclass defaults (the paper's recipe) — or, on resume, the checkpoint's saved config,
   over the defaults, so keys added since the checkpoint was written take their defaults;
2. a preset of dotted keys (the embedded default job) when no layer names a data source and
   there is no checkpoint;
3. a config file (``.yaml``/``.yml``, ``.toml`` or ``.json``);
4. command-line overrides ``--section.key VALUE`` (``--optim.lr 0.05``, ``--head.name fc``,
   ``--optim.milestones 8,14,17``).

Unknown keys, values of the wrong type and values out of range (:data:`RANGES`) are
:class:`ConfigError` s that name the key and where it came from. :func:`check_inputs` checks
that every input path the config names exists, before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from f2c.cli import UserError
from f2c.heads.margins import MarginConfig
from f2c.heads.names import HeadName, MarginKind

__all__ = [
    "RANGES",
    "REMOVED_KEYS",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataSource",
    "HeadConfig",
    "ModelConfig",
    "OptimConfig",
    "Range",
    "SyntheticConfig",
    "TrainConfig",
    "apply_overrides",
    "check_inputs",
    "config_from_dict",
    "get_dotted",
    "is_optional",
    "load_config",
    "load_config_file",
    "merge_dicts",
    "override_keys",
    "resolve_config",
    "save_config",
    "set_dotted",
    "type_name",
]

Schedule = Literal["multistep", "cosine"]
Amp = Literal["none", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
InitNet = Literal["probe", "gallery"]


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


@dataclass
class DataSource:
    """One training source: ``path`` — a packed db folder, an LMDB with its kv file beside it,
    a RecordIO ``.rec`` (its ``.idx`` beside it) or a folder holding ``train.rec`` — or an
    LMDB directory ``lmdb`` and its ``key label`` kv file ``kv``. In a config file an entry may
    be the path alone (see ``f2c.data.resolve_data_path``)."""

    lmdb: str | None = None
    kv: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        pair = self.lmdb is not None and self.kv is not None
        if (self.path is None) != pair or (self.path is not None and (self.lmdb or self.kv)):
            raise TypeError("a data source needs `path`, or `lmdb` and `kv`")


@dataclass
class SyntheticConfig:
    """The synthetic dataset built (once, cached) when ``data.sources`` is empty."""

    num_identities: int = 800
    images_per_identity: int = 12
    num_test_identities: int = 200  # at least 20: 2 per fold, 10 folds
    pairs_per_fold: int = 200  # even; 10 folds: 2,000 held-out pairs
    # A multiple of 16, at least 32: every backbone halves the input four times. Small for the
    # CPU default job.
    image_size: int = 48
    seed: int = 0
    # None: $F2C_CACHE, else ~/.cache/f2c.
    cache_dir: str | None = None


@dataclass
class DataConfig:
    # Several sources are combined with label offsets, in order. Empty: the synthetic dataset.
    sources: list[DataSource] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # 0: each loader reads in the training process on one read-ahead thread (the Rust reader
    # decodes on all cores without the GIL, and no batch crosses a process boundary). N > 0:
    # DataLoader worker processes, split between the two loaders (instance gets the odd one);
    # each batch then goes through shared memory.
    workers: int = 0
    # Batches each loader keeps ready: per worker (DataLoader prefetch_factor), or per
    # read-ahead thread.
    prefetch: int = 2


@dataclass
class ModelConfig:
    backbone: str = "mobilefacenet"
    embedding_size: int = 512
    # Weights to start from (a training checkpoint); None: a fresh initialisation. Unlike
    # --resume, only the network weights are taken, not the head, optimiser or step.
    init_from: str | None = None
    # Which of the checkpoint's two networks init_from loads: the trained probe or its EMA
    # copy, the gallery.
    init_net: InitNet = "probe"


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
    # SV-softmax only: hard negatives are re-weighted to s·(t·cos + t − 1); t = 1 is CosFace.
    sv_t: float = 1.2
    ema_momentum: float = 0.99
    # partial_fc: share of the negative class centres sampled per step.
    sample_rate: float = 0.1

    def margin_config(self) -> MarginConfig:
        """The margin these settings describe, as the heads take it."""
        return MarginConfig(kind=self.margin, margin=self.m, scale=self.s, sv_t=self.sv_t)


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: Schedule = "multistep"
    # Epochs (fractions allowed) at which multistep multiplies the lr by gamma.
    milestones: list[float] = field(default_factory=lambda: [8.0, 14.0, 17.0])
    # In (0, 1]: a step decay. 0 or less would stop or reverse training; above 1 would raise
    # the lr at every milestone, which no schedule here intends.
    gamma: float = 0.1
    # Linear warm-up from 0 over this many epochs (fractions allowed).
    warmup_epochs: float = 0.0
    # Cosine schedule floor, in [0, lr].
    min_lr: float = 0.0
    # Clip the gradient norm of all trained parameters to this before each step (None: off).
    clip_grad_norm: float | None = None


@dataclass
class TrainConfig:
    batch_size: int = 64  # per rank, instance loader; the identity loader gives as many ids
    epochs: int = 19
    # Stop after this many steps in total (None: run all epochs); for smoke tests.
    max_steps: int | None = None
    amp: Amp = "none"
    compile: bool = False
    seed: int = 0  # in [0, 2**32): numpy's legacy seed range
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
    # TensorBoard event files in the run folder, when the tensorboard package is installed.
    tensorboard: bool = True


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: ``low``/``high`` bounds, open or closed, and a step."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    multiple_of: int | None = None

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        ):
            return False
        return self.multiple_of is None or value % self.multiple_of == 0

    def describe(self) -> str:
        """``"in [0, 1)"``, ``">= 1"``, ``"a multiple of 16, >= 32"``."""
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = "finite"
        if self.multiple_of == 2:
            return f"even, {text}"
        if self.multiple_of is not None:
            return f"a multiple of {self.multiple_of}, {text}"
        return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(x)


_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_AT_LEAST_ONE = Range(1)
_FRACTION = Range(0, 1, low_open=True)  # (0, 1]
_MOMENTUM = Range(0, 1, high_open=True)  # [0, 1)
_SEED = Range(0, 2**32, high_open=True)

# The range of every numeric key (list keys: of each item). Cross-field rules (min_lr <= lr,
# increasing milestones, the ArcFace margin, pool_size xor pool_ratio) are in Config.validate.
RANGES: dict[str, Range] = {
    "data.synthetic.num_identities": _AT_LEAST_ONE,
    "data.synthetic.images_per_identity": _AT_LEAST_ONE,
    "data.synthetic.num_test_identities": Range(20),  # 2 per fold, 10 folds
    "data.synthetic.pairs_per_fold": Range(2, multiple_of=2),  # half same, half different
    "data.synthetic.image_size": Range(32, multiple_of=16),
    "data.synthetic.seed": _SEED,
    "data.workers": _NON_NEGATIVE,
    "data.prefetch": _AT_LEAST_ONE,
    "model.embedding_size": _AT_LEAST_ONE,
    "head.pool_size": _AT_LEAST_ONE,
    "head.pool_ratio": _FRACTION,
    # CosFace/SV-softmax subtract m from a cosine in [-1, 1]: beyond 2 nothing is left to
    # separate. ArcFace is bounded tighter in Config.validate.
    "head.m": Range(0, 2, high_open=True),
    "head.s": _POSITIVE,
    "head.sv_t": Range(1),
    "head.ema_momentum": _MOMENTUM,
    "head.sample_rate": _FRACTION,
    "optim.lr": _POSITIVE,
    "optim.momentum": _MOMENTUM,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.milestones": _NON_NEGATIVE,
    "optim.gamma": _FRACTION,
    "optim.warmup_epochs": _NON_NEGATIVE,
    "optim.min_lr": _NON_NEGATIVE,
    "optim.clip_grad_norm": _POSITIVE,
    "train.batch_size": Range(2, multiple_of=2),  # F²C splits each batch in halves
    "train.epochs": _AT_LEAST_ONE,
    "train.max_steps": _AT_LEAST_ONE,
    "train.seed": _SEED,
    "train.threads": _AT_LEAST_ONE,
    "train.checkpoint_every": _NON_NEGATIVE,  # 0: only after each epoch
    "train.log_every": _AT_LEAST_ONE,
    "train.eval_batch_size": _AT_LEAST_ONE,
}

# ArcFace adds m to the angle: from pi/2 on, even a perfect match's target logit s·cos(m) is
# no longer positive.
ARCFACE_MAX_MARGIN = math.pi / 2


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
        """Every numeric key within its :data:`RANGES` entry, then the cross-field rules."""
        values = self.to_dict()
        for key, allowed in RANGES.items():
            value = get_dotted(values, key)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if item is not None and item not in allowed:
                    where = f"{key}[{i}]" if isinstance(value, list) else key
                    raise ConfigError(f"{where} must be {allowed.describe()}, got {item!r}")
        from f2c import models  # torch-only import; here so that a bad name fails before work

        checks: list[tuple[bool, str]] = [
            (self.model.backbone in models.available(),
             f"model.backbone must be one of {models.available()}, got {self.model.backbone!r}"),
            (self.head.pool_size is None or self.head.pool_ratio is None,
             "give head.pool_size or head.pool_ratio, not both"),
            (self.head.margin != "arcface" or self.head.m < ARCFACE_MAX_MARGIN,
             f"head.m must be < pi/2 (~{ARCFACE_MAX_MARGIN:.4f}) with head.margin arcface, "
             f"got {self.head.m}"),
            (self.optim.min_lr <= self.optim.lr,
             f"optim.min_lr must be in [0, optim.lr = {self.optim.lr}], "
             f"got {self.optim.min_lr}"),
            (sorted(self.optim.milestones) == list(self.optim.milestones),
             f"optim.milestones must be increasing, got {self.optim.milestones}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.head.margin_config()
        except ValueError as exc:  # the ranges above should make this unreachable
            raise ConfigError(f"head: {exc}") from exc


def check_inputs(config: Config) -> None:
    """Refuse a config whose input files are missing, naming each key and path.

    Called before any work (data preparation, model building), so that a typo in a path is
    not found an epoch later.
    """
    wanted: list[tuple[str, str | None, str, bool]] = []
    problems = []
    for i, source in enumerate(config.data.sources):
        wanted.append((f"data.sources[{i}].lmdb", source.lmdb, "training db", False))
        wanted.append((f"data.sources[{i}].kv", source.kv, "kv file", True))
        wanted.append((f"data.sources[{i}].path", source.path, "training data", False))
    wanted.append(("train.eval_pairs", config.train.eval_pairs, "pairs file", True))
    wanted.append(("model.init_from", config.model.init_from, "weights file", True))
    for key, path, what, must_be_file in wanted:
        if path is None:
            continue
        p = Path(path).expanduser()
        if not p.exists():
            problems.append(f"{key}: {what} not found: {path}")
        elif must_be_file and not p.is_file():
            problems.append(f"{key}: {what} is not a file: {path}")
        elif key.endswith("].path"):
            from f2c.data.sources import resolve_data_path

            try:
                resolve_data_path(p)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))


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


def is_optional(tp: Any) -> tuple[bool, Any]:
    """``(True, T)`` for ``T | None``, else ``(False, tp)``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def type_name(tp: Any) -> str:
    """A field type as a user reads it: ``"int or null"``, ``"list of float"``, choices."""
    optional, inner = is_optional(tp)
    if optional:
        return f"{type_name(inner)} or null"
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` (already parsed: from YAML/TOML or ``_parse_string``) against ``tp``."""
    optional, inner = is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: '{where}': null is not allowed (expected {type_name(tp)})")
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
        if tp is DataSource and isinstance(value, str):
            return DataSource(path=value)  # a source given as its path alone
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


# Keys that configs and checkpoints written before their removal may still carry: the one value
# that means today's behaviour is accepted and dropped; any other is refused with the reason.
REMOVED_KEYS: dict[str, tuple[str, str]] = {
    "head.loss_weighting": (
        "paper",
        "was removed: the F²C loss always takes the paper's weighting (cross-entropy mean over "
        "in-pool rows plus outlier-loss mean over outlier rows). 'row_equal' was measured "
        "against it at a 1% pool (benches/results/one-percent-2026-12-01.md: 87.60% ± 1.56 vs "
        "87.83% ± 1.32) and was not better; delete the key",
    ),
}


def _check_removed(key: str, value: Any, source: str) -> None:
    """Accept a removed key only with the value that meant today's behaviour."""
    kept, reason = REMOVED_KEYS[key]
    if value != kept:
        raise ConfigError(f"{source}: '{key}' {reason} (got {value!r})")


def _build(cls: type, values: Any, where: str, source: str) -> Any:
    """Build dataclass ``cls`` at dotted position ``where`` from a plain mapping."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping of keys, got {values!r}")
    values = dict(values)
    for key in [k for k in values if f"{where}.{k}" in REMOVED_KEYS]:
        _check_removed(f"{where}.{key}", values.pop(key), source)
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
    except TypeError as exc:  # a required field is missing, or a DataSource is incomplete
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
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults ← file at ``path`` ← ``overrides`` (``"section.key" -> string value``)."""
    file_values = load_config_file(path) if path is not None else None
    return resolve_config(file_values, overrides, file_source=str(path) if path else "config")


def resolve_config(
    file_values: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    base_source: str = "checkpoint config",
    preset: Mapping[str, Any] | None = None,
    file_source: str = "config",
) -> Config:
    """Layer a configuration, lowest priority first, and validate it.

    ``base``: a saved config dict (a checkpoint's) instead of the dataclass defaults; keys it
    lacks take their defaults. ``preset`` (``"section.key" -> value``): applied over the
    defaults only when there is no ``base`` and neither ``file_values`` nor ``overrides`` give
    ``data.sources`` — the embedded default job. ``file_values``: a parsed config file.
    ``overrides``: ``"section.key" -> str`` (parsed by the field's type) or a typed value,
    ``"data.sources"`` a list of ``{"path"}`` or ``{"lmdb", "kv"}`` mappings (or paths).
    """
    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    if base is not None:
        start = config_from_dict(dict(base), base_source).to_dict()
    else:
        start = Config().to_dict()
        file_data = file_values.get("data")
        file_sources = file_data.get("sources") if isinstance(file_data, dict) else None
        if preset and not file_sources and "data.sources" not in overrides:
            for key, value in preset.items():
                set_dotted(start, key, value)
    config = config_from_dict(merge_dicts(start, file_values), file_source)
    if overrides:
        config = apply_overrides(config, overrides)
    config.validate()
    return config


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """``values["a"]["b"] = value`` for ``key == "a.b"``, creating missing levels."""
    node = values
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def get_dotted(values: Mapping[str, Any], key: str) -> Any:
    """``values["a"]["b"]`` for ``key == "a.b"``."""
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


def merge_dicts(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` laid over it; nested mappings merge, anything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Command-line overrides: "section.key" -> string.


def _parse_string(text: str, tp: Any, where: str) -> Any:
    optional, inner = is_optional(tp)
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
            _, inner = is_optional(tp)
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


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Return a copy of ``config`` with ``overrides`` (``"a.b" -> str`` or typed value)."""
    values = config.to_dict()
    keys = override_keys()
    for key, raw in overrides.items():
        if key == "data.sources":
            values["data"]["sources"] = raw
            continue
        if key in REMOVED_KEYS:
            _check_removed(key, raw, "command line")
            continue
        if key not in keys:
            raise ConfigError(f"unknown option --{key} (see --help for the list)")
        value = _parse_string(raw, keys[key], f"--{key}") if isinstance(raw, str) else raw
        set_dotted(values, key, value)
    return config_from_dict(values, "command line")


def save_config(config: Config, run_dir: str | os.PathLike[str]) -> Path:
    """Write the resolved configuration as ``config.yaml`` into ``run_dir``."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path
