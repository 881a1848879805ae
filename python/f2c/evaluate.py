"""Evaluate a checkpoint on face-recognition benchmarks; results as CSV + Markdown tables.

    python -m f2c.evaluate --checkpoint run/checkpoint.pt \\
        --benchmark lfw=data/lfw.bin --benchmark cfp_fp=data/cfp_fp.bin \\
        --benchmark ytf=data/ytf --benchmark ijbc=data/IJBC --benchmark megaface=data/megaface \\
        --out eval/

Benchmarks (``NAME=PATH``): ``lfw``, ``sllfw``, ``cplfw``, ``calfw``, ``cfp_fp``, ``cfp_ff``,
``agedb_30`` (a ``.bin`` pack or a pairs file; protocol fold sizes are enforced), ``pairs`` (any
pairs file / ``.bin`` with 10 equal folds), ``ytf``, ``ijbc`` and ``ijbb`` (1:1), ``ijbc_1n``
and ``ijbb_1n``, ``megaface`` (folders; layouts in ``evaluation/README.md``). Unknown names are
refused. Each name is a kind in :data:`f2c.evaluation.benchmarks.BENCHMARKS`.

Writes ``<out>/results.csv`` and ``<out>/results.md`` (rows for the same model, benchmark and
metric are replaced, others kept, so several checkpoints can share one table),
``<out>/roc_<benchmark>.png`` and ``<out>/features/<benchmark>*.npy|json`` (re-used by later
runs with the same checkpoint, flip and images). Checkpoints are read with
``torch.load(weights_only=True)``; nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from f2c.cli import UserError, add_debug_option, positive_int, run_cli
from f2c.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkOptions,
    add_rows,
    benchmark_kind,
    run_kind,
)
from f2c.evaluation.features import Embedder
from f2c.evaluation.report import ResultTable, plot_roc, write_results
from f2c.models.loading import (  # the one model-loading route (re-exported here)
    LoadedModel,
    create_model,
    load_checkpoint_model,
)

__all__ = ["LoadedModel", "create_model", "load_checkpoint_model", "main", "run", "run_benchmark"]

PROG = "python -m f2c.evaluate"
KINDS = tuple(BENCHMARKS)


# ---------------------------------------------------------------- benchmarks


@dataclass
class RunOptions:
    device: str
    batch_size: int
    flip: bool
    features_dir: Path | None  # the feature store: <features_dir>/<stem>.npy|json
    protocol: BenchmarkOptions


def run_benchmark(
    kind: str,
    path: Path,
    model: LoadedModel,
    name: str,
    table: ResultTable,
    opts: RunOptions,
    out: Path,
) -> None:
    """Evaluate one benchmark (a kind of :data:`f2c.evaluation.benchmarks.BENCHMARKS`) and
    append its rows to ``table``."""
    spec = benchmark_kind(kind)
    embedder = Embedder(model.module, model.model_id, opts.flip, opts.device, opts.batch_size,
                        opts.protocol.image_size)
    loaded, result = run_kind(spec, path, embedder, opts.protocol, opts.features_dir)
    add_rows(table, spec, loaded, result, opts.protocol, model=name, flip=opts.flip)
    if spec.roc_title is not None:
        fpr, tpr = result["roc"]
        plot_roc({name: (fpr, tpr)}, out / f"roc_{loaded.benchmark}.png", title=spec.roc_title,
                 fars=list(result["tar@far"]))


def _parse_benchmarks(items: Sequence[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        kind, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--benchmark expects NAME=PATH, got {item!r}")
        try:
            name = benchmark_kind(kind).name
        except KeyError as e:
            raise UserError(f"{e.args[0]} (in {item!r})") from None
        if not Path(path).exists():
            raise UserError(f"benchmark {name}: {path} does not exist")
        out.append((name, Path(path)))
    return out



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--benchmark", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--net", choices=("probe", "gallery"), default="probe",
                   help="which network of the checkpoint to evaluate (default: probe)")
    p.add_argument("--model", help="backbone name, if the checkpoint does not record it")
    p.add_argument("--embedding-size", type=positive_int)
    p.add_argument("--name", help="model name in the results (default: <checkpoint stem>/<net>)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="disable flip-sum test-time augmentation")
    p.add_argument("--image-size", type=positive_int,
                   help="resize square crops to this size (default: the backbone's input size)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="do not read or write <out>/features")
    p.add_argument("--ranks", type=positive_int, default=10, help="MegaFace CMC up to this rank")
    p.add_argument("--tile", type=positive_int, default=8192, help="MegaFace distractors per tile")
    p.add_argument("--ijb-normalize-images", "--ijbc-normalize-images",
                   dest="ijb_normalize_images", action="store_true",
                   help="L2-normalise IJB-B/C image features before pooling")
    p.add_argument("--ijb-no-detector-scores", "--ijbc-no-detector-scores",
                   dest="ijb_detector_scores", action="store_false",
                   help="do not weight IJB-B/C images by the detector scores of "
                   "meta/ijb?_name_5pts_score.txt")
    add_debug_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m f2c.evaluate``: 0 when every benchmark ran; a user error (a malformed input,
    a missing file, a bad option) prints one line and returns 2 (``--debug``: the traceback)."""
    return run_cli(PROG, _run_status, argv)


def _run_status(argv: list[str]) -> int:
    run(argv)
    return 0


def run(argv: Sequence[str] | None = None) -> pl.DataFrame:
    """Parse ``argv`` as the command line does, evaluate, and return the merged results table;
    errors are raised, not printed."""
    args = build_parser().parse_args(argv)
    benchmarks = _parse_benchmarks(args.benchmark)
    model = load_checkpoint_model(args.checkpoint, net=args.net, backbone=args.model,
                                  embedding_size=args.embedding_size, device=args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    opts = RunOptions(
        device=args.device, batch_size=args.batch_size, flip=args.flip,
        features_dir=None if args.no_feature_cache else out / "features",
        protocol=BenchmarkOptions(
            image_size=args.image_size or model.image_size, ranks=args.ranks, tile=args.tile,
            device=args.device, ijb_normalize_images=args.ijb_normalize_images,
            ijb_detector_scores=args.ijb_detector_scores,
        ),
    )
    name = args.name or f"{args.checkpoint.stem}/{args.net}"
    table = ResultTable()
    for kind, path in benchmarks:
        run_benchmark(kind, path, model, name, table, opts, out)
    df = write_results(out, table.frame())
    print((out / "results.md").read_text(), end="")
    return df


if __name__ == "__main__":
    sys.exit(main())
