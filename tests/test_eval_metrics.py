"""Metric functions against brute-force sweeps and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_curve as sk_roc_curve

from f2c.evaluation.metrics import (
    best_threshold,
    kfold_accuracy,
    kfold_evaluate,
    roc_curve,
    tar_at_far,
    tar_at_far_roc_nearest,
    tar_at_fars,
)


def brute_best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Every midpoint + the two outer candidates, swept in ascending order, first max wins."""
    v = sorted(set(scores.tolist()))
    cands = [v[0] - 1.0] + [(a + b) / 2 for a, b in zip(v, v[1:], strict=False)] + [v[-1] + 1.0]
    best_t, best_acc = None, -1.0
    for t in cands:
        acc = sum(bool(s > t) == bool(y) for s, y in zip(scores, same, strict=True)) / len(scores)
        if acc > best_acc:
            best_t, best_acc = t, acc
    assert best_t is not None
    return best_t, best_acc


def brute_kfold(scores: np.ndarray, same: np.ndarray, folds: int) -> list[float]:
    n = len(scores) // folds
    accs = []
    for i in range(folds):
        test = np.arange(i * n, (i + 1) * n)
        train = np.setdiff1d(np.arange(len(scores)), test)
        t, _ = brute_best_threshold(scores[train], same[train])
        accs.append(np.mean((scores[test] > t) == same[test]))
    return accs


def make_pairs(rng: np.random.Generator, n: int, discrete: bool) -> tuple[np.ndarray, np.ndarray]:
    same = rng.random(n) < 0.5
    if discrete:  # heavy ties: 7 distinct values
        scores = rng.integers(0, 7, n) / 6.0 + same * 0.2
        scores = np.round(scores * 3) / 3
    else:
        scores = rng.normal(same * 1.0, 1.0)
    return scores, same


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_matches_brute_force(seed: int, discrete: bool) -> None:
    rng = np.random.default_rng(seed)
    scores, same = make_pairs(rng, 97, discrete)
    t, acc = best_threshold(scores, same)
    bt, bacc = brute_best_threshold(scores, same)
    assert acc == pytest.approx(bacc)
    assert t == pytest.approx(bt)


def test_best_threshold_ties_go_to_the_lowest_candidate() -> None:
    # Both "between 0.2 and 0.4" and "between 0.6 and 0.8" give 3/4 correct; take the lower.
    scores = np.array([0.2, 0.4, 0.6, 0.8])
    same = np.array([False, True, False, True])
    t, acc = best_threshold(scores, same)
    assert acc == 0.75
    assert t == pytest.approx(0.3)


def test_best_threshold_outer_candidates() -> None:
    t, acc = best_threshold([0.1, 0.5], [True, True])
    assert acc == 1.0 and t < 0.1
    t, acc = best_threshold([0.1, 0.5], [False, False])
    assert acc == 1.0 and t > 0.5
    # equal scores can never be split: accuracy is the majority of the tied group
    t, acc = best_threshold([0.3, 0.3, 0.3], [True, False, True])
    assert acc == pytest.approx(2 / 3)


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_kfold_matches_brute_force(seed: int, discrete: bool) -> None:
    rng = np.random.default_rng(seed)
    scores, same = make_pairs(rng, 120, discrete)
    r = kfold_evaluate(scores, same, folds=10)
    np.testing.assert_allclose(r.accuracies, brute_kfold(scores, same, 10))
    mean, std = kfold_accuracy(scores, same, 10)
    assert mean == pytest.approx(np.mean(r.accuracies))
    assert std == pytest.approx(np.std(r.accuracies))  # ddof = 0


def test_kfold_uses_contiguous_folds_in_order() -> None:
    # Fold i holds pairs [10i, 10i+10). Folds 0-8 separate at 0; fold 9 is inverted, so it
    # (and only it) scores 0 with a threshold learnt on the others. Any interleaved split
    # would spread the inverted pairs over every fold.
    same = np.tile([True] * 5 + [False] * 5, 10)
    scores = np.where(same, 1.0, -1.0)
    scores[90:] *= -1
    r = kfold_evaluate(scores, same, folds=10)
    expected = np.ones(10)
    expected[9] = 0.0
    np.testing.assert_array_equal(r.accuracies, expected)
    # reversing the pair order moves the bad fold to position 0
    r2 = kfold_evaluate(scores[::-1], same[::-1], folds=10)
    assert r2.accuracies[0] == 0.0 and r2.accuracies[1:].min() == 1.0


def test_kfold_refuses_uneven_split_and_bad_input() -> None:
    with pytest.raises(ValueError, match="equal contiguous folds"):
        kfold_accuracy(np.zeros(11), np.zeros(11, bool), folds=10)
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy(np.full(10, np.nan), np.zeros(10, bool), folds=2)
    with pytest.raises(ValueError, match="boolean"):
        kfold_accuracy(np.zeros(10), np.full(10, 2), folds=2)
    with pytest.raises(ValueError, match="entries"):
        kfold_accuracy(np.zeros(10), np.zeros(8, bool), folds=2)


def brute_tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """Highest TAR over all thresholds t (accept iff s > t) whose FAR <= far."""
    gen, imp = scores[same], scores[~same]
    best = 0.0
    for t in np.concatenate(([-np.inf], np.unique(scores))):
        if np.mean(imp > t) <= far:
            best = max(best, float(np.mean(gen > t)))
    return best


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("far", [0.0, 1e-3, 0.01, 0.05, 0.1, 0.37, 1.0])
def test_tar_at_far_matches_brute_force(far: float, discrete: bool) -> None:
    rng = np.random.default_rng(7)
    scores, same = make_pairs(rng, 600, discrete)
    assert tar_at_far(scores, same, far) == pytest.approx(brute_tar_at_far(scores, same, far))


def test_tar_at_far_threshold_rule_is_strict() -> None:
    # 10 impostors; FAR 0.2 -> k = 2 -> threshold = 3rd largest impostor = 0.7
    imp = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    gen = np.array([0.75, 0.7, 0.71, 0.65])
    scores = np.concatenate([gen, imp])
    same = np.arange(14) < 4
    assert tar_at_far(scores, same, 0.2) == pytest.approx(0.5)  # 0.75, 0.71 > 0.7; 0.7 is not
    assert tar_at_far(scores, same, 0.0) == 0.0  # nothing above the largest impostor
    assert tar_at_far(scores, same, 1.0) == 1.0
    assert tar_at_fars(scores, same, [0.0, 0.2, 1.0]) == [0.0, 0.5, 1.0]


@given(
    st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=2, max_size=60),
    st.floats(0, 1),
)
@settings(max_examples=150, deadline=None)
def test_tar_at_far_property(pairs: list[tuple[int, bool]], far: float) -> None:
    scores = np.array([p[0] for p in pairs], dtype=float)
    same = np.array([p[1] for p in pairs])
    if same.all() or not same.any():
        return
    tar = tar_at_far(scores, same, far)
    assert tar == pytest.approx(brute_tar_at_far(scores, same, far))
    # the achieved FAR never exceeds the requested one
    imp = np.sort(scores[~same])[::-1]
    k = math.floor(far * imp.size)
    t = imp[k] if k < imp.size else -np.inf
    assert np.mean(imp > t) <= far + 1e-12


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("discrete", [False, True])
def test_roc_curve_matches_sklearn(discrete: bool, drop: bool) -> None:
    rng = np.random.default_rng(11)
    scores, same = make_pairs(rng, 500, discrete)
    ours = roc_curve(scores, same, drop_intermediate=drop)
    fpr, tpr, thr = sk_roc_curve(same, scores, drop_intermediate=drop)
    np.testing.assert_allclose(ours.fpr, fpr)
    np.testing.assert_allclose(ours.tpr, tpr)
    np.testing.assert_allclose(ours.thresholds[1:], thr[1:])


def insightface_roc_nearest(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """insightface's IJB rule, literally: sklearn's ROC, flipped ("select largest tpr at same
    fpr"), then the first minimum of (|fpr - far|, index)."""
    fpr, tpr, _ = sk_roc_curve(same, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(np.abs(fpr - far), range(len(fpr)), strict=True))
    return float(tpr[i])


@pytest.mark.parametrize("discrete", [False, True])
def test_roc_nearest_matches_insightface(discrete: bool) -> None:
    rng = np.random.default_rng(5)
    scores, same = make_pairs(rng, 2000, discrete)
    fars = [1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5]
    expected = [insightface_roc_nearest(scores, same, f) for f in fars]
    assert tar_at_far_roc_nearest(scores, same, fars) == pytest.approx(expected)
    assert tar_at_far_roc_nearest(scores, same, 0.01) == pytest.approx(expected[2])


def test_roc_nearest_takes_the_largest_tpr_among_equally_near_points() -> None:
    # ROC (0,0) (.5,0) (.5,1) (1,1): at FAR .5 the vertical step's top, not its foot
    scores, same = np.array([0.9, 0.8, 0.7, 0.1]), np.array([0, 1, 1, 0], dtype=bool)
    assert tar_at_far_roc_nearest(scores, same, 0.5) == 1.0
    assert insightface_roc_nearest(scores, same, 0.5) == 1.0
    # FAR .25 is as near to FPR 0 as to FPR .5: the later point wins there too
    assert tar_at_far_roc_nearest(scores, same, 0.25) == 1.0
    assert insightface_roc_nearest(scores, same, 0.25) == 1.0
