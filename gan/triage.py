"""Image-quality triage: is a slice of diagnostic quality, or noisy, motion-blurred, low-resolution (or several)?

The server calls :func:`preprocess` on one 2-D grayscale image in model space [0, 1] (:mod:`gan.intensity`), runs
the ``triage-classifier`` weights (an ``se-classifier``) and hands the logits to :func:`interpret`, which says
whether to enhance and why. :func:`classify` does all three.

**Multi-label head.** The network has one sigmoid output per class of :data:`TRIAGE_CLASSES`, trained with
binary cross-entropy, not one softmax over the four. Degradations co-occur (a restless, breathless patient on a
fast low-dose scan is blurred *and* noisy; in the training and test data ~35 % of the samples carry two or three
degradations): a softmax must pick one and is wrong on every such image, while independent outputs name each
degradation, which is what choosing the enhancement (denoise / deblur / super-resolve) needs. ``diagnostic`` is
its own output (target 1 exactly when no degradation was applied).

**Fixed input: a native-resolution window, not a resize.** :func:`preprocess` takes the central
:data:`INPUT_SIDE` × :data:`INPUT_SIDE` window of the image at its own pixel spacing (images smaller than that
are mirror-padded). Shrinking a 512² slice to 128² would average 4×4 blocks and so remove exactly the pixel-level
evidence the classes are about: noise grain, a 3-pixel motion smear, and the loss of detail of a ×2 acquisition.

**What the classes mean**: ``noisy``, ``motion-blurred`` (motion, breathing and cardiac blur) and
``low-resolution`` (an image whose *effective* resolution is below its pixel grid; a small matrix by itself is read
from the DICOM header — Rows, Columns, PixelSpacing — not from the pixels), as simulated for training by
:mod:`gan.train.classifier_data`.

This module is what serving needs (input, output, weights); it holds no training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core import DEFAULT_TRIAGE
from gan.intensity import NORMALISATION

if TYPE_CHECKING:
    import os

    from torch import nn

    from gan.registry import ModelCard

__all__ = [
    "DEFAULT_THRESHOLD",
    "INPUT_SIDE",
    "MODEL_NAME",
    "TRIAGE_CLASSES",
    "TriageResult",
    "card_input",
    "card_thresholds",
    "center_window",
    "classify",
    "enhance_score",
    "interpret",
    "load_triage",
    "preprocess",
    "threshold_vector",
]

#: Output order of the triage head (stored in the model card).
TRIAGE_CLASSES: tuple[str, ...] = ("diagnostic", "noisy", "motion-blurred", "low-resolution")
#: Side of the square window the classifier sees.
INPUT_SIDE = 128
#: Registry name of the shipped weights.
MODEL_NAME = DEFAULT_TRIAGE  # the name training writes; the server serves settings.inference.triage
#: Decision threshold of every class when the model card stores none (``input.thresholds``).
DEFAULT_THRESHOLD = 0.5
_RANGE_TOLERANCE = 1e-3
_MIN_SIDE = 32  # the SE-CNN's minimum input size


# ------------------------------------------------------------------------------------------------- input


def center_window(image: np.ndarray, side: int = INPUT_SIDE) -> np.ndarray:
    """The central ``side``×``side`` window of a 2-D image at native resolution; a smaller axis is mirror-padded."""
    h, w = image.shape
    ph, pw = max(0, side - h), max(0, side - w)
    if ph or pw:
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
        h, w = image.shape
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def preprocess(image: np.ndarray) -> np.ndarray:
    """One 2-D grayscale image in [0, 1] → the classifier input, 1×1×S×S float32 (:func:`center_window`, S = 128).

    Raises ValueError for anything else (not 2-D, not numeric, NaN/inf, values outside [0, 1], a side < 32).
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"triage needs one 2-D grayscale image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"image must be real-valued numeric, got dtype {arr.dtype}")
    if min(arr.shape) < _MIN_SIDE:
        raise ValueError(f"image sides must be >= {_MIN_SIDE} pixels, got {arr.shape[0]}×{arr.shape[1]}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"image values must be in [0, 1] (window CT, normalise MR first), got [{lo:.4g}, {hi:.4g}]")
    window = center_window(np.clip(arr, 0.0, 1.0))
    return np.ascontiguousarray(window[None, None], dtype=np.float32)


# ------------------------------------------------------------------------------------------------ output


@dataclass(frozen=True)
class TriageResult:
    """Per-class probabilities, the decision and why; ``degradations`` lists the classes at or above threshold."""

    probabilities: dict[str, float]
    enhance: bool
    degradations: tuple[str, ...]
    reason: str


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def threshold_vector(thresholds: float | Mapping[str, float]) -> np.ndarray:
    """Thresholds (one for all, or one per class name) as a vector in :data:`TRIAGE_CLASSES` order, each in (0, 1)."""
    if isinstance(thresholds, Mapping):
        missing = set(TRIAGE_CLASSES) - set(thresholds)
        unknown = set(thresholds) - set(TRIAGE_CLASSES)
        if missing or unknown:
            raise ValueError(f"thresholds must name exactly {TRIAGE_CLASSES}, got {sorted(thresholds)}")
        t = np.array([float(thresholds[name]) for name in TRIAGE_CLASSES])
    else:
        t = np.full(len(TRIAGE_CLASSES), float(thresholds))
    if not (np.isfinite(t).all() and (t > 0).all() and (t < 1).all()):
        raise ValueError(f"thresholds must be in (0, 1), got {t.tolist()}")
    return t


def enhance_score(probabilities: np.ndarray, thresholds: float | Mapping[str, float] = DEFAULT_THRESHOLD) -> np.ndarray:
    """Score of "enhance" per row of N×4 probabilities: :func:`interpret` enhances when it is ≥ 0.5.

    ``max(max_k (p_k − t_k), t_diagnostic − p_diagnostic) + 0.5`` over the degradation classes k; with every
    threshold 0.5 this is ``max(max degradation p, 1 − p(diagnostic))``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    t = threshold_vector(thresholds)
    return np.maximum((p[..., 1:] - t[1:]).max(axis=-1), t[0] - p[..., 0]) + 0.5


def card_thresholds(card: ModelCard) -> dict[str, float]:
    """The per-class decision thresholds stored in the card (``input.thresholds``), else 0.5 for every class."""
    stored = card.input.model_dump().get("thresholds")
    if stored is None:
        return dict.fromkeys(TRIAGE_CLASSES, DEFAULT_THRESHOLD)
    t = threshold_vector(stored)
    return {name: float(v) for name, v in zip(TRIAGE_CLASSES, t, strict=True)}


def interpret(logits: np.ndarray, thresholds: float | Mapping[str, float] = DEFAULT_THRESHOLD) -> TriageResult:
    """Decide from one image's 4 logits (shape 4 or 1×4, order :data:`TRIAGE_CLASSES`).

    ``thresholds``: one for every class, or one per class name (:func:`card_thresholds` of the model's card).
    Enhance when any degradation has probability >= its threshold or ``diagnostic`` is below its threshold
    (doubt means enhance: the derived series is labelled "not for diagnostic use" and the original is kept).
    """
    arr = np.asarray(logits, dtype=np.float64)
    if arr.shape not in ((len(TRIAGE_CLASSES),), (1, len(TRIAGE_CLASSES))):
        raise ValueError(f"expected {len(TRIAGE_CLASSES)} logits for one image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("logits contain NaN or infinite values")
    t = dict(zip(TRIAGE_CLASSES, threshold_vector(thresholds).tolist(), strict=True))
    p = _sigmoid(arr.reshape(-1))
    probabilities = {name: float(v) for name, v in zip(TRIAGE_CLASSES, p, strict=True)}
    found = tuple(name for name in TRIAGE_CLASSES[1:] if probabilities[name] >= t[name])
    diagnostic = probabilities["diagnostic"]
    if found:
        reason = "degraded: " + ", ".join(f"{name} (p={probabilities[name]:.2f})" for name in found)
    elif diagnostic < t["diagnostic"]:
        reason = (
            "uncertain: no degradation reached its threshold but diagnostic quality is unlikely "
            f"(p={diagnostic:.2f} < {t['diagnostic']:.2f})"
        )
    else:
        reason = f"diagnostic quality (p={diagnostic:.2f}); no degradation reached its threshold"
    return TriageResult(probabilities, bool(found) or diagnostic < t["diagnostic"], found, reason)


def load_triage(root: str | os.PathLike[str] | None = None) -> tuple[nn.Module, ModelCard]:
    """The shipped triage weights (``gan/weights/triage-classifier`` unless ``root``), sha256-checked.

    The card's thresholds (:func:`card_thresholds`) are attached as ``model.triage_thresholds``, which
    :func:`classify` uses when called without thresholds.
    """
    from gan.registry import load_model

    model, card = load_model(root, MODEL_NAME)
    classes = tuple(card.input.model_dump().get("classes", ()))
    if classes != TRIAGE_CLASSES:
        raise ValueError(f"{MODEL_NAME} card lists classes {classes}, this code expects {TRIAGE_CLASSES}")
    model.triage_thresholds = card_thresholds(card)  # a plain attribute: not in the state dict
    return model, card


def classify(
    model: nn.Module, image: np.ndarray, thresholds: float | Mapping[str, float] | None = None
) -> TriageResult:
    """:func:`preprocess` → ``model`` (eval, no grad) → :func:`interpret` with ``thresholds``, by default the
    card's (set by :func:`load_triage`; 0.5 for a model loaded otherwise)."""
    import torch

    if thresholds is None:
        thresholds = getattr(model, "triage_thresholds", DEFAULT_THRESHOLD)
    with torch.no_grad():
        logits = model(torch.from_numpy(preprocess(image))).numpy()
    return interpret(logits, thresholds)


def card_input() -> dict[str, Any]:
    """The ``input`` block of the triage model card."""
    return {
        "channels": 1,
        "scale": 1,
        "context_size": 0,
        "normalisation": f"{NORMALISATION}; then gan.triage.preprocess (central {INPUT_SIDE}x{INPUT_SIDE} window, "
        "native resolution, mirror-padded when smaller)",
        "side": INPUT_SIDE,
        "classes": list(TRIAGE_CLASSES),
        "head": "multi-label: one sigmoid per class",
    }
