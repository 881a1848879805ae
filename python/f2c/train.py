"""``python -m f2c.train``: train a face-recognition model with F²C (or an FC baseline).

One process on a CPU or one GPU, or ``torchrun --nproc-per-node N -m f2c.train ...`` for DDP
(nccl on GPU, gloo on CPU). With no data sources it runs the embedded default job on synthetic
identities (see ``f2c.training.default_job``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from f2c.cli import UserError, add_debug_option, is_user_error, run_cli
from f2c.config import (
    RANGES,
    REMOVED_KEYS,
    Config,
    ConfigError,
    DataSource,
    check_inputs,
    get_dotted,
    is_optional,
    load_config_file,
    override_keys,
    resolve_config,
    type_name,
)
from f2c.training.checkpoint import CheckpointError, load_checkpoint
from f2c.training.default_job import DEFAULT_JOB, prepare_synthetic
from f2c.training.run import RunPlan, plan_run, print_summary, run_training
from f2c.training.runtime import Runtime, init_runtime, shutdown_runtime

__all__ = ["PROG", "build_config", "build_parser", "main"]

PROG = "python -m f2c.train"

# Short spellings of the most used options.
SHORTCUTS = {
    "head": "head.name",
    "backbone": "model.backbone",
    "epochs": "train.epochs",
    "batch-size": "train.batch_size",
    "lr": "optim.lr",
    "name": "train.name",
    "out-dir": "train.out_dir",
    "device": "train.device",
    "workers": "data.workers",
    "seed": "train.seed",
    "threads": "train.threads",
    "eval-pairs": "train.eval_pairs",
}

DESCRIPTION = """\
Train a face-recognition model with the F²C dynamic class pool (or an fc / partial_fc baseline).

Configuration, lowest priority first: built-in defaults (the paper's recipe); with no data
source, the embedded default job (synthetic identities, CPU-sized); a config file (YAML/TOML,
sections data/model/head/optim/train); then command-line options. Every setting is an option
--SECTION.KEY VALUE, e.g. --optim.lr 0.05 --head.name fc --optim.milestones 8,14,17
--train.max_steps none. Lists are comma-separated; null/none clears an optional value.

Outputs go to <train.out_dir>/<train.name>/: config.yaml, checkpoint.pt (atomic, every
train.checkpoint_every steps and each epoch), metrics.jsonl/.csv, metrics.png, summary.json.
Re-running into an unfinished run folder continues it exactly; --resume RUN continues a given run.

Mistakes in options, files or inputs print one line and exit with status 2 before any work
(--debug or F2C_DEBUG=1 shows the traceback).
"""

EXAMPLES = """\
examples:
  python -m f2c.train                                  # embedded default job (CPU, synthetic)
  python -m f2c.train --head fc                        # same data and budget, FC baseline
  python -m f2c.train run.yaml --optim.lr 0.05         # config file plus an override
  python -m f2c.train --data a.lmdb a.kv --data b.lmdb b.kv --eval-pairs lfw/pairs.txt
  python -m f2c.train --data ms1m-retinaface-t1/train.rec  # RecordIO, read in place
  torchrun --nproc-per-node 8 -m f2c.train run.yaml    # DDP on one node
  python -m f2c.train --resume runs/f2c-ir50           # continue a run
"""


def _parse_any(text: str) -> str:
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("config_file", nargs="?", help="YAML or TOML config file")
    parser.add_argument("--config", dest="config_flag", metavar="FILE",
                        help="config file (same as the positional argument)")
    parser.add_argument("--data", nargs="+", action="append", metavar="PATH",
                        help="training data: a packed db folder, a RecordIO .rec (its .idx "
                             "beside it) or a folder holding train.rec, an LMDB with its kv "
                             "file beside it, or LMDB KV as two paths; repeat to combine "
                             "several (labels are offset in order)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or "
                        "from this checkpoint file); its saved config is the base")
    parser.add_argument("--fresh", action="store_true",
                        help="start over in the run folder, replacing a previous run there")
    add_debug_option(parser)
    short = parser.add_argument_group("shortcuts")
    for flag, key in SHORTCUTS.items():
        short.add_argument(f"--{flag}", dest=key, metavar="VALUE", type=_parse_any,
                           default=argparse.SUPPRESS, help=f"= --{key}")
    full = parser.add_argument_group("settings (--SECTION.KEY VALUE)")
    defaults = Config().to_dict()
    for key, tp in override_keys().items():
        _, inner = is_optional(tp)
        metavar = "LIST" if typing.get_origin(inner) is list else inner.__name__.upper() if \
            isinstance(inner, type) else "VALUE"
        allowed = f", {RANGES[key].describe()}" if key in RANGES else ""
        full.add_argument(f"--{key}", dest=key, metavar=metavar, type=_parse_any,
                          default=argparse.SUPPRESS,
                          help=f"{type_name(tp)}{allowed}; default {get_dotted(defaults, key)!r}")
    for key in REMOVED_KEYS:  # hidden: resolve_config says why an old command line fails
        parser.add_argument(f"--{key}", dest=key, type=_parse_any, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
    return parser


def build_config(args: argparse.Namespace) -> tuple[Config, bool]:
    """Layer defaults, default job, checkpoint, file and options; returns (config, auto_named).

    The layering itself is ``f2c.config.resolve_config``; this only gathers its inputs.
    """
    if args.config_file and args.config_flag:
        raise ConfigError("give the config file once (positional or --config)")
    path = args.config_file or args.config_flag
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if "." in k}
    if args.data:
        if any(len(paths) > 2 for paths in args.data):
            raise ConfigError("--data takes one path, or an LMDB and its kv file")
        overrides["data.sources"] = [
            {"path": paths[0]} if len(paths) == 1 else {"lmdb": paths[0], "kv": paths[1]}
            for paths in args.data
        ]
    resume_file = _checkpoint_file(args.resume) if args.resume else None
    config = resolve_config(
        load_config_file(path) if path else None,
        overrides,
        base=_saved_config(resume_file) if resume_file else None,
        base_source=f"{resume_file}: saved config",
        preset=DEFAULT_JOB,
        file_source=str(path) if path else "config",
    )
    return config, config.train.name is None


def _saved_config(checkpoint: str) -> Any:
    """The config a checkpoint was trained with (the base of a resumed run's config). The rest
    of the checkpoint is validated when the run loads it."""
    state = load_checkpoint(checkpoint)
    if "config" not in state:
        raise CheckpointError(
            f"{checkpoint}: no 'config' section (an incomplete or foreign checkpoint)"
        )
    return state["config"]


def _checkpoint_file(resume: str) -> str:
    from pathlib import Path

    from f2c.training.run import CHECKPOINT_NAME

    p = Path(resume)
    return str(p / CHECKPOINT_NAME) if p.is_dir() else str(p)


def _prepare_data(config: Config, runtime: Runtime) -> tuple[list[DataSource], str | None,
                                                               float | None]:
    if config.data.sources:
        pixel = None
        if config.train.eval_pairs is not None and runtime.is_main:
            pixel = _pixel_baseline(config.train.eval_pairs)
        return list(config.data.sources), config.train.eval_pairs, pixel
    synthetic = prepare_synthetic(config, runtime)
    pairs = config.train.eval_pairs or synthetic.pairs_path
    pixel = synthetic.pixel_baseline_accuracy if pairs == synthetic.pairs_path else None
    return [synthetic.source], pairs, pixel


def _pixel_baseline(pairs_path: str) -> float | None:
    """Raw-pixel cosine accuracy on a pairs file (None for formats it does not read)."""
    from f2c.data.synthetic import pixel_cosine_accuracy

    if pairs_path.endswith(".bin"):
        return None
    return float(pixel_cosine_accuracy(pairs_path))


def _agree_on_plan(runtime: Runtime, plan: RunPlan | None) -> RunPlan:
    """Rank 0 decides where to write and whether to resume; the others follow."""
    if not runtime.distributed:
        assert plan is not None
        return plan
    box = [plan]
    dist.broadcast_object_list(box, src=0)
    assert box[0] is not None
    return box[0]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m f2c.train``: 0 when training finished; user errors print one line, return 2."""
    return run_cli(PROG, _train, argv)


def _train(argv: list[str]) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    config, auto_named = build_config(args)
    check_inputs(config)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    runtime = init_runtime(config.train.device)
    try:
        random.seed(config.train.seed)
        np.random.seed(config.train.seed)  # noqa: NPY002  # seed the legacy global too
        plan = None
        if runtime.is_main:
            plan = plan_run(config, resume=args.resume, fresh=args.fresh, auto_named=auto_named)
        plan = _agree_on_plan(runtime, plan)
        sources, pairs, pixel = _prepare_data(config, runtime)
        if runtime.is_main:
            where = "the embedded synthetic default job" if not config.data.sources else \
                ", ".join(str(s.path or s.lmdb) for s in sources)
            print(f"f2c.train: {config.head.name} head, {config.model.backbone}, "
                  f"{runtime.world_size} process(es) on {runtime.device}, data: {where}; "
                  f"run folder {plan.run_dir}", file=sys.stderr, flush=True)
        summary = run_training(config, runtime, plan, sources=sources, eval_pairs=pairs,
                               pixel_baseline=pixel, started=started)
        if runtime.is_main:
            print_summary(summary)
        return 0
    except Exception as exc:
        if runtime.distributed and is_user_error(exc):  # say which rank hit it
            raise UserError(f"(rank {runtime.rank}) {exc}") from exc
        raise
    finally:
        shutdown_runtime(runtime)


if __name__ == "__main__":
    sys.exit(main())
