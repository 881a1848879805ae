"""MegaFace from stored features (no network): stream a distractor .npy from disk.

    python evaluation/eval_megaface_features.py --probes P.npy --probe-ids IDS.txt \
        --distractors D.npy [--distractor-list NAME] [--ranks 10] [--tile 8192] --out DIR

P.npy / D.npy are float32 [N, D] raw features (L2-normalised here); D.npy is memory-mapped,
so a 1M x 512 gallery streams without a copy beyond the normalised tiles. IDS.txt has one
identity per probe row. Writes DIR/results.csv and DIR/results.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from f2c.evaluation.megaface import megaface_evaluate
from f2c.evaluation.report import ResultTable, write_csv, write_markdown


class _NormalisedRows:
    """Row-normalises tiles of a (memory-mapped) array as they are read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, sl: slice) -> np.ndarray:
        block = np.asarray(self.array[sl], dtype=np.float32)
        return block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probes", type=Path, required=True)
    p.add_argument("--probe-ids", type=Path, required=True)
    p.add_argument("--distractors", type=Path, required=True)
    p.add_argument("--distractor-list", default=None,
                   help="what the report names as the distractor list (default: file name)")
    p.add_argument("--name", default="features")
    p.add_argument("--ranks", type=int, default=10)
    p.add_argument("--tile", type=int, default=8192)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    probes = np.load(a.probes).astype(np.float32)
    probes /= np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)
    ids = [ln.strip() for ln in a.probe_ids.read_text().splitlines() if ln.strip()]
    dis = np.load(a.distractors, mmap_mode="r")
    listed = a.distractor_list or f"{a.distractors.name} ({len(dis)} rows)"
    r = megaface_evaluate(probes, np.asarray(ids), _NormalisedRows(dis),  # type: ignore[arg-type]
                          ranks=a.ranks, tile=a.tile, distractor_list=listed)
    t = ResultTable()
    common = dict(model=a.name, benchmark="megaface", data=f"distractors {listed}")
    t.add(metric="rank1", value=r.rank1, n=r.probe_pairs, protocol="official", **common)
    for far, tar in r.tar_at_far.items():
        t.add(metric=f"tar@far={far:.0e}", value=tar, n=r.genuine_pairs, protocol="exact",
              **common)
    df = t.frame()
    write_csv(df, a.out / "results.csv")
    write_markdown(df, a.out / "results.md")
    print((a.out / "results.md").read_text(), end="")


if __name__ == "__main__":
    main()
