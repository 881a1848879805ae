"""IJB-B 1:1 and 1:N: IJB-B's own protocol file names, through the IJB-C code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from eval_support import (
    PixelNet,
    loop_pool,
    register_pixelnet,
    save_checkpoint,
    write_ijb_identification,
    write_ijb_verification,
)

import f2c.evaluate as cli
from f2c.evaluation.features import ImageFiles, extract_features
from f2c.evaluation.ijbc import IJBB, IJBC_FARS, read_ijb_meta
from f2c.evaluation.metrics import tar_at_fars


@pytest.fixture
def ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    register_pixelnet(monkeypatch)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path)
    return path


def run(ckpt: Path, out: Path, *benchmarks: str) -> pl.DataFrame:
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]
    for b in benchmarks:
        args += ["--benchmark", b]
    return cli.run(args)


def by_metric(df: pl.DataFrame, benchmark: str) -> dict[str, float]:
    rows = df.filter(pl.col("benchmark") == benchmark)
    return dict(zip(rows["metric"], rows["value"], strict=True))


def test_ijbb_verification(tmp_path: Path, ckpt: Path) -> None:
    root = tmp_path / "IJBB"
    write_ijb_verification(root, "ijbb")
    names = (root / "meta/ijbb_face_tid_mid.txt").read_text().split()[0::3]
    det = np.linspace(0.5, 1.0, len(names))
    (root / "meta/ijbb_name_5pts_score.txt").write_text("".join(
        f"{n} 1 2 3 4 5 6 7 8 9 10 {s}\n" for n, s in zip(names, det, strict=True)))
    meta = read_ijb_meta(root, IJBB)
    assert meta.detector_scores is not None and meta.layout is IJBB

    df = run(ckpt, tmp_path / "out", f"ijbb={root}")
    got = by_metric(df, "ijbb")
    assert set(got) == {f"tar@far={f:.0e}{s}" for f in IJBC_FARS for s in ("", " (roc-nearest)")}
    assert all("weighted by detector score" in p for p in df["protocol"])
    assert (tmp_path / "out" / "roc_ijbb.png").exists()
    # independently: the probe net on the images in meta order, pooled by the literal loop
    feats = extract_features(PixelNet(16, seed=0),
                             ImageFiles([root / "images" / n for n in names]), flip=True)
    ref = loop_pool(feats, meta.templates, meta.medias, weights=det)
    scores = np.array([ref[a] @ ref[b] for a, b in zip(meta.pair_a, meta.pair_b, strict=True)])
    expected = tar_at_fars(scores, meta.same, IJBC_FARS)
    assert [got[f"tar@far={f:.0e}"] for f in IJBC_FARS] == pytest.approx(expected)


def test_ijbb_and_ijbc_layouts_of_one_set_agree(tmp_path: Path, ckpt: Path) -> None:
    for prefix in ("ijbb", "ijbc"):
        write_ijb_verification(tmp_path / prefix, prefix)
    df = run(ckpt, tmp_path / "out", f"ijbb={tmp_path / 'ijbb'}", f"ijbc={tmp_path / 'ijbc'}")
    assert by_metric(df, "ijbb") == by_metric(df, "ijbc")
    # each kind reads its own file names only
    with pytest.raises(FileNotFoundError, match="ijbb_face_tid_mid.txt"):
        run(ckpt, tmp_path / "o2", f"ijbb={tmp_path / 'ijbc'}")


def test_ijbb_identification(tmp_path: Path, ckpt: Path) -> None:
    write_ijb_identification(tmp_path / "IJBB", "ijbb", ("S1", "S2"))
    write_ijb_identification(tmp_path / "IJBC", "ijbc", ("G1", "G2"))
    df = run(ckpt, tmp_path / "out", f"ijbb_1n={tmp_path / 'IJBB'}",
             f"ijbc_1n={tmp_path / 'IJBC'}")
    b, c = by_metric(df, "ijbb_1n"), by_metric(df, "ijbc_1n")
    metrics = ("rank1", "rank5", "rank10", "tpir@fpir=1e-02", "tpir@fpir=1e-01")
    assert set(b) == {f"{g} {m}" for g in ("S1", "S2") for m in metrics}
    # the same images and lists under IJB-B's gallery names give IJB-C's numbers
    assert b == {k.replace("G1", "S1").replace("G2", "S2"): v for k, v in c.items()}
    assert b["S1 rank5"] == 1.0
    with pytest.raises(FileNotFoundError, match="ijbb_1N_probe_mixed.csv"):
        run(ckpt, tmp_path / "o2", f"ijbb_1n={tmp_path / 'IJBC'}")
    (tmp_path / "IJBC/meta/ijbb_1N_probe_mixed.csv").write_text(
        (tmp_path / "IJBC/meta/ijbc_1N_probe_mixed.csv").read_text())
    with pytest.raises(FileNotFoundError, match=r"no IJB-B 1:N gallery list .*ijbb_1N_gallery_S1"):
        run(ckpt, tmp_path / "o2", f"ijbb_1n={tmp_path / 'IJBC'}")
