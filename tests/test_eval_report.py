"""Result tables (polars), CSV / Markdown writers, ROC plots, and the evaluate CLI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from eval_support import (
    PixelNet,
    face_images,
    register_pixelnet,
    save_checkpoint,
    save_png,
    write_ijb_verification,
    write_pair_set,
)

import f2c.evaluate as cli
from f2c.cli import UserError
from f2c.evaluation.benchmarks import BENCHMARKS, benchmark_kind
from f2c.evaluation.report import (
    SCHEMA,
    ResultTable,
    plot_roc,
    to_markdown,
    write_csv,
    write_results,
)


def test_table_schema_csv_and_markdown(tmp_path: Path) -> None:
    t = ResultTable()
    t.add(model="m/probe", benchmark="lfw", metric="accuracy", value=0.9965, std=0.0031,
          n=6000, flip=True, protocol="10 folds | exact", data="lfw.bin")
    t.add(model="m/probe", benchmark="ijbc", metric="tar@far=1e-04", value=0.95, n=15658489)
    df = t.frame()
    assert df.schema == pl.Schema(SCHEMA) and df.height == 2
    assert df["std"].to_list() == [0.0031, None]
    write_csv(df, tmp_path / "r.csv")
    back = pl.read_csv(tmp_path / "r.csv", schema=df.schema)
    assert back.equals(df)
    md = to_markdown(df)
    lines = md.splitlines()
    assert lines[0].startswith("| model | benchmark | metric | value (%) | std (%) |")
    assert "| 99.65 | 0.31 | 6000 | True | 10 folds \\| exact |" in lines[2]
    assert "| 95.00 |  | 15658489 |" in lines[3]


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    fpr = np.concatenate(([0.0], np.sort(rng.random(50_000)), [1.0]))
    tpr = np.sqrt(fpr)
    plot_roc({"a": (fpr, tpr), "b": (fpr, fpr)}, tmp_path / "roc.png", fars=(1e-4, 1e-2))
    data = (tmp_path / "roc.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ---------------------------------------------------------------- CLI


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    register_pixelnet(monkeypatch)


def write_megaface(root: Path) -> None:
    rng = np.random.default_rng(5)
    imgs, labels = face_images(rng, 4, 3)
    lines = []
    for i, (img, ident) in enumerate(zip(imgs, labels, strict=True)):
        save_png(img, root / "facescrub" / f"{i}.png")
        lines.append(f"facescrub/{i}.png id{ident}")
    (root / "facescrub.txt").write_text("\n".join(lines) + "\n")
    dis, _ = face_images(rng, 30, 1)
    for i, img in enumerate(dis):
        save_png(img, root / "megaface" / f"{i}.png")
    (root / "distractors.txt").write_text("".join(f"megaface/{i}.png\n" for i in range(30)))


def test_cli_end_to_end(tmp_path: Path, tiny_models: None) -> None:
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt)
    pairs, _ = write_pair_set(tmp_path / "synth")
    write_ijb_verification(tmp_path / "ijbc")
    (tmp_path / "mf").mkdir()
    write_megaface(tmp_path / "mf")
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu",
            "--benchmark", f"pairs={pairs}", "--benchmark", f"ijbc={tmp_path / 'ijbc'}",
            "--benchmark", f"megaface={tmp_path / 'mf'}", "--ranks", "5"]
    df = cli.run(args)
    got = {(r["benchmark"], r["metric"]): r for r in df.iter_rows(named=True)}
    assert got[("pairs", "accuracy")]["n"] == 60 and got[("pairs", "accuracy")]["std"] is not None
    assert ("ijbc", "tar@far=1e-04") in got and ("ijbc", "tar@far=1e-04 (roc-nearest)") in got
    assert {("megaface", "rank1"), ("megaface", "cmc@5"), ("megaface", "tar@far=1e-06")} <= set(got)
    assert "distractors.txt (30 listed; 30 used)" in got[("megaface", "rank1")]["data"]
    assert set(df["model"]) == {"ckpt/probe"} and df["flip"].all()
    assert (out / "results.csv").exists() and (out / "roc_ijbc.png").exists()
    assert "| ckpt/probe | pairs | accuracy |" in (out / "results.md").read_text()
    stored = sorted(p.name for p in (out / "features").iterdir())
    assert stored == sorted(f"{n}.{e}" for n in ("pairs", "ijbc", "megaface_probes",
                                                 "megaface_distractors") for e in ("npy", "json"))
    # the same run again re-uses features and replaces (not duplicates) its rows;
    # the gallery net adds its own rows to the same table
    df2 = cli.run(args)
    assert df2.height == df.height
    assert df2.sort(["benchmark", "metric"])["value"].to_list() == pytest.approx(
        df.sort(["benchmark", "metric"])["value"].to_list())
    df3 = cli.run([*args, "--net", "gallery", "--no-flip"])
    assert df3.height == 2 * df.height
    assert set(df3["model"]) == {"ckpt/probe", "ckpt/gallery"}


def test_pack_replaced_in_place_is_embedded_again(tmp_path: Path, tiny_models: None) -> None:
    """Two different packs under one name, evaluated into one --out: each gets its own
    accuracy (the feature store is keyed on content, not on the file name)."""
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt)
    pairs, rows = write_pair_set(tmp_path / "synth")
    blobs = [(pairs.parent / x).read_bytes() for a, b, _ in rows for x in (a, b)]
    labels = [bool(s) for _, _, s in rows]
    shuffled = [blobs[i] for i in np.random.default_rng(0).permutation(len(blobs))]
    pack = tmp_path / "data" / "pairs.bin"
    pack.parent.mkdir()
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--benchmark", f"pairs={pack}"]
    accuracy = {}
    for name, images in (("A", blobs), ("B", shuffled)):
        pack.write_bytes(pickle.dumps((images, labels)))
        accuracy[name] = cli.run(args)["value"][0]
        fresh = cli.run([*args, "--no-feature-cache", "--out", str(tmp_path / f"fresh{name}")])
        assert accuracy[name] == fresh["value"][0]
    assert accuracy["A"] > 0.8 and accuracy["B"] < accuracy["A"] - 0.2


def test_results_are_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = ResultTable()
    t.add(model="m", benchmark="lfw", metric="accuracy", value=0.99)
    write_results(tmp_path, t.frame())
    before = (tmp_path / "results.csv").read_text(), (tmp_path / "results.md").read_text()

    def cut_off(self: pl.DataFrame, path: Path) -> None:
        Path(path).write_text("model,benchmark,metric,val")  # a crash mid-row
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_csv", cut_off)
    t.add(model="m", benchmark="cfp_fp", metric="accuracy", value=0.9)
    with pytest.raises(OSError, match="disk full"):
        write_results(tmp_path, t.frame())
    assert ((tmp_path / "results.csv").read_text(), (tmp_path / "results.md").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.md"]


def test_cli_refuses_non_positive_sizes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for option in ("--tile", "--ranks", "--batch-size"):
        with pytest.raises(SystemExit):
            cli.run(["--checkpoint", "c.pt", "--out", str(tmp_path), "--benchmark",
                      f"megaface={tmp_path}", option, "0"])
        assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_benchmark_table_lookup() -> None:
    assert set(cli.KINDS) == set(BENCHMARKS) and "ijbc_1n" in BENCHMARKS
    assert benchmark_kind(" CFP-FP ").name == "cfp_fp"
    with pytest.raises(KeyError, match="unknown benchmark 'lwf'; known: lfw, "):
        benchmark_kind("lwf")


def test_cli_refuses_typos_and_bad_protocols(tmp_path: Path, tiny_models: None) -> None:
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt)
    pairs, _ = write_pair_set(tmp_path / "synth")
    base = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    with pytest.raises(UserError, match="unknown benchmark 'lwf'"):
        cli.run([*base, "--benchmark", f"lwf={pairs}"])
    with pytest.raises(UserError, match="does not exist"):
        cli.run([*base, "--benchmark", f"lfw={tmp_path / 'none.bin'}"])
    with pytest.raises(UserError, match="NAME=PATH"):
        cli.run([*base, "--benchmark", "lfw"])
    with pytest.raises(ValueError, match="lfw has 10 folds of 600"):
        cli.run([*base, "--benchmark", f"lfw={pairs}"])
    assert ckpt.exists()  # evaluation never deletes a checkpoint


def test_cli_prints_user_errors_as_one_line(
    tmp_path: Path, tiny_models: None, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt)
    pairs, _ = write_pair_set(tmp_path / "synth")
    meta = tmp_path / "ijbc" / "meta"
    meta.mkdir(parents=True)
    (meta / "ijbc_face_tid_mid.txt").write_text("a.jpg 1 1\nb.jpg\t2 1\n")
    base = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    for bench, message in ((f"lfw={pairs}", "lfw has 10 folds of 600 pairs"),
                           (f"ijbc={tmp_path / 'ijbc'}", "ijbc_face_tid_mid.txt:2: a tab"),
                           (f"lwf={pairs}", "unknown benchmark 'lwf'")):
        assert cli.main([*base, "--benchmark", bench]) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m f2c.evaluate: error: ") and message in err
        assert "Traceback" not in err and err.count("\n") == 1
        with pytest.raises(UserError, match=message):  # --debug: raised, with its traceback
            cli.main([*base, "--benchmark", bench, "--debug"])


def test_checkpoint_loading(tmp_path: Path, tiny_models: None) -> None:
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt)
    m = cli.load_checkpoint_model(ckpt)
    assert m.backbone == "pixelnet" and m.embedding_size == 16 and m.image_size == 16
    g = cli.load_checkpoint_model(ckpt, net="gallery")
    assert not torch.equal(m.module.fc.weight, g.module.fc.weight)
    bare = tmp_path / "bare.pt"
    torch.save(PixelNet(16).state_dict(), bare)
    with pytest.raises(ValueError, match="--model"):
        cli.load_checkpoint_model(bare)
    plain = cli.load_checkpoint_model(bare, backbone="pixelnet", embedding_size=16)
    assert plain.image_size == 16  # nothing recorded: the backbone's native size
    with pytest.raises(KeyError, match="gallery"):
        cli.load_checkpoint_model(bare, net="gallery", backbone="x", embedding_size=16)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        cli.load_checkpoint_model(tmp_path / "nope.pt")
    evil = tmp_path / "evil.pt"
    torch.save({"probe": {}, "x": _NotAllowed()}, evil)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        cli.load_checkpoint_model(evil)


class _NotAllowed:
    pass


REPO = Path(__file__).resolve().parents[1]


def test_evaluation_scripts_forward_to_the_cli(
    tmp_path: Path, tiny_models: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "evaluation"))
    from _forward import forward

    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt)
    pairs, _ = write_pair_set(tmp_path / "synth")
    forward("pairs", [str(pairs), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")])
    df = pl.read_csv(tmp_path / "o" / "results.csv")
    assert df["metric"].to_list() == ["accuracy"] and df["n"].to_list() == [60]
    with pytest.raises(SystemExit, match="usage"):
        forward("ytf", ["--checkpoint", str(ckpt)])


def test_megaface_from_stored_features_script(tmp_path: Path) -> None:
    import subprocess
    import sys

    from f2c.evaluation.megaface import megaface_evaluate

    rng = np.random.default_rng(0)
    probes = rng.normal(size=(30, 8)).astype(np.float32) * 3
    ids = np.repeat(np.arange(6), 5).astype(str)
    dis = rng.normal(size=(500, 8)).astype(np.float32) * 2
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "d.npy", dis)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    subprocess.run(
        [sys.executable, str(REPO / "evaluation" / "eval_megaface_features.py"),
         "--probes", str(tmp_path / "p.npy"), "--probe-ids", str(tmp_path / "ids.txt"),
         "--distractors", str(tmp_path / "d.npy"), "--tile", "64", "--out", str(tmp_path / "o")],
        check=True, capture_output=True,
    )
    df = pl.read_csv(tmp_path / "o" / "results.csv")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    ref = megaface_evaluate(unit(probes), ids, unit(dis))
    got = dict(zip(df["metric"], df["value"], strict=True))
    # the rows of the CLI's megaface kind, not a copy of its own
    assert set(got) == {"rank1", "cmc@5", "cmc@10", "tar@far=1e-06"}
    assert got["cmc@5"] == pytest.approx(ref.cmc[4])
    assert got["rank1"] == pytest.approx(ref.rank1)
    assert got["tar@far=1e-06"] == pytest.approx(ref.tar_at_far[1e-6])
    assert "d.npy (500 rows)" in df["data"][0]


def test_cli_with_a_real_backbone(tmp_path: Path) -> None:
    """No test seams: f2c.models builds the backbone named by a training-style checkpoint."""
    models = pytest.importorskip("f2c.models")
    net = models.create("tinyfacenet", embedding_size=32)
    ckpt = tmp_path / "run.pt"
    torch.save({"config": {"model": {"backbone": "tinyfacenet", "embedding_size": 32}},
                "probe": net.state_dict()}, ckpt)
    pairs, _ = write_pair_set(tmp_path / "synth", size=16)  # resized to the backbone's input
    df = cli.run(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                   "--benchmark", f"pairs={pairs}", "--device", "cpu"])
    assert df["metric"].to_list() == ["accuracy"] and 0.0 <= df["value"][0] <= 1.0
    manifest = (tmp_path / "o" / "features" / "pairs.json").read_text()
    assert f'"image_size": {models.input_size("tinyfacenet")}' in manifest
