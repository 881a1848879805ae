"""Heads across 2 gloo processes versus the same data on 1 process.

One spawn runs every distributed check (spawning torch processes costs seconds); the tests
below compare its saved results with single-process runs of the same functions.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from f2c.heads import DynamicClassPool, FullFC, HeadBatch, MarginConfig, PartialFC
from f2c.training.step import clip_gradients

WORLD = 2
D = 6
F2C_CLASSES, F2C_POOL, F2C_B = 40, 16, 4  # B per rank; the single process gets WORLD·B
FC_CLASSES, FC_ROWS = 11, 3  # 11 classes: shards of 6 and 5; FC_ROWS embeddings per rank
STEPS = 4


def _rows(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s rows when WORLD ranks' rows are concatenated; all of them for world 1."""
    if world == 1:
        return t
    n = t.shape[0] // world
    return t[rank * n : (rank + 1) * n]


def _f2c_batch(step: int) -> dict[str, torch.Tensor]:
    """WORLD ranks' views, concatenated in rank order; each rank: B identities + B/2 instances."""
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randperm(F2C_CLASSES, generator=gen)[: WORLD * F2C_B].view(WORLD, F2C_B)
    half = F2C_B // 2
    inst = torch.randint(0, F2C_CLASSES, (WORLD, 2, half), generator=gen)
    lx = torch.cat([ids, inst[:, 0]], dim=1).flatten()
    ly = torch.cat([ids, inst[:, 1]], dim=1).flatten()
    n = lx.numel()
    return {"lx": lx, "ly": ly, **{k: torch.randn(n, D, generator=gen)
                                   for k in ("px", "gx", "py", "gy")}}


def _f2c_run(rank: int, world: int) -> dict[str, Any]:
    cfg = MarginConfig("cosface", 0.35, scale=16.0)
    head = DynamicClassPool(F2C_CLASSES, D, F2C_POOL, F2C_B * WORLD // world, cfg)
    losses, grads = [], []
    for step in range(STEPS):
        b = {k: _rows(v, rank, world) for k, v in _f2c_batch(step).items()}
        px, py = b["px"].requires_grad_(True), b["py"].requires_grad_(True)
        loss = head(HeadBatch.from_views(px, b["lx"], py, b["ly"], b["gx"], b["gy"])).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([px.grad, py.grad]))  # type: ignore[list-item]
    return {"f2c_loss": torch.stack(losses), "f2c_grads": grads,
            "f2c_state": head.full_state_dict()}


def _batch_of(emb: torch.Tensor, labels: torch.Tensor) -> HeadBatch:
    return HeadBatch(emb, labels, split=emb.shape[0] // 2)


def _fc_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(WORLD * FC_ROWS, D, generator=gen)
    return emb, torch.randint(0, FC_CLASSES, (WORLD * FC_ROWS,), generator=gen)


def _fc_run(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    emb_all, labels_all = _fc_data()
    heads = {
        "fc": FullFC(FC_CLASSES, D, MarginConfig("svsoftmax", 0.2, scale=8.0)),
        "pfc1": PartialFC(FC_CLASSES, D, MarginConfig("arcface", 0.5, scale=8.0), 1.0),
    }
    for name, head in heads.items():
        emb = _rows(emb_all, rank, world).clone().requires_grad_(True)
        loss = head(_batch_of(emb, _rows(labels_all, rank, world))).loss
        loss.backward()
        out[f"{name}_loss"] = loss.detach()
        out[f"{name}_emb_grad"] = emb.grad
        out[f"{name}_weight_grad"] = head.weight.grad
        out[f"{name}_shard"] = (head.class_start, head.class_end)
        out[f"{name}_state"] = head.full_state_dict()
        # Gradient clipping's norm over sharded centres is the norm of the whole gradient.
        out[f"{name}_grad_norm"] = clip_gradients([], head.parameters(), max_norm=1e9)
    # Sampling per shard: positives kept, the gradient only on sampled rows.
    torch.manual_seed(rank)
    pfc = PartialFC(FC_CLASSES, D, MarginConfig("cosface", 0.4), 0.5)
    labels = _rows(labels_all, rank, world)
    pfc(_batch_of(_rows(emb_all, rank, world), labels)).loss.backward()
    sampled = pfc.last_sampled
    assert sampled is not None and pfc.weight.grad is not None
    local_pos = {int(c) - pfc.class_start for c in labels_all
                 if pfc.class_start <= int(c) < pfc.class_end}
    out["pfc_positives_kept"] = local_pos <= set(sampled.tolist())
    mask = torch.zeros(pfc.weight.shape[0], dtype=torch.bool)
    mask[sampled] = True
    out["pfc_grad_outside_sample"] = int(torch.count_nonzero(pfc.weight.grad[~mask]))
    # Re-sharding: load whole centres, get them back whole.
    whole = torch.arange(FC_CLASSES * D, dtype=torch.float32).view(FC_CLASSES, D)
    pfc.load_full_state_dict({"kind": "fc", "version": 1, "num_classes": FC_CLASSES,
                              "embedding_size": D, "weight": whole})
    out["reshard_shard"] = pfc.weight.detach().clone()
    out["reshard_full"] = pfc.full_state_dict()["weight"]
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        results = {**_f2c_run(rank, world), **_fc_run(rank, world)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(
        _worker, args=(WORLD, _free_port(), str(out_dir)), nprocs=WORLD, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process gloo run did not finish within 180 s")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return {**_f2c_run(0, 1), **_fc_run(0, 1)}


def test_f2c_pool_identical_on_both_ranks(ranks: list[dict[str, Any]]) -> None:
    a, b = ranks[0]["f2c_state"], ranks[1]["f2c_state"]
    assert torch.equal(a["prototypes"], b["prototypes"])
    assert torch.equal(a["pointers"], b["pointers"])
    assert torch.equal(a["index"]["keys"], b["index"]["keys"])
    assert torch.equal(a["index"]["slots"], b["index"]["slots"])


def test_f2c_two_ranks_equal_one_rank_with_twice_the_batch(
    ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    # The mean of the ranks' losses is the single process's loss: the in-pool and outlier means
    # are over both ranks' rows (per-rank means would differ whenever the ranks hold different
    # numbers of outlier rows).
    mean = (ranks[0]["f2c_loss"] + ranks[1]["f2c_loss"]) / WORLD
    assert torch.allclose(mean, single["f2c_loss"], rtol=1e-5, atol=1e-6)
    s, r = single["f2c_state"], ranks[0]["f2c_state"]
    assert torch.equal(s["prototypes"], r["prototypes"])
    assert torch.equal(s["pointers"], r["pointers"])
    assert torch.equal(s["index"]["keys"], r["index"]["keys"])
    assert torch.equal(s["index"]["slots"], r["index"]["slots"])
    # Probe gradients: rank r's rows, scaled by 1/world (DDP averages them).
    n = _f2c_batch(0)["lx"].numel()
    for step in range(STEPS):
        whole = single["f2c_grads"][step]
        px, py = whole[:n], whole[n:]
        for rank in range(WORLD):
            mine = torch.cat([_rows(px, rank, WORLD), _rows(py, rank, WORLD)])
            assert torch.allclose(ranks[rank]["f2c_grads"][step] / WORLD, mine, atol=1e-6)


@pytest.mark.parametrize("name", ["fc", "pfc1"])
def test_sharded_fc_equals_single_process(
    name: str, ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    for rank, res in enumerate(ranks):
        assert torch.allclose(res[f"{name}_loss"], single[f"{name}_loss"], rtol=1e-5)
        start, end = res[f"{name}_shard"]
        assert torch.allclose(
            res[f"{name}_weight_grad"], single[f"{name}_weight_grad"][start:end], atol=1e-6
        )
        # Embedding gradients are scaled by the world size to cancel DDP's averaging.
        assert torch.allclose(
            res[f"{name}_emb_grad"] / WORLD,
            _rows(single[f"{name}_emb_grad"], rank, WORLD),
            atol=1e-6,
        )
        assert torch.equal(res[f"{name}_state"]["weight"], single[f"{name}_state"]["weight"])
        assert res[f"{name}_grad_norm"] == pytest.approx(single[f"{name}_grad_norm"], rel=1e-5)
    assert [r[f"{name}_shard"] for r in ranks] == [(0, 6), (6, 11)]


def test_partial_fc_sampling_and_resharding(ranks: list[dict[str, Any]]) -> None:
    whole = torch.arange(FC_CLASSES * D, dtype=torch.float32).view(FC_CLASSES, D)
    for res in ranks:
        assert res["pfc_positives_kept"]
        assert res["pfc_grad_outside_sample"] == 0
        assert torch.equal(res["reshard_full"], whole)
    assert torch.equal(ranks[0]["reshard_shard"], whole[:6])
    assert torch.equal(ranks[1]["reshard_shard"], whole[6:])
