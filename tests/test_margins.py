"""Margins against hand-computed values, fp32 under autocast, and no NaN at cos = ±1."""

from __future__ import annotations

import math

import pytest
import torch

from f2c.heads import MarginConfig, margin_logits, margined_target_cosine


def _one_row(cos: list[float], target: int, cfg: MarginConfig) -> list[float]:
    out = margin_logits(torch.tensor([cos]), torch.tensor([target]), cfg)
    return out[0].tolist()


def test_cosface_subtracts_margin_from_target_only() -> None:
    cfg = MarginConfig("cosface", 0.4, scale=32.0)
    # target 0.5 → 32·(0.5 − 0.4) = 3.2; others 32·cos.
    assert _one_row([0.5, 0.3, -0.2], 0, cfg) == pytest.approx([3.2, 9.6, -6.4], abs=1e-5)


def test_arcface_adds_angle_to_target() -> None:
    cfg = MarginConfig("arcface", 0.5, scale=64.0)
    # θ = acos(0.5) = 60°; cos(60° + 0.5 rad) = cos(1.5471976) = 0.0235963.
    expected = math.cos(math.pi / 3 + 0.5)
    assert expected == pytest.approx(0.0235963, abs=1e-6)
    out = _one_row([0.3, 0.5], 1, cfg)
    assert out == pytest.approx([64 * 0.3, 64 * expected], abs=1e-4)


def test_arcface_fallback_beyond_pi() -> None:
    cfg = MarginConfig("arcface", 0.5, scale=1.0)
    # cos(π − 0.5) = −0.8775826; −0.95 is below it, so the target is −0.95 − 0.5·sin(0.5).
    value = margined_target_cosine(torch.tensor([-0.95, -0.8]), cfg)
    assert value[0].item() == pytest.approx(-0.95 - 0.5 * 0.4794255, abs=1e-6)
    # −0.8 is above the threshold: the real cos(θ + m).
    assert value[1].item() == pytest.approx(math.cos(math.acos(-0.8) + 0.5), abs=1e-6)


def test_arcface_is_finite_with_finite_grad_at_plus_minus_one() -> None:
    cfg = MarginConfig("arcface", 0.5)
    cos = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0000001, 0.2]], requires_grad=True)
    target = torch.tensor([0, 0, 0])
    out = margin_logits(cos, target, cfg)
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(32 * math.cos(0.5), abs=1e-4)
    assert out[1, 0].item() == pytest.approx(32 * (-1 - 0.5 * math.sin(0.5)), abs=1e-4)
    out.sum().backward()
    assert cos.grad is not None and torch.isfinite(cos.grad).all()


def test_svsoftmax_reweights_hard_negatives_only() -> None:
    cfg = MarginConfig("svsoftmax", 0.4, scale=32.0, sv_t=1.2)
    # Margined target 0.5 − 0.4 = 0.1: 0.3 is hard → 1.2·0.3 + 0.2 = 0.56; 0.05 is easy.
    out = _one_row([0.5, 0.3, 0.05], 0, cfg)
    assert out == pytest.approx([3.2, 32 * 0.56, 32 * 0.05], abs=1e-4)


def test_svsoftmax_uses_given_target_cosine_when_target_not_local() -> None:
    cfg = MarginConfig("svsoftmax", 0.0, scale=1.0, sv_t=2.0)
    cos = torch.tensor([[0.6, 0.2]])
    # The row's target lives elsewhere (−1) with cosine 0.4: 0.6 is hard → 2·0.6 + 1 = 2.2.
    out = margin_logits(cos, torch.tensor([-1]), cfg, target_cos=torch.tensor([0.4]))
    assert out[0].tolist() == pytest.approx([2.2, 0.2], abs=1e-6)


def test_rows_without_local_target_get_no_margin() -> None:
    cfg = MarginConfig("cosface", 0.35, scale=10.0)
    out = margin_logits(torch.tensor([[0.1, 0.2]]), torch.tensor([-1]), cfg)
    assert out[0].tolist() == pytest.approx([1.0, 2.0], abs=1e-6)


def test_fp32_under_autocast() -> None:
    cfg = MarginConfig("arcface", 0.5)
    cos = torch.tensor([[0.5, 0.25]], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = margin_logits(cos, torch.tensor([0]), cfg)
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "softmax", "margin": 0.1},
        {"kind": "cosface", "margin": -0.1},
        {"kind": "arcface", "margin": 3.2},
        {"kind": "cosface", "margin": 0.4, "scale": 0.0},
        {"kind": "svsoftmax", "margin": 0.4, "sv_t": 0.5},
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MarginConfig(**kwargs)  # type: ignore[arg-type]
