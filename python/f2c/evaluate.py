"""Evaluate a checkpoint on face-recognition benchmarks; results as CSV + Markdown tables.

    python -m f2c.evaluate --checkpoint run/checkpoint.pt \\
        --benchmark lfw=data/lfw.bin --benchmark cfp_fp=data/cfp_fp.bin \\
        --benchmark ytf=data/ytf --benchmark ijbc=data/IJBC --benchmark megaface=data/megaface \\
        --out eval/

Benchmarks (``NAME=PATH``): ``lfw``, ``sllfw``, ``cplfw``, ``calfw``, ``cfp_fp``, ``cfp_ff``,
``agedb_30`` (a ``.bin`` pack or a pairs file; protocol fold sizes are enforced), ``pairs`` (any
pairs file / ``.bin`` with 10 equal folds), ``ytf``, ``ijbc`` (1:1), ``ijbc_1n``, ``megaface``
(folders; layouts in ``evaluation/README.md``). Unknown names are refused.

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
from typing import Any

import numpy as np
import polars as pl
import torch

from f2c.evaluation.features import ImageFiles, cached_features
from f2c.evaluation.identification import (
    identification_metrics,
    pool_template_list,
    read_template_csv,
)
from f2c.evaluation.ijbc import IJBC_FARS, evaluate_ijbc_features, read_ijbc_meta
from f2c.evaluation.megaface import load_megaface, megaface_evaluate
from f2c.evaluation.pairs import PROTOCOL_FOLD_SIZES, evaluate_pair_features, load_pair_set
from f2c.evaluation.report import ResultTable, plot_roc, write_csv, write_markdown
from f2c.evaluation.ytf import evaluate_ytf_features, load_ytf

__all__ = ["LoadedModel", "create_model", "load_checkpoint_model", "main", "run_benchmark"]

PAIR_KINDS = (*PROTOCOL_FOLD_SIZES, "pairs")
KINDS = (*PAIR_KINDS, "ytf", "ijbc", "ijbc_1n", "megaface")
IJBC_1N_LISTS = {"G1": "meta/ijbc_1N_gallery_G1.csv", "G2": "meta/ijbc_1N_gallery_G2.csv"}
IJBC_1N_PROBES = "meta/ijbc_1N_probe_mixed.csv"
KFOLD_RULE = "10 contiguous folds of {size}; threshold exact on the other 9; same iff cos > t"


def create_model(name: str, embedding_size: int) -> torch.nn.Module:
    """The backbone factory (``f2c.models.create``); a seam tests may replace."""
    try:
        from f2c.models import create
    except ImportError as e:
        raise RuntimeError(f"cannot build backbone {name!r}: f2c.models unavailable ({e})") from e
    return create(name, embedding_size=embedding_size)


def _default_input_size(name: str) -> int | None:
    try:
        from f2c.models import input_size

        return int(input_size(name))
    except (ImportError, KeyError, ValueError):  # no model zoo, or a backbone it doesn't know
        return None


@dataclass
class LoadedModel:
    module: torch.nn.Module
    backbone: str
    embedding_size: int
    image_size: int | None
    model_id: str  # identifies the weights for the feature store


def _lookup(ckpt: dict[str, Any], key: str) -> Any:
    for section in (ckpt.get("model"), (ckpt.get("config") or {}).get("model"), ckpt.get("config")):
        if isinstance(section, dict) and key in section:
            return section[key]
    return None


def load_checkpoint_model(
    path: str | Path,
    *,
    net: str = "probe",
    backbone: str | None = None,
    embedding_size: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build the backbone and load ``net`` ("probe" or "gallery") from an f2c checkpoint.

    A checkpoint is a dict holding ``probe`` (and optionally ``gallery``) state dicts plus the
    backbone name and embedding size under ``model`` or ``config``; a bare state dict also works
    when ``backbone`` and ``embedding_size`` are given. ``module.`` prefixes (DDP) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if "probe" in ckpt:
        if net not in ckpt:
            raise KeyError(f"{path}: no {net!r} weights (keys: {sorted(ckpt)})")
        state = ckpt[net]
    elif all(torch.is_tensor(v) for v in ckpt.values()):
        if net != "probe":
            raise KeyError(f"{path}: a bare state dict has no {net!r} net")
        state = ckpt
    else:
        raise KeyError(f"{path}: no 'probe' state dict (keys: {sorted(ckpt)})")
    name = backbone or _lookup(ckpt, "backbone")
    size = embedding_size or _lookup(ckpt, "embedding_size")
    if name is None or size is None:
        raise ValueError(f"{path}: backbone / embedding size not recorded; pass --model and "
                         f"--embedding-size")
    image_size = _lookup(ckpt, "image_size")
    if isinstance(image_size, (list, tuple)):
        image_size = int(image_size[0])
    if image_size is None:
        image_size = _default_input_size(str(name))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    module = create_model(str(name), int(size))
    module.load_state_dict(state)
    module.to(device).eval()
    st = path.stat()
    model_id = f"{path.resolve()}|{net}|{st.st_size}|{st.st_mtime_ns}"
    return LoadedModel(module, str(name), int(size), image_size, model_id)


# ---------------------------------------------------------------- benchmarks


@dataclass
class RunOptions:
    device: str
    batch_size: int
    flip: bool
    image_size: int | None
    features_dir: Path | None
    ranks: int
    tile: int
    ijbc_normalize_images: bool
    ijbc_detector_scores: bool


def _features(model: LoadedModel, images: Any, stem: str, opts: RunOptions) -> np.ndarray:
    return cached_features(
        None if opts.features_dir is None else opts.features_dir / stem,
        model.module,
        images,
        model_id=model.model_id,
        flip=opts.flip,
        extra={"image_size": opts.image_size},
        device=opts.device,
        batch_size=opts.batch_size,
    )


def _normalise_rows(x: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """L2-normalise rows in place, in chunks (a 1M x 512 gallery is not copied)."""
    x = np.require(x, dtype=np.float32, requirements=["C", "W"])
    for s in range(0, len(x), chunk):
        block = x[s : s + chunk]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return x


def run_benchmark(
    kind: str,
    path: Path,
    model: LoadedModel,
    name: str,
    table: ResultTable,
    opts: RunOptions,
    out: Path,
) -> None:
    """Evaluate one benchmark and append its rows to ``table``."""
    common = dict(model=name, benchmark=kind, flip=opts.flip, data=str(path))
    if kind in PAIR_KINDS:
        pairs = load_pair_set(path, image_size=opts.image_size)
        bench = kind if kind != "pairs" else path.stem
        feats = _features(model, pairs.images, bench, opts)
        r = evaluate_pair_features(feats, pairs, protocol=kind if kind != "pairs" else None)
        common["benchmark"] = bench
        table.add(metric="accuracy", value=r["accuracy"], std=r["accuracy_std"], n=r["pairs"],
                  protocol=KFOLD_RULE.format(size=r["fold_size"]), **common)
    elif kind == "ytf":
        ytf = load_ytf(path, image_size=opts.image_size)
        feats = _features(model, ytf.frames, "ytf", opts)
        r = evaluate_ytf_features(feats, ytf)
        table.add(metric="accuracy", value=r["accuracy"], std=r["accuracy_std"], n=r["pairs"],
                  protocol="video = normalised mean of frames; "
                  + KFOLD_RULE.format(size=r["fold_size"]), **common)
    elif kind == "ijbc":
        meta = read_ijbc_meta(path)
        files = [path / "images" / str(n) for n in meta.image_names]
        missing = next((f for f in files if not f.is_file()), None)
        if missing is not None:
            raise FileNotFoundError(f"IJB-C image not found: {missing} (expected aligned crops "
                                    f"under {path / 'images'})")
        images = ImageFiles(files, ids=[str(n) for n in meta.image_names],
                            image_size=opts.image_size)
        feats = _features(model, images, "ijbc", opts)
        use_scores = opts.ijbc_detector_scores and meta.detector_scores is not None
        r = evaluate_ijbc_features(feats, meta, normalize_images=opts.ijbc_normalize_images,
                                   use_detector_scores=use_scores, keep_roc=True)
        pooling = (
            "template = normalise(sum over media of mean image feature)"
            + ("; images L2-normalised" if opts.ijbc_normalize_images else "")
            + ("; weighted by detector score" if use_scores else "")
        )
        for far in IJBC_FARS:
            table.add(metric=f"tar@far={far:.0e}", value=r["tar@far"][far], n=r["pairs"],
                      protocol=pooling + "; exact threshold from impostors, accept if s > t",
                      **common)
            table.add(metric=f"tar@far={far:.0e} (roc-nearest)",
                      value=r["tar@far_roc_nearest"][far], n=r["pairs"],
                      protocol=pooling + "; ROC point with FPR nearest FAR (insightface)",
                      **common)
        fpr, tpr = r["roc"]
        plot_roc({name: (fpr, tpr)}, out / "roc_ijbc.png", title="IJB-C 1:1", fars=IJBC_FARS)
    elif kind == "ijbc_1n":
        probes = read_template_csv(path / IJBC_1N_PROBES)
        galleries = {g: read_template_csv(path / f) for g, f in IJBC_1N_LISTS.items()
                     if (path / f).is_file()}
        if not galleries:
            raise FileNotFoundError(f"no 1:N gallery list under {path / 'meta'} "
                                    f"(expected {', '.join(IJBC_1N_LISTS.values())})")
        names = np.unique(np.concatenate(
            [probes.filenames] + [g.filenames for g in galleries.values()]))
        files = [path / "images" / str(n) for n in names]
        missing = next((f for f in files if not f.is_file()), None)
        if missing is not None:
            raise FileNotFoundError(f"IJB-C image not found: {missing}")
        feats = _features(model, ImageFiles(files, ids=[str(n) for n in names],
                                            image_size=opts.image_size), "ijbc_1n", opts)
        pool = {"normalize_images": opts.ijbc_normalize_images}
        p_feats, p_subj = pool_template_list(feats[np.searchsorted(names, probes.filenames)],
                                             probes, **pool)
        protocol = ("templates pooled as in 1:1; rank counts other-subject templates >= mate; "
                    "TPIR: threshold from non-mated top-1, alarm if s > t")
        for gname, glist in galleries.items():
            g_feats, g_subj = pool_template_list(
                feats[np.searchsorted(names, glist.filenames)], glist, **pool)
            r = identification_metrics(g_feats, g_subj, p_feats, p_subj,
                                       ranks=(1, 5, 10), fpirs=(0.01, 0.1))
            for rank, v in r["cmc"].items():
                table.add(metric=f"{gname} rank{rank}", value=v, n=r["mated"],
                          protocol=protocol, **common)
            for f, v in r["tpir"].items():
                table.add(metric=f"{gname} tpir@fpir={f:.0e}", value=v, n=r["mated"],
                          protocol=protocol, **common)
    elif kind == "megaface":
        ms = load_megaface(path)
        probes = _features(model, ImageFiles(ms.probe_paths, image_size=opts.image_size),
                           "megaface_probes", opts)
        dis = _features(model, ImageFiles(ms.distractor_paths, image_size=opts.image_size),
                        "megaface_distractors", opts)
        r = megaface_evaluate(
            _normalise_rows(probes), ms.probe_ids, _normalise_rows(dis), ranks=opts.ranks,
            tile=opts.tile, device=opts.device, distractor_list=ms.distractor_list,
        )
        common["data"] = f"{path}: distractors {ms.distractor_list}"
        ident = "official: each other probe image vs all distractors; correct iff s > r-th best"
        table.add(metric="rank1", value=r.rank1, n=r.probe_pairs, protocol=ident, **common)
        for rank in sorted({5, 10, opts.ranks} & set(range(2, len(r.cmc) + 1))):
            table.add(metric=f"cmc@{rank}", value=float(r.cmc[rank - 1]), n=r.probe_pairs,
                      protocol=ident, **common)
        for far, tar in r.tar_at_far.items():
            table.add(metric=f"tar@far={far:.0e}", value=tar, n=r.genuine_pairs,
                      protocol="genuine: probe pairs; impostor: probe x distractor; exact",
                      **common)
    else:
        raise ValueError(f"unknown benchmark {kind!r}; known: {', '.join(KINDS)}")


def _parse_benchmarks(items: Sequence[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        kind, sep, path = item.partition("=")
        kind = kind.strip().lower().replace("-", "_")
        if not sep or not path:
            raise SystemExit(f"--benchmark expects NAME=PATH, got {item!r}")
        if kind not in KINDS:
            raise SystemExit(f"unknown benchmark {kind!r} in {item!r}; known: {', '.join(KINDS)}")
        if not Path(path).exists():
            raise SystemExit(f"benchmark {kind}: {path} does not exist")
        out.append((kind, Path(path)))
    return out


def _merge(out: Path, new: pl.DataFrame) -> pl.DataFrame:
    csv = out / "results.csv"
    if not csv.exists():
        return new
    old = pl.read_csv(csv, schema=new.schema)
    key = ["model", "benchmark", "metric"]
    return pl.concat([old.join(new.select(key), on=key, how="anti"), new])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m f2c.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--benchmark", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--net", choices=("probe", "gallery"), default="probe",
                   help="which network of the checkpoint to evaluate (default: probe)")
    p.add_argument("--model", help="backbone name, if the checkpoint does not record it")
    p.add_argument("--embedding-size", type=int)
    p.add_argument("--name", help="model name in the results (default: <checkpoint stem>/<net>)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="disable flip-sum test-time augmentation")
    p.add_argument("--image-size", type=int,
                   help="resize square crops to this size (default: the backbone's input size)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="do not read or write <out>/features")
    p.add_argument("--ranks", type=int, default=10, help="MegaFace CMC up to this rank")
    p.add_argument("--tile", type=int, default=8192, help="MegaFace distractors per tile")
    p.add_argument("--ijbc-normalize-images", action="store_true",
                   help="L2-normalise IJB-C image features before pooling")
    p.add_argument("--ijbc-no-detector-scores", dest="ijbc_detector_scores",
                   action="store_false",
                   help="do not weight IJB-C images by meta/ijbc_name_5pts_score.txt scores")
    return p


def main(argv: Sequence[str] | None = None) -> pl.DataFrame:
    args = build_parser().parse_args(argv)
    benchmarks = _parse_benchmarks(args.benchmark)
    model = load_checkpoint_model(args.checkpoint, net=args.net, backbone=args.model,
                                  embedding_size=args.embedding_size, device=args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    opts = RunOptions(
        device=args.device, batch_size=args.batch_size, flip=args.flip,
        image_size=args.image_size or model.image_size,
        features_dir=None if args.no_feature_cache else out / "features",
        ranks=args.ranks, tile=args.tile, ijbc_normalize_images=args.ijbc_normalize_images,
        ijbc_detector_scores=args.ijbc_detector_scores,
    )
    name = args.name or f"{args.checkpoint.stem}/{args.net}"
    table = ResultTable()
    for kind, path in benchmarks:
        run_benchmark(kind, path, model, name, table, opts, out)
    df = _merge(out, table.frame())
    write_csv(df, out / "results.csv")
    write_markdown(df, out / "results.md")
    print((out / "results.md").read_text(), end="")
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
