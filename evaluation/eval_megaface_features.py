"""MegaFace from stored features (no network): stream a distractor .npy from disk.

    python evaluation/eval_megaface_features.py --probes P.npy --probe-ids IDS.txt \
        --distractors D.npy [--distractor-list NAME] [--ranks 10] [--tile 8192] --out DIR

P.npy / D.npy are float32 [N, D] raw features (L2-normalised here); D.npy is memory-mapped,
so a 1M x 512 gallery streams without a copy beyond the normalised tiles. IDS.txt has one
identity per probe row. The rows are those of ``python -m f2c.evaluate --benchmark megaface``
(the same kind of ``f2c.evaluation.benchmarks``); they are merged into DIR/results.csv and
DIR/results.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from f2c.cli import add_debug_option, run_cli
from f2c.evaluation.benchmarks import BENCHMARKS, BenchmarkOptions, Loaded, add_rows
from f2c.evaluation.megaface import DEFAULT_TILE, MegaFaceSet
from f2c.evaluation.report import ResultTable, write_results


def main(argv: list[str] | None = None) -> int:
    """0 when done; a user error prints one line and returns 2 (``--debug``: the traceback)."""
    return run_cli("eval_megaface_features.py", _main, argv)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probes", type=Path, required=True)
    p.add_argument("--probe-ids", type=Path, required=True)
    p.add_argument("--distractors", type=Path, required=True)
    p.add_argument("--distractor-list", default=None,
                   help="what the report names as the distractor list (default: file name)")
    p.add_argument("--name", default="features")
    p.add_argument("--ranks", type=int, default=10)
    p.add_argument("--tile", type=int, default=DEFAULT_TILE)
    p.add_argument("--out", type=Path, required=True)
    add_debug_option(p)
    a = p.parse_args(argv)
    probes = np.load(a.probes)
    ids = [ln.strip() for ln in a.probe_ids.read_text().splitlines() if ln.strip()]
    dis = np.load(a.distractors, mmap_mode="r")
    listed = a.distractor_list or f"{a.distractors.name} ({len(dis)} rows)"
    kind = BENCHMARKS["megaface"]
    options = BenchmarkOptions(ranks=a.ranks, tile=a.tile)
    loaded = Loaded(MegaFaceSet([], ids, [], listed), {}, "megaface",
                    f"{a.distractors}: distractors {listed}")
    result = kind.evaluate(loaded, {"megaface_probes": probes, "megaface_distractors": dis},
                           options)
    table = ResultTable()
    add_rows(table, kind, loaded, result, options, model=a.name, flip=None)
    write_results(a.out, table.frame())
    print((a.out / "results.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
