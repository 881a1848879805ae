"""MegaFace: the streamed computation equals the dense one, and the official definitions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from f2c.evaluation.megaface import (
    _same_identity_pairs,
    load_megaface,
    megaface_evaluate,
    rank1,
)
from f2c.evaluation.streaming import NumpyOps, TorchOps, stream_topk


def quantised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Features in {-2..2}/4: every dot product is exact in float32, and ties are frequent."""
    return (rng.integers(-2, 3, (n, d)) / 4).astype(np.float32)


def dense_reference(probes, ids, dis, ranks, fars):
    """Build the whole probe x distractor matrix and apply the definitions literally."""
    s = probes.astype(np.float64) @ dis.astype(np.float64).T
    desc = -np.sort(-s, axis=1)
    hits = np.zeros(ranks)
    searches = 0
    genuine = []
    for p in range(len(ids)):
        for q in range(len(ids)):
            if p == q or ids[p] != ids[q]:
                continue
            g = float(probes[p].astype(np.float64) @ probes[q].astype(np.float64))
            searches += 1
            for r in range(ranks):
                hits[r] += g > desc[p, r]
            if p < q:
                genuine.append(g)
    imp = np.sort(s.ravel())[::-1]
    genuine = np.array(genuine)
    tars = {}
    for far in fars:
        k = math.floor(far * imp.size)
        t = imp[k] if k < imp.size else -np.inf
        tars[far] = float(np.mean(genuine > t))
    return hits / searches, tars, searches, len(genuine)


@pytest.mark.parametrize("tile", [1, 7, 64, 5000])
@pytest.mark.parametrize("min_buffer", [1, 1 << 20])
@pytest.mark.parametrize("fars", [(1e-3,), (0.0, 1e-4, 0.01, 0.3)])
def test_streamed_equals_dense(tile: int, min_buffer: int, fars: tuple[float, ...]) -> None:
    # fars=(1e-3,) keeps fewer impostors than probes x ranks: the sparse "bound" path;
    # a FAR of 0.3 keeps more: impostors are held densely until the floor is known.
    rng = np.random.default_rng(tile)
    ids = rng.integers(0, 6, 40)
    probes = quantised(rng, 40, 16)
    n = 300 if tile == 1 else 900
    dis = quantised(rng, n, 16)
    res = megaface_evaluate(probes, ids, dis, ranks=10, fars=fars, tile=tile,
                            min_buffer=min_buffer, distractor_list="unit")
    cmc, tars, searches, genuine = dense_reference(probes, ids, dis, 10, fars)
    np.testing.assert_array_equal(res.cmc, cmc)
    assert res.rank1 == cmc[0]
    assert res.tar_at_far == pytest.approx(tars)
    assert res.probe_pairs == searches and res.genuine_pairs == genuine
    assert res.distractors == n and res.probes == 40 and res.distractor_list == "unit"


def test_streamed_accepts_memmap_and_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(5), 4)
    probes = quantised(rng, 20, 8)
    dis = quantised(rng, 300, 8)
    np.save(tmp_path / "d.npy", dis)
    mm = np.load(tmp_path / "d.npy", mmap_mode="r")
    a = megaface_evaluate(probes, ids, mm, tile=33, fars=(0.01,))
    b = megaface_evaluate(torch.from_numpy(probes), ids, torch.from_numpy(dis), tile=300,
                          fars=(0.01,))
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert a.tar_at_far == b.tar_at_far


def test_rank1_official_definition_by_hand() -> None:
    # identity 0: probes p0, p1, p2; identity 1: p3 alone (no search from or to it)
    probes = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    ids = np.array([0, 0, 0, 1])
    # best distractor similarity per probe: p0 0.9, p1 0.96, p2 0.8
    dis = np.array([[0.9, 0.0], [0.0, 0.0]], dtype=np.float32)
    # sims: p0-p1 .8 p0-p2 .6 p1-p2 .96 ; distractor max per probe: p0 .9, p1 .72, p2 .54
    # searches (p,q): (0,1) .8>.9 no, (0,2) .6>.9 no, (1,0) .8>.72 yes, (1,2) .96>.72 yes,
    # (2,0) .6>.54 yes, (2,1) .96>.54 yes -> 4/6
    assert rank1(probes, ids, dis) == pytest.approx(4 / 6)
    # a distractor that ties with the mate ranks ahead of it (strict >)
    tie = np.array([[0.8, 0.6]], dtype=np.float32)  # sim with p0 = 0.8 = sim(p0, p1)
    r = megaface_evaluate(probes[:2], ids[:2], tie, ranks=1, fars=())
    # (0,1): .8 > .8 no; (1,0): .8 > sim(p1,tie)=1.0 no
    assert r.rank1 == 0.0


def ops_for(kind: str, p: int, width: int) -> NumpyOps | TorchOps:
    return NumpyOps(p, width) if kind == "numpy" else TorchOps(torch.device("cpu"))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("keep", [0, 37, 1000])  # bound path / dense-hold path
def test_stream_state_matches_dense(kind: str, keep: int) -> None:
    rng = np.random.default_rng(0)
    probes = torch.from_numpy(quantised(rng, 10, 8))
    dis = quantised(rng, 200, 8)
    st = stream_topk(probes, dis, k=5, keep=keep, tile=16, min_buffer=1,
                     ops=ops_for(kind, 10, 16))
    dense = probes.double() @ torch.from_numpy(dis).double().T
    torch.testing.assert_close(st.topk.double(), dense.topk(5, dim=1).values)
    torch.testing.assert_close(st.global_top.double(), dense.reshape(-1).topk(keep).values)
    # k larger than the gallery is clamped
    assert stream_topk(probes, dis[:3], k=10).topk.shape == (10, 3)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_torch_and_numpy_post_processing_agree(kind: str) -> None:
    rng = np.random.default_rng(8)
    probes, dis = quantised(rng, 40, 16), quantised(rng, 700, 16)
    st = stream_topk(torch.from_numpy(probes), dis, k=10, keep=50, tile=64, min_buffer=1,
                     ops=ops_for(kind, 40, 64))
    ref = stream_topk(torch.from_numpy(probes), dis, k=10, keep=50, tile=700)
    assert torch.equal(st.topk, ref.topk) and torch.equal(st.global_top, ref.global_top)


@pytest.mark.parametrize("level", [-10.0, 1.5, 2.5, 10.0])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_candidates_match_nonzero(level: float, kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(50, 37, generator=g)
    thr = torch.full((50,), level) + torch.randn(50, generator=g)  # some rows above, some not
    ops = ops_for(kind, 50, 37)
    rows, vals = ops.candidates(ops.view(s), thr.numpy() if kind == "numpy" else thr)
    want = torch.nonzero(s > thr[:, None])
    np.testing.assert_array_equal(np.asarray(rows), want[:, 0].numpy())
    np.testing.assert_array_equal(np.asarray(vals), s[want[:, 0], want[:, 1]].numpy())


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merge_topk_matches_dense(kind: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    topk = torch.randn(20, 4, generator=g).sort(dim=1, descending=True).values
    topk[3] = 0.5  # ties between the current top-K and candidates
    cand = torch.randint(0, 5, (200,), generator=g).float() / 4  # ties with each other
    rows = torch.randint(0, 20, (200,), generator=g).sort().values
    dense = torch.full((20, 200), -math.inf)
    dense[rows, torch.arange(200)] = cand
    want = torch.cat([topk, dense], dim=1).topk(4, dim=1).values
    if kind == "numpy":
        NumpyOps.merge_topk(topk.numpy(), rows.numpy(), cand.numpy())
    else:
        TorchOps.merge_topk(topk, rows, cand)
    assert torch.equal(topk, want)


def test_same_identity_pairs() -> None:
    ids = np.array(["b", "a", "b", "c", "a", "b"])
    a, b = _same_identity_pairs(ids)
    got = sorted(zip(a.tolist(), b.tolist(), strict=True))
    want = sorted((p, q) for p in range(6) for q in range(6) if p != q and ids[p] == ids[q])
    assert got == want


def test_errors() -> None:
    probes = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="two probe images"):
        rank1(probes, np.arange(4), probes)
    with pytest.raises(ValueError, match="probe ids"):
        rank1(probes, np.arange(3), probes)
    with pytest.raises(ValueError, match="-d"):
        rank1(probes, np.zeros(4), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"FARs must be in \[0, 1\]"):
        megaface_evaluate(probes, np.zeros(4), probes, fars=(1.5,))
    with pytest.raises(ValueError, match="ranks"):
        megaface_evaluate(probes, np.zeros(4), probes, ranks=0)
    for tile in (0, -3):  # range(0, m, 0) would fail with an unrelated message
        with pytest.raises(ValueError, match=f"tile must be at least 1 distractor, got {tile}"):
            megaface_evaluate(probes, np.zeros(4), probes, tile=tile)
        with pytest.raises(ValueError, match="tile must be at least 1"):
            stream_topk(torch.from_numpy(probes), probes, k=1, tile=tile)
    huge = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="use a smaller FAR"):  # checked before any scoring
        megaface_evaluate(probes, np.zeros(4), np.broadcast_to(huge, (20_000_000, 4)), fars=(1.0,))


def test_load_megaface_lists_and_noise(tmp_path: Path) -> None:
    for name in ("a/1.jpg", "a/2.jpg", "b b/1.jpg", "d/1.jpg", "d/2.jpg", "d/3.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "facescrub.txt").write_text("a/1.jpg A\na/2.jpg A\nb b/1.jpg B\n")
    (tmp_path / "facescrub_noises.txt").write_text("# noise\na/2.jpg\n")
    (tmp_path / "distractors.txt").write_text("d/1.jpg\nd/2.jpg\nd/3.jpg\n")
    (tmp_path / "megaface_noises.txt").write_text("d/2.jpg\n")
    ms = load_megaface(tmp_path)
    assert [p.name for p in ms.probe_paths] == ["1.jpg", "1.jpg"] and ms.probe_ids == ["A", "B"]
    assert [p.parent.name + "/" + p.name for p in ms.distractor_paths] == ["d/1.jpg", "d/3.jpg"]
    assert "distractors.txt" in ms.distractor_list and "1 removed by megaface_noises.txt" in (
        ms.distractor_list
    )
    (tmp_path / "distractors.txt").write_text("d/1.jpg\nd/9.jpg\n")
    with pytest.raises(FileNotFoundError, match="d/9.jpg"):
        load_megaface(tmp_path)
    (tmp_path / "facescrub.txt").write_text("lonely\n")
    with pytest.raises(ValueError, match=r"facescrub.txt:1"):
        load_megaface(tmp_path)
