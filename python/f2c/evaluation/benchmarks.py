"""The benchmarks ``python -m f2c.evaluate`` runs, as a table of kinds.

A :class:`BenchmarkKind` says three things:

* ``load(path, options) -> Loaded``: read the protocol files and list the images to embed, each
  list under a feature-store stem. Every image file is checked to exist here, before any
  network runs.
* ``evaluate(loaded, features, options) -> result``: the metrics, from raw features alone
  (``features`` maps each stem of ``loaded.images`` to its ``[N, D]`` array).
* ``rows(result, options) -> list[Row]``: the lines it adds to the results table.

:data:`BENCHMARKS` maps each name the CLI accepts to its kind;
``evaluation/eval_megaface_features.py`` runs the MegaFace kind's ``evaluate`` and ``rows`` on
features stored on disk. The protocols themselves: ``docs/design.md`` §4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from f2c.evaluation.errors import InputError
from f2c.evaluation.features import Embedder, ImageFiles, ImageSource, require_files
from f2c.evaluation.identification import (
    identification_metrics,
    pool_template_list,
    read_template_csv,
)
from f2c.evaluation.ijbc import IJBB, IJBC, IjbLayout, evaluate_ijbc_features, read_ijb_meta
from f2c.evaluation.megaface import DEFAULT_TILE, load_megaface, megaface_evaluate_raw
from f2c.evaluation.pairs import PROTOCOL_FOLD_SIZES, evaluate_pair_features, load_pair_set
from f2c.evaluation.report import ResultTable
from f2c.evaluation.ytf import evaluate_ytf_features, load_ytf

__all__ = [
    "BENCHMARKS",
    "BenchmarkKind",
    "BenchmarkOptions",
    "Loaded",
    "Row",
    "add_rows",
    "benchmark_kind",
    "run_kind",
]

KFOLD_RULE = "10 contiguous folds of {size}; threshold exact on the other 9; same iff cos > t"


@dataclass(frozen=True)
class BenchmarkOptions:
    """The protocol choices a run makes (each one can move a reported number)."""

    image_size: int | None = None  # square crops are resized to this; None: as stored
    ranks: int = 10  # MegaFace CMC up to this rank
    tile: int = DEFAULT_TILE  # MegaFace distractors per GEMM tile
    device: str = "cpu"  # where MegaFace streams its GEMMs
    ijb_normalize_images: bool = False  # L2-normalise IJB image features before pooling
    ijb_detector_scores: bool = True  # weight IJB images by detector score when listed


@dataclass
class Loaded:
    """A benchmark's input: what ``evaluate`` reads, and the images to embed by store stem."""

    inputs: Any
    images: dict[str, ImageSource]
    benchmark: str  # the name in the results table
    data: str  # the table's ``data`` column


@dataclass(frozen=True)
class Row:
    metric: str
    value: float
    n: int | None
    protocol: str
    std: float | None = None


@dataclass(frozen=True)
class BenchmarkKind:
    name: str
    load: Callable[[Path, BenchmarkOptions], Loaded]
    evaluate: Callable[[Loaded, Mapping[str, np.ndarray], BenchmarkOptions], Any]
    rows: Callable[[Any, BenchmarkOptions], list[Row]]
    roc_title: str | None = None  # plot ``result["roc"]`` under this title


def run_kind(
    kind: BenchmarkKind,
    path: str | os.PathLike[str],
    embedder: Embedder,
    options: BenchmarkOptions,
    features_dir: Path | None = None,
) -> tuple[Loaded, Any]:
    """Load ``path`` as ``kind``, embed its images (through ``<features_dir>/<stem>`` when
    given) and evaluate; returns the loaded input and the kind's result."""
    loaded = kind.load(Path(path), options)
    feats = {
        stem: embedder.features(images, None if features_dir is None else features_dir / stem)
        for stem, images in loaded.images.items()
    }
    return loaded, kind.evaluate(loaded, feats, options)


def add_rows(
    table: ResultTable,
    kind: BenchmarkKind,
    loaded: Loaded,
    result: Any,
    options: BenchmarkOptions,
    *,
    model: str,
    flip: bool | None,
) -> None:
    """Append the rows ``kind`` reports for ``result`` to ``table``."""
    for row in kind.rows(result, options):
        table.add(model=model, benchmark=loaded.benchmark, flip=flip, data=loaded.data,
                  **asdict(row))


# ---------------------------------------------------------------- pair sets


def _pair_kind(name: str) -> BenchmarkKind:
    protocol = name if name in PROTOCOL_FOLD_SIZES else None

    def load(path: Path, o: BenchmarkOptions) -> Loaded:
        pairs = load_pair_set(path, image_size=o.image_size)
        bench = name if protocol else path.stem  # "pairs=…": named after its file
        return Loaded(pairs, {bench: pairs.images}, bench, str(path))

    def evaluate(loaded: Loaded, feats: Mapping[str, np.ndarray], o: BenchmarkOptions) -> Any:
        return evaluate_pair_features(feats[loaded.benchmark], loaded.inputs, protocol=protocol)

    def rows(r: dict[str, Any], o: BenchmarkOptions) -> list[Row]:
        return [Row("accuracy", r["accuracy"], r["pairs"],
                    KFOLD_RULE.format(size=r["fold_size"]), std=r["accuracy_std"])]

    return BenchmarkKind(name, load, evaluate, rows)


# ---------------------------------------------------------------- YTF


def _ytf_load(path: Path, o: BenchmarkOptions) -> Loaded:
    ytf = load_ytf(path, image_size=o.image_size)
    return Loaded(ytf, {"ytf": ytf.frames}, "ytf", str(path))


def _ytf_evaluate(loaded: Loaded, feats: Mapping[str, np.ndarray], o: BenchmarkOptions) -> Any:
    return evaluate_ytf_features(feats["ytf"], loaded.inputs)


def _ytf_rows(r: dict[str, Any], o: BenchmarkOptions) -> list[Row]:
    protocol = "video = normalised mean of frames; " + KFOLD_RULE.format(size=r["fold_size"])
    return [Row("accuracy", r["accuracy"], r["pairs"], protocol, std=r["accuracy_std"])]


# ---------------------------------------------------------------- IJB-B / IJB-C


def _ijb_images(root: Path, names: np.ndarray, layout: IjbLayout, o: BenchmarkOptions
                ) -> ImageFiles:
    """The aligned crops ``root/images/<name>``; all must exist."""
    files = [root / "images" / str(n) for n in names]
    require_files(files, f"{layout.title} image", f"expected aligned crops under {root / 'images'}")
    return ImageFiles(files, ids=[str(n) for n in names], image_size=o.image_size)


def _ijb_verification_kind(layout: IjbLayout) -> BenchmarkKind:
    """1:1: TAR at each FAR over the template pairs of ``layout``."""
    name = layout.prefix

    def load(path: Path, o: BenchmarkOptions) -> Loaded:
        meta = read_ijb_meta(path, layout)
        return Loaded(meta, {name: _ijb_images(path, meta.image_names, layout, o)}, name,
                      str(path))

    def evaluate(loaded: Loaded, feats: Mapping[str, np.ndarray], o: BenchmarkOptions) -> Any:
        meta = loaded.inputs
        use_scores = o.ijb_detector_scores and meta.detector_scores is not None
        return evaluate_ijbc_features(feats[name], meta, normalize_images=o.ijb_normalize_images,
                                      use_detector_scores=use_scores, keep_roc=True)

    return BenchmarkKind(name, load, evaluate, _ijb_verification_rows,
                         roc_title=f"{layout.title} 1:1")


def _ijb_verification_rows(r: dict[str, Any], o: BenchmarkOptions) -> list[Row]:
    pooling = (
        "template = normalise(sum over media of mean image feature)"
        + ("; images L2-normalised" if r["normalize_images"] else "")
        + ("; weighted by detector score" if r["detector_scores"] else "")
    )
    rows = []
    for far in r["tar@far"]:
        rows.append(Row(f"tar@far={far:.0e}", r["tar@far"][far], r["pairs"],
                        pooling + "; exact threshold from impostors, accept if s > t"))
        rows.append(Row(f"tar@far={far:.0e} (roc-nearest)", r["tar@far_roc_nearest"][far],
                        r["pairs"], pooling + "; ROC point with FPR nearest FAR (insightface)"))
    return rows


def _ijb_identification_kind(layout: IjbLayout) -> BenchmarkKind:
    """1:N: each gallery of ``layout`` searched with the mixed probe templates."""
    name = f"{layout.prefix}_1n"

    def load(path: Path, o: BenchmarkOptions) -> Loaded:
        probes = read_template_csv(path / layout.probes)
        galleries = {g: read_template_csv(path / layout.gallery(g)) for g in layout.galleries
                     if (path / layout.gallery(g)).is_file()}
        if not galleries:
            expected = ", ".join(layout.gallery(g) for g in layout.galleries)
            raise FileNotFoundError(f"no {layout.title} 1:N gallery list under {path / 'meta'} "
                                    f"(expected {expected})")
        lists = [probes, *galleries.values()]
        names = np.unique(np.concatenate([t.filenames for t in lists]))
        return Loaded((probes, galleries, names), {name: _ijb_images(path, names, layout, o)},
                      name, str(path))

    def evaluate(
        loaded: Loaded, feats: Mapping[str, np.ndarray], o: BenchmarkOptions
    ) -> dict[str, dict[str, Any]]:
        probes, galleries, names = loaded.inputs
        f = feats[name]
        pool = {"normalize_images": o.ijb_normalize_images}
        p_feats, p_subj = pool_template_list(f[np.searchsorted(names, probes.filenames)],
                                             probes, **pool)
        out = {}
        for gname, glist in galleries.items():
            g_feats, g_subj = pool_template_list(f[np.searchsorted(names, glist.filenames)],
                                                 glist, **pool)
            try:
                out[gname] = identification_metrics(g_feats, g_subj, p_feats, p_subj,
                                                    ranks=(1, 5, 10), fpirs=(0.01, 0.1))
            except InputError as e:
                raise InputError(f"{glist.source} with probes {probes.source}: {e}") from e
        return out

    return BenchmarkKind(name, load, evaluate, _ijb_identification_rows)


def _ijb_identification_rows(r: dict[str, dict[str, Any]], o: BenchmarkOptions) -> list[Row]:
    protocol = ("templates pooled as in 1:1; rank counts other-subject templates >= mate; "
                "TPIR: threshold from non-mated top-1, alarm if s > t")
    rows = []
    for gname, g in r.items():
        rows += [Row(f"{gname} rank{rank}", v, g["mated"], protocol)
                 for rank, v in g["cmc"].items()]
        rows += [Row(f"{gname} tpir@fpir={f:.0e}", v, g["mated"], protocol)
                 for f, v in g["tpir"].items()]
    return rows


# ---------------------------------------------------------------- MegaFace


def _megaface_load(path: Path, o: BenchmarkOptions) -> Loaded:
    ms = load_megaface(path)
    images = {"megaface_probes": ImageFiles(ms.probe_paths, image_size=o.image_size),
              "megaface_distractors": ImageFiles(ms.distractor_paths, image_size=o.image_size)}
    return Loaded(ms, images, "megaface", f"{path}: distractors {ms.distractor_list}")


def _megaface_evaluate(
    loaded: Loaded, feats: Mapping[str, np.ndarray], o: BenchmarkOptions
) -> Any:
    ms = loaded.inputs
    return megaface_evaluate_raw(feats["megaface_probes"], ms.probe_ids,
                                 feats["megaface_distractors"], ranks=o.ranks, tile=o.tile,
                                 device=o.device, distractor_list=ms.distractor_list)


def _megaface_rows(r: Any, o: BenchmarkOptions) -> list[Row]:
    ident = "official: each other probe image vs all distractors; correct iff s > r-th best"
    rows = [Row("rank1", r.rank1, r.probe_pairs, ident)]
    for rank in sorted({5, 10, o.ranks} & set(range(2, len(r.cmc) + 1))):
        rows.append(Row(f"cmc@{rank}", float(r.cmc[rank - 1]), r.probe_pairs, ident))
    for far, tar in r.tar_at_far.items():
        rows.append(Row(f"tar@far={far:.0e}", tar, r.genuine_pairs,
                        "genuine: probe pairs; impostor: probe x distractor; exact"))
    return rows


# ---------------------------------------------------------------- the table


def _kinds() -> dict[str, BenchmarkKind]:
    kinds = [_pair_kind(n) for n in (*PROTOCOL_FOLD_SIZES, "pairs")]
    kinds += [
        BenchmarkKind("ytf", _ytf_load, _ytf_evaluate, _ytf_rows),
        *(f(layout) for layout in (IJBC, IJBB)
          for f in (_ijb_verification_kind, _ijb_identification_kind)),
        BenchmarkKind("megaface", _megaface_load, _megaface_evaluate, _megaface_rows),
    ]
    return {k.name: k for k in kinds}


BENCHMARKS: dict[str, BenchmarkKind] = _kinds()


def benchmark_kind(name: str) -> BenchmarkKind:
    """The kind called ``name`` (case and ``-``/``_`` ignored); unknown names are refused."""
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]
