"""Exact verification metrics: k-fold accuracy, TAR at FAR, ROC curves.

Conventions shared by every function here:

* ``scores`` are similarities (higher = more alike), ``same`` is a boolean per pair.
* A pair is *accepted* (predicted "same") iff ``score > threshold`` — strictly greater.
* Thresholds are exact: computed from the sorted scores, never from a grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "KFoldResult",
    "RocCurve",
    "best_threshold",
    "kfold_accuracy",
    "kfold_evaluate",
    "roc_curve",
    "tar_at_far",
    "tar_at_far_roc_nearest",
    "tar_at_fars",
]


def _check_pairs(scores: npt.ArrayLike, same: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    if s.dtype.kind not in "fiu":
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    # float32 stays float32 (sorting 15M scores is twice as fast); other types become float64
    s = s.astype(s.dtype if s.dtype in (np.float32, np.float64) else np.float64, copy=False)
    s = s.ravel()
    y = np.asarray(same)
    if y.dtype != np.bool_:
        if y.dtype.kind not in "iu" or not np.isin(y, (0, 1)).all():
            raise ValueError("same must be boolean (or integers 0/1)")
        y = y.astype(np.bool_)
    y = y.ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} entries but same has {y.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return s, y


def best_threshold(scores: npt.ArrayLike, same: npt.ArrayLike) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs, exactly; returns (threshold, acc).

    Candidates are every midpoint between two consecutive distinct scores, plus one value below
    the smallest score (accept everything) and one above the largest (reject everything); these
    are all the distinct decisions a threshold can make. Pairs with equal scores always fall on
    the same side. Ties in accuracy go to the **lowest** candidate threshold. The two outer
    candidates are ``min - 1`` and ``max + 1`` so that the threshold stays finite.
    """
    s, y = _check_pairs(scores, same)
    if s.size == 0:
        raise ValueError("best_threshold needs at least one pair")
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=values.size)
    neg = np.bincount(inverse, weights=~y, minlength=values.size)
    # Threshold just above values[k]: negatives with score <= values[k] are correct, and so are
    # positives with score > values[k]. Index -1 (below everything): all positives correct.
    neg_at_or_below = np.cumsum(neg)
    pos_above = pos.sum() - np.cumsum(pos)
    correct = np.concatenate(([pos.sum()], neg_at_or_below + pos_above))
    best = int(np.argmax(correct))  # first maximum = lowest threshold
    if best == 0:
        threshold = values[0] - 1.0
    elif best == values.size:
        threshold = values[-1] + 1.0
    else:
        threshold = 0.5 * (values[best - 1] + values[best])
    return float(threshold), float(correct[best] / s.size)


@dataclass(frozen=True)
class KFoldResult:
    """Per-fold outcome of :func:`kfold_evaluate`."""

    accuracies: np.ndarray  # [folds] test accuracy of each fold
    thresholds: np.ndarray  # [folds] threshold chosen on the other folds

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        """Population standard deviation (ddof = 0) over folds, as in the LFW literature."""
        return float(self.accuracies.std())


def kfold_evaluate(scores: npt.ArrayLike, same: npt.ArrayLike, folds: int = 10) -> KFoldResult:
    """k-fold verification accuracy over **contiguous** folds.

    Fold ``i`` is pairs ``[i·n, (i+1)·n)`` with ``n = len(scores) / folds``; the pair count must be
    a multiple of ``folds`` (protocols fix it; an uneven split would silently change the
    protocol). Each fold is scored with the threshold chosen exactly on the other folds by
    :func:`best_threshold`; a pair is accepted iff its score is strictly above the threshold.
    """
    s, y = _check_pairs(scores, same)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if s.size == 0 or s.size % folds:
        raise ValueError(
            f"{s.size} pairs cannot be split into {folds} equal contiguous folds"
        )
    n = s.size // folds
    accs = np.empty(folds)
    thresholds = np.empty(folds)
    for i in range(folds):
        test = np.zeros(s.size, dtype=bool)
        test[i * n : (i + 1) * n] = True
        t, _ = best_threshold(s[~test], y[~test])
        accs[i] = np.mean((s[test] > t) == y[test])
        thresholds[i] = t
    return KFoldResult(accuracies=accs, thresholds=thresholds)


def kfold_accuracy(
    scores: npt.ArrayLike, same: npt.ArrayLike, folds: int = 10
) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 0) of :func:`kfold_evaluate`'s fold accuracies."""
    r = kfold_evaluate(scores, same, folds)
    return r.mean, r.std


def _impostor_thresholds(impostors: np.ndarray, fars: Sequence[float]) -> list[float]:
    n = impostors.size
    ks = []
    for far in fars:
        if not 0.0 <= far <= 1.0:
            raise ValueError(f"FAR must be in [0, 1], got {far}")
        ks.append(math.floor(far * n))
    inside = sorted({k for k in ks if k < n})
    # Descending rank k (0-based) is ascending index n-1-k; one partition serves every FAR.
    part = np.partition(impostors, [n - 1 - k for k in inside]) if inside else impostors
    return [float(part[n - 1 - k]) if k < n else -math.inf for k in ks]


def tar_at_fars(
    scores: npt.ArrayLike, same: npt.ArrayLike, fars: Sequence[float]
) -> list[float]:
    """Exact TAR at each FAR (see :func:`tar_at_far`); one partition of the impostor scores."""
    s, y = _check_pairs(scores, same)
    genuine, impostors = s[y], s[~y]
    if genuine.size == 0 or impostors.size == 0:
        raise ValueError("TAR@FAR needs at least one genuine and one impostor pair")
    thresholds = _impostor_thresholds(impostors, fars)
    return [float(np.mean(genuine > t)) for t in thresholds]


def tar_at_far(scores: npt.ArrayLike, same: npt.ArrayLike, far: float) -> float:
    """Exact true-accept rate at a false-accept rate ``far``.

    With ``N`` impostor scores sorted in descending order ``d[0] >= d[1] >= ...`` and
    ``k = floor(far · N)``, the threshold is ``t = d[k]`` (the (k+1)-th largest; ``-inf`` when
    ``k = N``) and a pair is accepted iff ``score > t`` (**strict**). Then at most ``k`` impostors
    are accepted, so the achieved FAR never exceeds ``far``; with ties at ``t`` it can be lower.
    (A non-strict ``>=`` rule at the same threshold would accept ``k + 1`` or more impostors and
    overshoot the FAR.) Returns the fraction of genuine scores above ``t``.
    """
    return tar_at_fars(scores, same, [far])[0]


@dataclass(frozen=True)
class RocCurve:
    """ROC points in order of decreasing threshold, starting at (0, 0)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # point i accepts scores >= thresholds[i]; thresholds[0] = +inf

    def tar_nearest(self, fars: Sequence[float]) -> list[float]:
        """TPR at the point whose FPR is nearest to each FAR; among equally near points the
        last one, which has the largest TPR (insightface flips the curve before its argmin,
        so the top of a vertical step wins over its foot)."""
        last = len(self.fpr) - 1
        rev = self.fpr[::-1]
        return [float(self.tpr[last - int(np.argmin(np.abs(rev - f)))]) for f in fars]


def roc_curve(
    scores: npt.ArrayLike, same: npt.ArrayLike, *, drop_intermediate: bool = False
) -> RocCurve:
    """ROC points, one per distinct score, equal to ``sklearn.metrics.roc_curve``'s output for
    the same ``drop_intermediate`` (sklearn's default is True; ours keeps every point). A
    point's rule is ``score >= threshold`` (sklearn's)."""
    s, y = _check_pairs(scores, same)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        raise ValueError("a ROC curve needs at least one genuine and one impostor pair")
    # Sorting values alone is ~15x faster than an argsort; counts come from binary searches.
    everything = np.sort(s)
    distinct = everything[np.flatnonzero(np.diff(everything, append=np.inf))]  # ascending
    tps = npos - np.searchsorted(np.sort(s[y]), distinct, side="left")[::-1]
    fps = nneg - np.searchsorted(np.sort(s[~y]), distinct, side="left")[::-1]
    thr = distinct[::-1]
    if drop_intermediate and len(fps) > 2:
        # sklearn's rule: drop points collinear with both neighbours (zero second difference)
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        tps, fps, thr = tps[keep], fps[keep], thr[keep]
    return RocCurve(
        fpr=np.concatenate(([0.0], fps / nneg)),
        tpr=np.concatenate(([0.0], tps / npos)),
        thresholds=np.concatenate(([np.inf], thr)),
    )


def tar_at_far_roc_nearest(
    scores: npt.ArrayLike, same: npt.ArrayLike, fars: Sequence[float] | float
) -> list[float] | float:
    """TAR at the ROC point whose FPR is nearest to each FAR (the largest TPR on ties).

    This reproduces insightface's IJB scripts: sklearn's ``roc_curve`` with its default
    ``drop_intermediate=True`` (which removes collinear points and so can change which point is
    nearest), flipped, then ``argmin |fpr - far|`` — so among equally near points the one with
    the largest TPR is taken (e.g. scores ``[.9, .8, .7, .1]``, labels ``[0, 1, 1, 0]``, FAR .5
    gives 1.0, not 0.0; ``docs/design.md`` §4). It can pick a point whose FPR exceeds ``far``.
    Kept for comparability; prefer the exact :func:`tar_at_far`.
    """
    single = isinstance(fars, (int, float))
    far_list = [float(fars)] if single else [float(f) for f in fars]  # type: ignore[union-attr]
    out = roc_curve(scores, same, drop_intermediate=True).tar_nearest(far_list)
    return out[0] if single else out
