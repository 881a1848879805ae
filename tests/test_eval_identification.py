"""1:N identification: CMC and TPIR@FPIR against literal loops; IJB-C 1:N lists and CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_support import PixelNet, register_pixelnet, write_ijb_identification

import f2c.evaluate as cli
from f2c.evaluation.identification import (
    identification_metrics,
    pool_template_list,
    read_template_csv,
)


def brute(gallery, g_sub, probes, p_sub, ranks, fpirs):
    s = probes.astype(np.float64) @ gallery.astype(np.float64).T
    ranks_of, mate, top1, mated = [], [], [], []
    for i in range(len(p_sub)):
        top1.append(s[i].max())
        is_m = g_sub == p_sub[i]
        mated.append(is_m.any())
        if is_m.any():
            best = s[i][is_m].max()
            ranks_of.append(1 + sum(s[i][j] >= best for j in range(len(g_sub)) if not is_m[j]))
            mate.append(best)
        else:
            ranks_of.append(0)
            mate.append(-np.inf)
    mated = np.array(mated)
    rk, mate, top1 = np.array(ranks_of), np.array(mate), np.array(top1)
    cmc = {r: float(np.mean(rk[mated] <= r)) for r in ranks}
    tpir = {}
    non = np.sort(top1[~mated])[::-1]
    for f in fpirs:
        k = math.floor(f * len(non))
        t = non[k] if k < len(non) else -np.inf
        assert np.mean(non > t) <= f  # the achieved FPIR never exceeds the target
        tpir[f] = float(np.mean((rk[mated] == 1) & (mate[mated] > t)))
    return cmc, tpir, int(mated.sum())


@pytest.mark.parametrize("block", [3, 4096])
@pytest.mark.parametrize("quantise", [False, True])
def test_identification_matches_loops(block: int, quantise: bool) -> None:
    rng = np.random.default_rng(0)
    g_sub = np.array([5, 7, 9, 11, 13, 7, 20, 21])  # subject 7 has two gallery templates
    gallery = rng.normal(size=(8, 6))
    p_sub = rng.choice([5, 7, 9, 11, 13, 20, 21, 99, 98, 97], 60)  # 97-99: non-mated
    probes = rng.normal(size=(60, 6)) + 1.5 * np.array(
        [gallery[np.flatnonzero(g_sub == s)[0]] if s in g_sub else np.zeros(6) for s in p_sub])
    if quantise:  # many exact ties
        gallery, probes = np.round(gallery), np.round(probes)
    gallery, probes = gallery.astype(np.float32), probes.astype(np.float32)
    fpirs, ranks = (0.0, 0.05, 0.1, 0.5, 1.0), (1, 2, 5)
    got = identification_metrics(torch.from_numpy(gallery), g_sub, torch.from_numpy(probes), p_sub,
                                 ranks=ranks, fpirs=fpirs, block=block)
    cmc, tpir, n_mated = brute(gallery, g_sub, probes, p_sub, ranks, fpirs)
    assert got["cmc"] == pytest.approx(cmc)
    assert got["tpir"] == pytest.approx(tpir)
    assert got["mated"] == n_mated and got["non_mated"] == 60 - n_mated


def test_no_mates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no probe has a mate"):
        identification_metrics(torch.eye(2), np.array([1, 2]), torch.eye(2), np.array([3, 4]))


def test_template_csv(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n1,10,a.jpg,100\n1,10,b.jpg,100\n"
                 "2,11,c.jpg,101\n")
    rows = read_template_csv(p)
    assert rows.templates.tolist() == [1, 1, 2] and rows.media.tolist() == [100, 100, 101]
    feats = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    tf, subj = pool_template_list(feats, rows)
    assert subj.tolist() == [10, 11] and tf.shape == (2, 2)
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,10,a.jpg\n1,12,b.jpg\n")
    with pytest.raises(ValueError, match=r"g.csv:3: template 1 mixes subjects"):
        pool_template_list(feats[:2], read_template_csv(p))
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,10,a.jpg\n,10,b.jpg\n")
    with pytest.raises(ValueError, match=r"g.csv:3: empty TEMPLATE_ID"):
        read_template_csv(p)
    p.write_text("TEMPLATE,SUBJECT_ID,FILENAME\n1,10,a.jpg\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['TEMPLATE_ID'\]"):
        read_template_csv(p)
    with pytest.raises(FileNotFoundError, match="1:N list not found"):
        read_template_csv(tmp_path / "none.csv")
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
    with pytest.raises(ValueError, match=r"g.csv: no rows after the header"):
        read_template_csv(p)


def test_cli_ijbc_1n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register_pixelnet(monkeypatch)
    root = tmp_path / "IJBC"
    write_ijb_identification(root)
    ckpt = tmp_path / "c.pt"
    torch.save({"model": {"backbone": "pixelnet", "embedding_size": 16},
                "probe": PixelNet(16).state_dict()}, ckpt)
    df = cli.run(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                   "--benchmark", f"ijbc_1n={root}"])
    got = dict(zip(df["metric"], df["value"], strict=True))
    assert set(got) == {f"{g} {m}" for g in ("G1", "G2")
                        for m in ("rank1", "rank5", "rank10", "tpir@fpir=1e-02",
                                  "tpir@fpir=1e-01")}
    assert df.filter(df["metric"] == "G1 rank1")["n"][0] == 4  # 4 mated probe templates
    assert got["G1 rank1"] >= 0.75 and got["G1 rank5"] == 1.0
