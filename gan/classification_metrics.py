"""Classification metrics with 95 % bootstrap confidence intervals (binary and one-vs-rest multi-label).

Conventions:

* Labels are 0/1 (``y_true``); ``y_score`` is a score where larger means "positive" (a probability or a logit);
  hard predictions are ``y_score >= threshold``.
* A ratio whose denominator is zero (e.g. precision with no positive prediction) is 0.0, as scikit-learn's
  ``zero_division=0``.
* AUC is the area under the ROC curve computed as the Mann–Whitney U statistic, ``U / (n_pos · n_neg)``, with
  tied scores counted ½ (average ranks); it is undefined (ValueError) when only one class is present.
* Confidence intervals (:func:`bootstrap_ci`): percentile bootstrap. With ``groups`` (the subject of each sample)
  it is a two-stage cluster bootstrap: resample subjects with replacement, then samples with replacement within
  each drawn subject, so the interval reflects between-subject variation as well as sampling within subjects.
  Resamples on which the metric is undefined (one class only, for AUC) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BINARY_METRICS",
    "MetricCI",
    "accuracy",
    "binary_report",
    "bootstrap_ci",
    "confusion",
    "f1",
    "precision",
    "recall",
    "roc_auc",
    "specificity",
]


def _binary(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` of binary labels and binary predictions."""
    t, p = _binary(y_true), _binary(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"labels {t.shape} and predictions {p.shape} differ in shape")
    return int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(~t & ~p)), int(np.sum(t & ~p))


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """(tp + tn) / n."""
    tp, fp, tn, fn = confusion(y_true, y_pred)
    return _ratio(tp + tn, tp + fp + tn + fn)


def precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """tp / (tp + fp) (positive predictive value)."""
    tp, fp, _, _ = confusion(y_true, y_pred)
    return _ratio(tp, tp + fp)


def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """tp / (tp + fn) (sensitivity)."""
    tp, _, _, fn = confusion(y_true, y_pred)
    return _ratio(tp, tp + fn)


def specificity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """tn / (tn + fp) (true-negative rate)."""
    _, fp, tn, _ = confusion(y_true, y_pred)
    return _ratio(tn, tn + fp)


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """2·tp / (2·tp + fp + fn) (harmonic mean of precision and recall)."""
    tp, fp, _, fn = confusion(y_true, y_pred)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve = Mann–Whitney U / (n_pos · n_neg), ties counted ½."""
    from scipy.stats import rankdata

    t = _binary(y_true)
    score = np.asarray(y_score, dtype=np.float64)
    if score.shape != t.shape:
        raise ValueError(f"labels {t.shape} and scores {score.shape} differ in shape")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined with only one class present")
    ranks = rankdata(score)  # average ranks for ties
    u = float(ranks[t].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class MetricCI:
    """A point estimate with its bootstrap interval (``skipped``: resamples on which the metric was undefined)."""

    value: float
    low: float
    high: float
    skipped: int = 0


def _resample(rng: np.random.Generator, n: int, members: list[np.ndarray] | None) -> np.ndarray:
    if members is None:
        return rng.integers(0, n, n)
    drawn = rng.integers(0, len(members), len(members))
    return np.concatenate([m[rng.integers(0, len(m), len(m))] for m in (members[i] for i in drawn)])


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    groups: Sequence[str] | np.ndarray | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> MetricCI:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` samples (see the module docstring).

    ``statistic`` receives an index array into the data (all of ``range(n)`` for the point estimate); a resample
    raising ValueError (metric undefined) is skipped. ``groups`` (one id per sample) makes it a two-stage cluster
    bootstrap by group.
    """
    if n < 1:
        raise ValueError("bootstrap needs at least one sample")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    members = None
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (n,):
            raise ValueError(f"groups must hold one id per sample ({n}), got shape {labels.shape}")
        members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    value = float(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(resamples):
        try:
            values.append(float(statistic(_resample(rng, n, members))))
        except ValueError:
            skipped += 1
    if not values:
        return MetricCI(value, float("nan"), float("nan"), skipped)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return MetricCI(value, float(low), float(high), skipped)


#: Threshold metrics of :func:`binary_report`, by name.
BINARY_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "specificity": specificity,
}


def binary_report(
    y_true: np.ndarray,
    y_score: np.ndarray,
    threshold: float = 0.5,
    groups: Sequence[str] | np.ndarray | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, MetricCI]:
    """Accuracy, precision, recall, F1, specificity (at ``score >= threshold``) and AUC, each with a 95 % CI."""
    t = _binary(y_true).astype(np.int64)
    score = np.asarray(y_score, dtype=np.float64)
    pred = (score >= threshold).astype(np.int64)
    report = {
        name: bootstrap_ci(lambda i, fn=fn: fn(t[i], pred[i]), len(t), groups, resamples=resamples, seed=seed)
        for name, fn in BINARY_METRICS.items()
    }
    report["auc"] = bootstrap_ci(lambda i: roc_auc(t[i], score[i]), len(t), groups, resamples=resamples, seed=seed)
    return report
