"""Evaluation of the SE-CNN classifiers: probabilities, test reports with subject-level bootstrap CIs
(:mod:`gan.classification_metrics`) and the triage decision thresholds chosen on validation data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gan import triage
from gan.classification_metrics import MetricCI, binary_report, bootstrap_ci

__all__ = [
    "DEFAULT_MIN_RECALL",
    "choose_thresholds",
    "enhance_recall_specificity",
    "evaluate_lesion",
    "evaluate_triage",
    "flat_metrics",
    "predict",
]

#: Recall floor of the "enhance" decision on val when :func:`choose_thresholds` picks the diagnostic threshold.
DEFAULT_MIN_RECALL = 0.95


def predict(model: nn.Module, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Sigmoid probabilities N×K of ``model`` (switched to eval, no grad) on N×1×S×S images."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))).numpy())
    return np.concatenate(out)


def evaluate_triage(
    probabilities: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    thresholds: float | Mapping[str, float] = triage.DEFAULT_THRESHOLD,
) -> dict[str, dict[str, MetricCI]]:
    """One-vs-rest report per class, the "enhance" decision (score :func:`gan.triage.enhance_score`) and
    exact-match accuracy (all four labels right), each at ``thresholds`` with a subject-level bootstrap CI."""
    y = targets.astype(np.int64)
    t = triage.threshold_vector(thresholds)
    report = {
        name: binary_report(y[:, k], probabilities[:, k], t[k], groups, resamples=resamples, seed=seed)
        for k, name in enumerate(triage.TRIAGE_CLASSES)
    }
    report["enhance"] = binary_report(
        1 - y[:, 0], triage.enhance_score(probabilities, thresholds), 0.5, groups, resamples=resamples, seed=seed
    )
    exact = np.all((probabilities >= t) == y.astype(bool), axis=1).astype(np.float64)
    report["all"] = {
        "exact_match_accuracy": bootstrap_ci(
            lambda i: float(exact[i].mean()), len(exact), groups, resamples=resamples, seed=seed
        )
    }
    return report


def evaluate_lesion(
    probabilities: np.ndarray, targets: np.ndarray, groups: Sequence[str], resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, MetricCI]]:
    """Binary report of lesion vs no lesion at 0.5 with subject-level bootstrap CIs."""
    y = targets.reshape(-1).astype(np.int64)
    return {"lesion": binary_report(y, probabilities.reshape(-1), 0.5, groups, resamples=resamples, seed=seed)}


def flat_metrics(report: dict[str, dict[str, MetricCI]]) -> dict[str, float]:
    """A metrics report as the card stores it: ``test_{group}_{metric}`` with ``_ci_low`` / ``_ci_high``."""
    flat: dict[str, float] = {}
    for group, metrics in report.items():
        for metric, ci in metrics.items():
            key = f"test_{group}_{metric}"
            flat |= {key: ci.value, f"{key}_ci_low": ci.low, f"{key}_ci_high": ci.high}
    return flat


def _cut_points(score: np.ndarray) -> np.ndarray:
    """Candidate thresholds: midpoints between consecutive distinct scores, plus one below and one above all."""
    u = np.unique(np.clip(score, 1e-6, 1 - 1e-6))
    return np.concatenate([[u[0] / 2], (u[:-1] + u[1:]) / 2, [(u[-1] + 1) / 2]])


def _youden(y: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall, specificity and Youden's J (recall + specificity − 1) of each row of C×N boolean predictions."""
    positive = y.astype(bool)
    recall = predictions[:, positive].mean(axis=1) if positive.any() else np.zeros(len(predictions))
    specificity = (~predictions[:, ~positive]).mean(axis=1) if (~positive).any() else np.zeros(len(predictions))
    return recall, specificity, recall + specificity - 1


def _best_cut(cuts: np.ndarray, j: np.ndarray) -> float:
    """The middle of the range of cut points with the largest J (a maximum-margin choice when several tie)."""
    best = cuts[j >= j.max() - 1e-12]
    return float((best.min() + best.max()) / 2)


def choose_thresholds(
    probabilities: np.ndarray, targets: np.ndarray, min_recall: float = DEFAULT_MIN_RECALL
) -> dict[str, float]:
    """Per-class decision thresholds from VALIDATION probabilities/targets (N×4, :data:`gan.triage.TRIAGE_CLASSES`).

    Cut points are midpoints between consecutive distinct val scores. Each degradation class: the cut with the
    largest Youden's J (recall + specificity − 1) of that class. ``diagnostic`` (which only serves the "enhance"
    rule of :func:`gan.triage.interpret`): given those, the cut with the largest J of the enhance decision among
    those whose val enhance recall is at least ``min_recall``. When several cuts tie, the middle of their range.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    if p.ndim != 2 or p.shape[1] != len(triage.TRIAGE_CLASSES) or y.shape != p.shape:
        raise ValueError(f"expected N×{len(triage.TRIAGE_CLASSES)} probabilities and targets, got {p.shape}, {y.shape}")
    if not 0 < min_recall <= 1:
        raise ValueError(f"min_recall must be in (0, 1], got {min_recall}")
    chosen: dict[str, float] = {}
    for k, name in enumerate(triage.TRIAGE_CLASSES[1:], start=1):
        cuts = _cut_points(p[:, k])
        _, _, j = _youden(y[:, k], p[None, :, k] >= cuts[:, None])
        chosen[name] = _best_cut(cuts, j)
    cuts = _cut_points(p[:, 0])
    degraded_found = np.stack([p[:, k] >= chosen[n] for k, n in enumerate(triage.TRIAGE_CLASSES[1:], 1)]).any(0)
    enhance = degraded_found[None, :] | (p[None, :, 0] < cuts[:, None])
    recall, _, j = _youden(1 - y[:, 0], enhance)
    j = np.where(recall >= min_recall, j, -np.inf)  # the highest cut enhances everything: recall 1 is always there
    return {"diagnostic": _best_cut(cuts, j)} | chosen


def enhance_recall_specificity(
    probabilities: np.ndarray, targets: np.ndarray, thresholds: float | Mapping[str, float]
) -> tuple[float, float]:
    """Recall and specificity of the "enhance" decision (:func:`gan.triage.enhance_score` ≥ 0.5 at ``thresholds``)
    against N×4 targets, where enhancing is right exactly when the image is not ``diagnostic``."""
    enhance = triage.enhance_score(probabilities, thresholds) >= 0.5
    recall, specificity, _ = _youden(1 - np.asarray(targets)[:, 0].astype(np.int64), enhance[None])
    return float(recall[0]), float(specificity[0])
