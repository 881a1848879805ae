"""FullFC and PartialFC on one process: losses, gradients, sampling and state."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from f2c.heads import (
    FullFC,
    HeadBatch,
    MarginConfig,
    PartialFC,
    build_head,
    shard_range,
    sharded_cross_entropy,
)

C, D, N = 40, 8, 12


def _reference_loss(
    emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, cfg: MarginConfig
) -> torch.Tensor:
    """Plain margin softmax over all classes, written out directly."""
    cos = F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).T
    rows = torch.arange(len(labels))
    c_t = cos[rows, labels]
    if cfg.kind == "arcface":
        target = torch.cos(torch.acos(c_t.clamp(-1, 1)) + cfg.margin)
    else:
        target = c_t - cfg.margin
    logits = cos.clone()
    if cfg.kind == "svsoftmax":
        hard = cos > target[:, None]
        logits = torch.where(hard, cfg.sv_t * cos + cfg.sv_t - 1, cos)
    logits[rows, labels] = target
    return F.cross_entropy(cfg.scale * logits, labels)


def _batch(emb: torch.Tensor, labels: torch.Tensor) -> HeadBatch:
    """Both views' rows at once, as the FC heads see them (the split does not matter to them)."""
    return HeadBatch(emb, labels, split=emb.shape[0] // 2)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=gen), torch.randint(0, C, (N,), generator=gen)


def test_sharded_cross_entropy_is_cross_entropy_on_one_process() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 7, generator=gen) * 5).requires_grad_(True)
    target = torch.tensor([0, 6, 3, 3, 1])
    ours = sharded_cross_entropy(logits, target)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits, target, reduction="none")
    assert torch.allclose(ours, ref, atol=1e-5)
    weights = torch.arange(1.0, 6.0)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert logits.grad is not None and ref_logits.grad is not None
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosface", "arcface", "svsoftmax"])
def test_full_fc_matches_reference(kind: str) -> None:
    cfg = MarginConfig(kind, 0.3, scale=16.0)  # type: ignore[arg-type]
    head = FullFC(C, D, cfg)
    emb, labels = _data()
    emb.requires_grad_(True)
    out = head(_batch(emb, labels))
    ref_emb = emb.detach().clone().requires_grad_(True)
    ref_w = head.weight.detach().clone().requires_grad_(True)
    ref = _reference_loss(ref_emb, ref_w, labels, cfg)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    out.loss.backward()
    ref.backward()
    assert emb.grad is not None and ref_emb.grad is not None
    assert torch.allclose(emb.grad, ref_emb.grad, atol=1e-5)
    assert head.weight.grad is not None and ref_w.grad is not None
    assert torch.allclose(head.weight.grad, ref_w.grad, atol=1e-4)


def test_partial_fc_at_rate_one_is_full_fc() -> None:
    cfg = MarginConfig("cosface", 0.4)
    full, part = FullFC(C, D, cfg), PartialFC(C, D, cfg, sample_rate=1.0)
    assert torch.equal(full.weight, part.weight)  # the same seeded init
    emb, labels = _data(1)
    a, b = full(_batch(emb, labels)).loss, part(_batch(emb, labels)).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    a.backward()
    b.backward()
    assert full.weight.grad is not None and part.weight.grad is not None
    assert torch.allclose(full.weight.grad, part.weight.grad, atol=1e-6)


def test_partial_fc_samples_positives_and_scatters_grads() -> None:
    cfg = MarginConfig("cosface", 0.4, scale=16.0)
    torch.manual_seed(0)
    head = PartialFC(C, D, cfg, sample_rate=0.5)
    assert head.num_sample == 20
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(3):
        emb, labels = _data(10 + step)
        weight_before = head.weight.detach().clone()
        opt.zero_grad(set_to_none=True)
        out = head(_batch(emb, labels))
        sampled = head.last_sampled
        assert sampled is not None and sampled.numel() == 20
        assert set(labels.tolist()) <= set(sampled.tolist())
        assert torch.equal(sampled, sampled.sort().values)
        # The loss is the full margin softmax restricted to the sampled classes.
        remap = {c: i for i, c in enumerate(sampled.tolist())}
        ref_w = weight_before[sampled].clone().requires_grad_(True)
        ref = _reference_loss(emb, ref_w, torch.tensor([remap[c] for c in labels.tolist()]), cfg)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        out.loss.backward()
        ref.backward()
        grad = head.weight.grad
        assert grad is not None and ref_w.grad is not None
        assert torch.allclose(grad[sampled], ref_w.grad, atol=1e-5)
        others = torch.ones(C, dtype=torch.bool)
        others[sampled] = False
        # The re-used buffer holds no rows from earlier steps.
        assert torch.count_nonzero(grad[others]) == 0
        opt.step()
    assert out.stats["sampled_classes"] == 20.0


def test_partial_fc_accumulates_without_zero_grad() -> None:
    cfg = MarginConfig("cosface", 0.4)
    torch.manual_seed(1)
    head = PartialFC(C, D, cfg, sample_rate=0.25)
    emb1, lab1 = _data(20)
    emb2, lab2 = _data(21)
    head(_batch(emb1, lab1)).loss.backward()
    first = head.weight.grad.clone()  # type: ignore[union-attr]
    rows1 = head.last_sampled
    head(_batch(emb2, lab2)).loss.backward()
    rows2 = head.last_sampled
    assert rows1 is not None and rows2 is not None
    second_only = head.weight.grad - first  # type: ignore[operator]
    mask = torch.zeros(C, dtype=torch.bool)
    mask[rows2] = True
    assert torch.count_nonzero(second_only[~mask]) == 0
    assert torch.count_nonzero(second_only[mask]) > 0


def test_heads_keep_fp32_under_autocast() -> None:
    emb, labels = _data(2)
    for name in ("fc", "partial_fc"):
        head = build_head(name, num_classes=C, embedding_size=D,  # type: ignore[arg-type]
                          margin=MarginConfig("arcface", 0.5), batch_size=N, pool_size=None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(_batch(emb.bfloat16(), labels))
        assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
        assert head.requires_gallery is False


def test_shard_ranges_cover_classes_contiguously() -> None:
    for c, w in [(10, 3), (7, 7), (1_000_003, 8)]:
        ranges = [shard_range(c, w, r) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == c
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        sizes = [e - s for s, e in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_init_is_the_same_per_class_whatever_the_shard() -> None:
    head = FullFC(70_000, 4, MarginConfig("cosface", 0.4))  # spans two init chunks
    start, end = 65_530, 65_540
    assert torch.equal(head._init_rows(start, end, 0), head.weight.detach()[start:end])


def test_state_round_trip_and_refusals() -> None:
    cfg = MarginConfig("cosface", 0.4)
    head = PartialFC(C, D, cfg, sample_rate=0.5)
    with torch.no_grad():
        head.weight.mul_(3.0)
    buf = io.BytesIO()
    torch.save(head.full_state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = FullFC(C, D, cfg, init_seed=5)
    other.load_full_state_dict(state)  # partial_fc and fc share the centre format
    assert torch.equal(other.weight, head.weight)
    with pytest.raises(ValueError, match="shape"):
        FullFC(C + 1, D, cfg).load_full_state_dict(state)
    with pytest.raises(ValueError, match="class ids"):
        head(_batch(torch.randn(2, D), torch.tensor([0, C])))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(C, D, cfg, sample_rate=0.0)
    with pytest.raises(ValueError, match="unknown head"):
        build_head("arcface", num_classes=C, embedding_size=D,  # type: ignore[arg-type]
                   margin=cfg, batch_size=4, pool_size=None)
