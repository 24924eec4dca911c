"""Training of the SE-CNN classifiers: image-quality triage and lesion vs no lesion, with held-out test metrics.

Tasks (``python -m gan.train_classifier triage|lesion [options]``, :func:`main`):

* ``triage`` — multi-label quality triage (:mod:`gan.triage`): real CT/MR slices of ``pydicom``, ``mni152`` and
  ``pyradiomics`` split BY SUBJECT with :func:`gan.train.training_splits` (train/val); each sample is a
  :data:`gan.triage.INPUT_SIDE`-pixel window degraded by :func:`gan.triage.sample_degradation` /
  :func:`gan.triage.apply_degradation` (the degradation is applied to the window plus an 8-pixel real margin,
  then the margin is cut). Training windows are random textured crops drawn fresh every step (subject uniform,
  then slice); val and test windows are the central window (:func:`gan.triage.center_window`, what
  :func:`gan.triage.preprocess` takes), a fixed set each.
* ``lesion`` — lesion vs no lesion on the real tumour-masked pyradiomics patches (:func:`gan.lesions.lesion_patches`:
  train brain1 + breast1 MR, val lung1 CT, test brain2 MR + lung2 CT); with ``--augment`` the training pool also
  gets hybrid-GAN synthetic patches (:func:`synthetic_lesion_patches`, every one marked synthetic and never used
  for validation or test). Random flips and 90° rotations for real and synthetic training patches alike.

Both: BCE on one logit per label (``se-classifier`` with ``num_classes`` = 4 for triage, 1 for lesion), AdamW,
validation every ``val_every`` steps, the best val-loss model saved through :func:`gan.registry.save_model`
(checkpoint), early stopping after ``patience`` validations without improvement, a loss-curve PNG and a history
JSON. At the end the best model is evaluated ONCE on the held-out test split (subjects of
:data:`gan.data.HELD_OUT_TEST_SUBJECTS`, never seen in training or model selection), and the card is rewritten with
those metrics: accuracy, precision, recall, F1, specificity and AUC (one-vs-rest per triage class, plus the
"enhance" decision and exact-match accuracy), each with a 95 % two-stage cluster-bootstrap CI over subjects
(:mod:`gan.classification_metrics`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gan import data as gdata
from gan import triage
from gan.classification_metrics import MetricCI, binary_report, bootstrap_ci
from gan.train import (
    PreparedSlice,
    crop_patch,
    prepare_slices,
    progress_bar,
    training_splits,
    write_loss_curve,
)

__all__ = [
    "DEFAULT_MIN_RECALL",
    "TASKS",
    "ClassifierConfig",
    "ClassifierResult",
    "calibrate_triage",
    "choose_thresholds",
    "evaluate_lesion",
    "evaluate_triage",
    "lesion_data",
    "main",
    "predict",
    "synthetic_lesion_patches",
    "train_classifier",
    "triage_data",
    "triage_test_windows",
]

TASKS = ("triage", "lesion")
#: Recall floor of the "enhance" decision on val when :func:`choose_thresholds` picks the diagnostic threshold.
DEFAULT_MIN_RECALL = 0.95
_MARGIN = 8  # real neighbourhood kept around a triage window while it is degraded (a multiple of every scale)


@dataclass
class ClassifierConfig:
    """Everything :func:`train_classifier` needs (stored in the model card)."""

    task: str = "triage"
    out: str = "var/train"
    name: str | None = None  # default: triage-classifier, lesion-classifier[-augmented]
    datasets: tuple[str, ...] = ("pydicom", "mni152", "pyradiomics")  # triage
    split_seed: int = 0
    widths: tuple[int, ...] = (8, 16, 32, 64)
    dropout: float = 0.2
    batch_size: int = 32
    steps: int = 1500
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_every: int = 50
    val_samples: int = 256  # triage: fixed val windows
    test_per_subject: int = 100  # triage: fixed test windows per held-out subject
    patch: int = 64  # lesion patch side
    per_subject: int = 200  # lesion patches per subject (half lesion)
    patch_seed: int = 0  # lesion: which patches (fixed across training seeds, so every run sees the same test set)
    augment: bool = False  # lesion: add hybrid-GAN synthetic patches to the training pool
    synthetic: int = 400  # lesion: number of synthetic patches (half lesion)
    hybrid_root: str | None = None  # where the hybrid-gan-* weights live (default gan/weights)
    patience: int = 6
    log_every: int = 50
    resamples: int = 1000  # bootstrap resamples per metric
    threads: int | None = None
    command: str | None = None

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return triage.MODEL_NAME if self.task == "triage" else f"lesion-classifier{'-augmented' * self.augment}"

    @property
    def labels(self) -> tuple[str, ...]:
        return triage.TRIAGE_CLASSES if self.task == "triage" else ("lesion",)

    def model_config(self) -> dict[str, Any]:
        """Constructor kwargs of the ``se-classifier``."""
        return {"in_channels": 1, "num_classes": len(self.labels), "widths": list(self.widths), "dropout": self.dropout}


@dataclass
class TaskData:
    """Training sampler, fixed val set and fixed test set (``test_groups``: subject of each test sample)."""

    sample: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    test_groups: list[str]
    description: dict[str, Any]


@dataclass
class ClassifierResult:
    """What a training run produced; ``model`` holds the best (lowest val loss) weights, in eval mode."""

    model: nn.Module
    config: ClassifierConfig
    checkpoint: Path
    loss_curve: Path
    history_file: Path
    best_step: int
    steps_run: int
    stopped_early: bool
    train_loss: list[float]
    val_history: list[dict[str, float]]
    report: dict[str, dict[str, MetricCI]]
    metrics: dict[str, float]
    seconds: float


# ------------------------------------------------------------------------------------------------- triage data


def _triage_window(sl: PreparedSlice, rng: np.random.Generator, random_crop: bool) -> tuple[np.ndarray, np.ndarray]:
    size = triage.INPUT_SIDE + 2 * _MARGIN
    region = crop_patch(sl.image, size, rng) if random_crop else triage.center_window(sl.image, size)
    modality = f"{sl.modality}:{sl.region}"
    degraded, target = triage.apply_degradation(region, triage.sample_degradation(rng), modality, rng)
    return triage.center_window(degraded), target


def _triage_batch(
    slices: Sequence[PreparedSlice], rng: np.random.Generator, n: int, random_crop: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` degraded windows (subject uniform, then slice): N×1×S×S images, N×4 targets, subjects."""
    by_subject: dict[str, list[PreparedSlice]] = {}
    for sl in slices:
        by_subject.setdefault(sl.subject, []).append(sl)
    subjects = sorted(by_subject)
    images, targets, chosen = [], [], []
    for _ in range(n):
        subject = subjects[int(rng.integers(len(subjects)))]
        candidates = by_subject[subject]
        image, target = _triage_window(candidates[int(rng.integers(len(candidates)))], rng, random_crop)
        images.append(image)
        targets.append(target)
        chosen.append(subject)
    return np.stack(images)[:, None], np.stack(targets), chosen


def triage_test_windows(
    slices: Sequence[PreparedSlice], per_subject: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_subject`` central windows per subject (slices cycled in a shuffled order), each freshly degraded."""
    rng = np.random.default_rng(seed)
    images, targets, groups = [], [], []
    for subject in sorted({s.subject for s in slices}):
        own = [s for s in slices if s.subject == subject]
        order = rng.permutation(len(own))
        for i in range(per_subject):
            image, target = _triage_window(own[order[i % len(own)]], rng, random_crop=False)
            images.append(image)
            targets.append(target)
            groups.append(subject)
    return np.stack(images)[:, None], np.stack(targets), groups


def triage_data(config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None = None) -> TaskData:
    """Train/val slices from :func:`gan.train.training_splits`, test slices of the held-out subjects only."""
    if volumes is None:
        volumes = [v for name in config.datasets for v in gdata.load(name)]
    volumes = [v for v in volumes if v.modality in ("CT", "MR") and not v.is_rgb]
    parts = training_splits(volumes, seed=config.split_seed)
    train = prepare_slices(parts["train"])
    val = prepare_slices(parts["val"])
    test = prepare_slices(gdata.held_out_test(volumes), allow_held_out=True)
    if not (train and val and test):
        raise ValueError("triage needs usable CT/MR slices in the train, val and held-out test subjects")
    val_x, val_y, _ = _triage_batch(val, np.random.default_rng([config.seed, 1]), config.val_samples, False)
    test_x, test_y, groups = triage_test_windows(test, config.test_per_subject, seed=config.seed)
    return TaskData(
        sample=lambda rng, n: _triage_batch(train, rng, n, True)[:2],
        val=(val_x, val_y),
        test=(test_x, test_y),
        test_groups=groups,
        description={
            "datasets": list(config.datasets),
            "split": f"gan.train.training_splits (gan.data.split by subject, seed {config.split_seed}); test = "
            "gan.data.HELD_OUT_TEST_SUBJECTS only",
            "train_subjects": sorted({s.subject for s in train}),
            "val_subjects": sorted({s.subject for s in val}),
            "test_subjects": sorted(set(groups)),
            "samples": f"train: fresh random textured {triage.INPUT_SIDE}px windows every step; val: "
            f"{config.val_samples} central windows; test: {config.test_per_subject} central windows per subject",
            "degradation": f"gan.triage: each of noise {triage.SEVERITY['noise_sigma']}, motion "
            f"{triage.SEVERITY['motion']} m/s2, block mean x{triage.SEVERITY['scales']} + cubic back, with "
            f"p={triage.DEGRADATION_PROB} independently",
        },
    )


# ------------------------------------------------------------------------------------------------- lesion data


def synthetic_lesion_patches(
    n: int, seed: int, size: int = 64, root: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` hybrid-GAN patches (half lesion) as N×size×size in [0, 1] and their labels.

    :func:`gan.train_hybrid.generate` gives N×3×64×64 in [−1, 1], each marked synthetic; converted here by the
    mean over channels and ``(x + 1) / 2``, resized (area / bilinear) when ``size`` is not 64.
    """
    from gan.train_hybrid import generate

    labels = np.arange(n, dtype=np.int64) % 2
    batch = generate(root, n, labels, seed)
    if not bool(np.all(np.asarray(batch.synthetic))):
        raise ValueError("hybrid-GAN batch has images not marked synthetic")
    images = torch.as_tensor(batch.images).detach().float()
    if images.ndim != 4 or images.shape[0] != n:
        raise ValueError(f"expected {n}×C×H×W synthetic images, got shape {tuple(images.shape)}")
    grey = ((images.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)
    if grey.shape[-1] != size or grey.shape[-2] != size:
        mode = "area" if grey.shape[-1] > size else "bilinear"
        grey = torch.nn.functional.interpolate(grey, size=(size, size), mode=mode)
    return grey[:, 0].numpy(), np.asarray(batch.labels, dtype=np.int64).reshape(n)


def _flip_rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and k·90° rotation per image (N×1×S×S)."""
    out = images.copy()
    for i in range(len(out)):
        if rng.uniform() < 0.5:
            out[i] = out[i][..., ::-1]
        out[i] = np.rot90(out[i], int(rng.integers(4)), axes=(-2, -1))
    return out


def lesion_data(config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None = None) -> TaskData:
    """Real pyradiomics patches per split (+ synthetic ones in training with ``config.augment``)."""
    from gan.lesions import SPLITS as gsplits
    from gan.lesions import lesion_patches

    if volumes is None:
        volumes = gdata.load_pyradiomics()
    parts = {s: lesion_patches(s, config.patch, config.per_subject, config.patch_seed, volumes) for s in gsplits}
    held = set(parts["train"].subjects + parts["val"].subjects) & gdata.HELD_OUT_TEST_SUBJECTS
    if held:
        raise AssertionError(f"held-out test subjects in lesion train/val: {sorted(held)}")
    train_x = parts["train"].images[:, None]
    train_y = parts["train"].labels.astype(np.float32)[:, None]
    synthetic = 0
    if config.augment:
        fake_x, fake_y = synthetic_lesion_patches(config.synthetic, config.seed, config.patch, config.hybrid_root)
        train_x = np.concatenate([train_x, fake_x[:, None]])
        train_y = np.concatenate([train_y, fake_y.astype(np.float32)[:, None]])
        synthetic = len(fake_y)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(train_y), n)
        return _flip_rotate(train_x[idx], rng), train_y[idx]

    def as_xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        return parts[split].images[:, None], parts[split].labels.astype(np.float32)[:, None]

    return TaskData(
        sample=sample,
        val=as_xy("val"),
        test=as_xy("test"),
        test_groups=list(parts["test"].subjects),
        description={
            "datasets": ["pyradiomics"],
            "split": "gan.lesions.lesion_patches (gan.data.split seed 0 over the 5 pyradiomics subjects)",
            "train_subjects": sorted(set(parts["train"].subjects)),
            "val_subjects": sorted(set(parts["val"].subjects)),
            "test_subjects": sorted(set(parts["test"].subjects)),
            "samples": f"{config.patch}px patches, {config.per_subject} per subject (half lesion), patch seed "
            f"{config.patch_seed}; random flips / 90-degree rotations in training",
            "synthetic_training_patches": synthetic,
            "synthetic_source": "gan.train_hybrid.generate (hybrid-gan-dcgan/cgan/srgan weights under "
            f"{config.hybrid_root or 'gan/weights'})"
            if synthetic
            else "none",
        },
    )


# -------------------------------------------------------------------------------------------------- evaluation


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


# ------------------------------------------------------------------------------------------------- calibration


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


def calibrate_triage(
    root: str | Path | None = None,
    name: str = triage.MODEL_NAME,
    config: ClassifierConfig | None = None,
    data: TaskData | None = None,
    min_recall: float = DEFAULT_MIN_RECALL,
    command: str | None = None,
) -> dict[str, Any]:
    """Choose the triage thresholds on the val split, re-evaluate on the test split, rewrite the card only.

    ``data`` (default :func:`triage_data` of ``config``, the training defaults) must describe the same val and
    test subjects as the card; the thresholds see ONLY ``data.val``. The card (via
    :func:`gan.registry.update_card`, weights and sha256 unchanged) gets ``input.thresholds``, the test metrics
    at those thresholds, ``val_enhance_recall`` / ``val_enhance_specificity`` and the enhance specificity at 0.5
    for comparison. Returns the thresholds, the before (0.5) and after test reports, and the new metrics.
    """
    from gan.registry import load_model, update_card

    config = config or ClassifierConfig()
    model, card = load_model(root, name)
    if data is None:
        data = triage_data(config)
    val_subjects = set(data.description["val_subjects"])
    leaked = val_subjects & gdata.HELD_OUT_TEST_SUBJECTS
    if leaked:
        raise ValueError(f"val split contains held-out test subjects: {sorted(leaked)}")
    trained = card.training.data if isinstance(card.training.data, dict) else {}
    for split in ("val_subjects", "test_subjects"):
        if split in trained and sorted(trained[split]) != sorted(data.description[split]):
            raise ValueError(f"{split} differ from the card's: {data.description[split]} vs {trained[split]}")
    val_p = predict(model, data.val[0])
    thresholds = choose_thresholds(val_p, data.val[1], min_recall)
    val_enhance = triage.enhance_score(val_p, thresholds) >= 0.5
    recall, specificity, _ = _youden(1 - data.val[1][:, 0].astype(np.int64), val_enhance[None])

    test_p = predict(model, data.test[0])
    before = evaluate_triage(test_p, data.test[1], data.test_groups, config.resamples, config.seed)
    after = evaluate_triage(test_p, data.test[1], data.test_groups, config.resamples, config.seed, thresholds)
    kept = {k: v for k, v in card.metrics.items() if not k.startswith("test_")}
    default = {"enhance_at_0.5": {m: before["enhance"][m] for m in ("recall", "specificity")}}
    metrics = (
        kept
        | {
            "val_enhance_recall": float(recall[0]),
            "val_enhance_specificity": float(specificity[0]),
            "n_test": float(len(data.test_groups)),
        }
        | flat_metrics(after)
        | flat_metrics(default)
    )
    rule = (
        f"gan.train_classifier.choose_thresholds on the val split only ({len(data.val[1])} windows of "
        f"{', '.join(sorted(val_subjects))}): Youden's J per degradation class; diagnostic: the largest J of the "
        f"enhance decision with val enhance recall >= {min_recall}"
    )
    input_spec = card.input.model_dump() | {"thresholds": thresholds, "threshold_rule": rule}
    note = (
        " Decision thresholds (input.thresholds) chosen on the val split only by "
        f"`{command or 'gan.train_classifier.calibrate_triage'}`; test_ metrics are at those thresholds, "
        "test_enhance_at_0.5_* at 0.5 for comparison."
    )
    notes = card.notes.split(" Decision thresholds (input.thresholds)")[0] + note
    update_card(root, name, {"input": input_spec, "metrics": metrics, "notes": notes})
    return {"thresholds": thresholds, "before": before, "after": after, "metrics": metrics}


# ---------------------------------------------------------------------------------------------------- training


def _card(config: ClassifierConfig, description: dict[str, Any], scores: dict[str, float]) -> dict[str, Any]:
    if config.task == "triage":
        input_spec = triage.card_input()
    else:
        input_spec = {
            "channels": 1,
            "scale": 1,
            "context_size": 0,
            "side": config.patch,
            "classes": ["lesion"],
            "normalisation": "gan.lesions.lesion_patches: CT lung window, MR (x - min) / (p99.5 - min) per "
            "volume, [0, 1]",
            "head": "one sigmoid: p(lesion at the patch centre)",
        }
    return {
        "version": "0.1.0",
        "training": {
            "data": description,
            "command": config.command or f"train_classifier({config!r})",
            "seed": config.seed,
        },
        "metrics": scores,
        "input": input_spec,
        "synthetic_output": False,
        "notes": (
            "Metrics prefixed test_ are on the held-out test subjects with 95 % two-stage cluster-bootstrap CIs "
            f"({config.resamples} resamples: subjects, then samples within subjects); others on the val split. "
            + (
                "Trained on simulated degradations of real slices (gan.triage); not validated on real "
                "low-quality acquisitions."
                if config.task == "triage"
                else "Only 5 pyradiomics subjects exist: 2 train (MR), 1 val (CT), 2 test; the CIs are wide."
            )
        ),
    }


def train_classifier(
    config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None = None, data: TaskData | None = None
) -> ClassifierResult:
    """Train ``config.task``; save the best checkpoint with test metrics under ``<out>/<name>/``.

    ``data`` (from :func:`triage_data` / :func:`lesion_data`) may be passed to reuse prepared samples.
    Files: ``<out>/<name>/`` (weights, card), ``<out>/<name>.loss.png``, ``<out>/<name>.history.json``.
    """
    if config.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, volumes, data)
    finally:
        torch.set_num_threads(threads)


def _train(config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None, data: TaskData | None):
    from gan.models import build
    from gan.registry import save_model

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if data is None:
        data = triage_data(config, volumes) if config.task == "triage" else lesion_data(config, volumes)
    model = build("se-classifier", **config.model_config())
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(1, config.steps))
    criterion = nn.BCEWithLogitsLoss()
    val_x, val_y = torch.from_numpy(data.val[0]), torch.from_numpy(data.val[1])

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = config.model_name
    train_loss: list[float] = []
    val_history: list[dict[str, float]] = []
    best_loss, best_step, bad, stopped_early = math.inf, 0, 0, False
    best_state: dict[str, Tensor] | None = None
    bar = progress_bar(config.steps)
    tick = time.perf_counter()

    def validate(step: int) -> bool:
        """Val loss (+ accuracy at 0.5), checkpoint on improvement; True when patience is exhausted."""
        nonlocal best_loss, best_step, bad, best_state
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(val_x[i : i + 128]) for i in range(0, len(val_x), 128)])
            loss = float(criterion(logits, val_y))
        model.train()
        accuracy = float(((logits >= 0).float() == val_y).float().mean())
        val_history.append({"step": float(step), "val_loss": loss, "val_label_accuracy": accuracy})
        if loss < best_loss - 1e-6:
            best_loss, best_step, bad = loss, step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            scores = {"val_loss": loss, "val_label_accuracy": accuracy, "best_step": float(step)}
            save_model(
                model, out, name, "se-classifier", config.model_config(), _card(config, data.description, scores)
            )
        else:
            bad += 1
        return bad >= config.patience

    model.train()
    step = 0
    for step in range(1, config.steps + 1):
        x, y = data.sample(rng, config.batch_size)
        loss = criterion(model(torch.from_numpy(np.ascontiguousarray(x))), torch.from_numpy(y))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        schedule.step()
        train_loss.append(float(loss.detach()))
        if not math.isfinite(train_loss[-1]):
            raise FloatingPointError(f"training loss is {train_loss[-1]} at step {step}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss[-1]:.4f}")
        elif step % config.log_every == 0 or step == config.steps:
            rate = config.log_every / max(time.perf_counter() - tick, 1e-9)
            tick = time.perf_counter()
            recent = float(np.mean(train_loss[-config.log_every :]))
            print(f"step {step}/{config.steps} loss {recent:.4f} {rate:.1f} it/s", file=sys.stderr)
        if step % config.val_every == 0 or step == config.steps:
            stop = validate(step)
            last = val_history[-1]
            print(
                f"val @ {step}: loss {last['val_loss']:.4f} label accuracy {last['val_label_accuracy']:.3f}",
                file=sys.stderr,
            )
            if stop:
                stopped_early = True
                break
    if bar is not None:
        bar.close()
    if not val_history:
        validate(step)
    assert best_state is not None
    model.load_state_dict(best_state)

    probabilities = predict(model, data.test[0])
    evaluate = evaluate_triage if config.task == "triage" else evaluate_lesion
    report = evaluate(probabilities, data.test[1], data.test_groups, config.resamples, config.seed)
    best = next(v for v in val_history if v["step"] == best_step)
    metrics = {
        "val_loss": best["val_loss"],
        "val_label_accuracy": best["val_label_accuracy"],
        "best_step": float(best_step),
        "n_test": float(len(data.test_groups)),
    } | flat_metrics(report)
    save_model(model, out, name, "se-classifier", config.model_config(), _card(config, data.description, metrics))
    model.eval()

    curve = write_loss_curve(
        out / f"{name}.loss.png",
        train_loss,
        [int(v["step"]) for v in val_history],
        [v["val_loss"] for v in val_history],
    )
    history_file = out / f"{name}.history.json"
    history_file.write_text(
        json.dumps(
            {
                "config": dataclasses.asdict(config),
                "train_loss": train_loss,
                "val": val_history,
                "best_step": best_step,
                "metrics": metrics,
            },
            indent=1,
        )
    )
    return ClassifierResult(
        model=model,
        config=config,
        checkpoint=out / name,
        loss_curve=curve,
        history_file=history_file,
        best_step=best_step,
        steps_run=step,
        stopped_early=stopped_early,
        train_loss=train_loss,
        val_history=val_history,
        report=report,
        metrics=metrics,
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.train_classifier", description="Train the SE-CNN classifiers on real images."
    )
    d = ClassifierConfig()
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--out", default=d.out, help="output root (checkpoint directory, loss PNG, history)")
    parser.add_argument("--name", default=None, help="model name (default triage-classifier / lesion-classifier)")
    parser.add_argument("--data", default=",".join(d.datasets), help="triage: comma-separated gan.data datasets")
    parser.add_argument("--split-seed", type=int, default=d.split_seed)
    parser.add_argument("--widths", default=",".join(map(str, d.widths)), help="SE block widths")
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--val-every", type=int, default=d.val_every)
    parser.add_argument("--val-samples", type=int, default=d.val_samples, help="triage: fixed val windows")
    parser.add_argument("--test-per-subject", type=int, default=d.test_per_subject, help="triage: test windows")
    parser.add_argument("--patch", type=int, default=d.patch, help="lesion: patch side")
    parser.add_argument("--per-subject", type=int, default=d.per_subject, help="lesion: patches per subject")
    parser.add_argument("--patch-seed", type=int, default=d.patch_seed, help="lesion: which patches")
    parser.add_argument("--augment", action="store_true", help="lesion: add hybrid-GAN synthetic patches")
    parser.add_argument("--synthetic", type=int, default=d.synthetic, help="lesion: number of synthetic patches")
    parser.add_argument("--hybrid-root", default=None, help="lesion: root of the hybrid-gan-* weights")
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--resamples", type=int, default=d.resamples, help="bootstrap resamples per metric")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser


def _calibrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.train_classifier calibrate",
        description="Choose the triage decision thresholds on the val split; rewrite the card (weights unchanged).",
    )
    d = ClassifierConfig()
    parser.add_argument("--name", default=triage.MODEL_NAME, help="model name under --weights")
    parser.add_argument("--weights", default=None, help="registry root (default gan/weights)")
    parser.add_argument("--min-recall", type=float, default=DEFAULT_MIN_RECALL, help="val enhance recall floor")
    parser.add_argument("--resamples", type=int, default=d.resamples, help="bootstrap resamples per metric")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser


def _calibrate_main(argv: list[str]) -> int:
    args = _calibrate_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = calibrate_triage(
        args.weights,
        args.name,
        ClassifierConfig(resamples=args.resamples),
        min_recall=args.min_recall,
        command="python -m gan.train_classifier calibrate " + shlex.join(argv),
    )
    figures = {
        f"{when}_{m}": [round(v, 4) for v in (ci.value, ci.low, ci.high)]
        for when in ("before", "after")
        for m, ci in result[when]["enhance"].items()
    }
    print(json.dumps({"thresholds": result["thresholds"], "test_enhance": figures}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gan.train_classifier triage|lesion ...``: train, print the summary as JSON, return 0.

    ``python -m gan.train_classifier calibrate [--name N --weights ROOT]``: :func:`calibrate_triage`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        return _calibrate_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.augment and args.task != "lesion":
        raise SystemExit("--augment applies to the lesion task only")
    config = ClassifierConfig(
        task=args.task,
        out=args.out,
        name=args.name,
        datasets=tuple(s for s in args.data.split(",") if s),
        split_seed=args.split_seed,
        widths=tuple(int(w) for w in args.widths.split(",") if w),
        dropout=args.dropout,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        val_every=args.val_every,
        val_samples=args.val_samples,
        test_per_subject=args.test_per_subject,
        patch=args.patch,
        per_subject=args.per_subject,
        patch_seed=args.patch_seed,
        augment=args.augment,
        synthetic=args.synthetic,
        hybrid_root=args.hybrid_root,
        patience=args.patience,
        log_every=args.log_every,
        resamples=args.resamples,
        threads=args.threads,
        command="python -m gan.train_classifier " + shlex.join(argv),
    )
    result = train_classifier(config)
    summary = {
        "checkpoint": str(result.checkpoint),
        "loss_curve": str(result.loss_curve),
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "metrics": result.metrics,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
