"""Enhancer quality on the fixed held-out test subjects against bicubic, the best classical pipeline and itself.

Method, all in one process on identical inputs:

* **Models** — the model the PACS (study) path serves (``--name``/``--weights``) and the fast model
  (``--fast-name``/``--fast-weights``), by default those of the default settings (``InferenceSettings``:
  ``enhancer_for("study")`` and ``enhancer``, both ``enhancer-x2`` until a quality model ships), each with
  its **reference** for the context figures: its blind twin (``--blind-name``/``--fast-blind-name``: a model
  trained with ``--blind``, fed zero context; by default ``<name>-blind`` where the registry holds one), or,
  without one, the same model fed the all-missing (zero) context; ``blind_reference`` / ``fast_blind_reference``
  say which (``"blind-twin"`` or ``"zero-context"``). A model named twice is run once.
* **Data** — the default datasets (:data:`gan.data.DEFAULT_DATASETS`), CT and MR only. Test pairs come ONLY
  from :data:`gan.data.HELD_OUT_TEST_SUBJECTS` (:func:`gan.data.held_out_test`); the classical pipelines are
  tuned on the ``val`` split of :func:`gan.train.data.training_splits` (the model's own val subjects, never
  test). Slices are normalised as in training and serving (:func:`gan.train.data.prepare_slices`) to [0, 1].
* **Pairs** — each subject gives ``--pairs-per-subject`` pairs (48, 4 with ``--quick``; val 24, 2), **half of
  them sharp** ("still": no blur kernel) **and half blurred** (motion + respiratory + cardiac kernel lengths
  ≥ 5 HR px; :data:`BLUR_MIX`), in a seeded random order over evenly spaced foreground slices (cycled when a
  subject has fewer slices). Every pair is the central 176×176 HR crop of its slice, degraded exactly as
  training does by :func:`gan.train.data.make_pairs` (sampled vitals → blur from the TRUE levels → ×2 block
  mean → noise σ ~ U(0.01, 0.03) of the modality's noise model; the context from the OBSERVED vitals); a pair
  drawn outside its group is drawn again, so within a group the vitals follow training's distribution.
* **Tissue** — :func:`gan.metrics.tissue_mask` of the whole clean slice (threshold 10 % of the way from its
  1st to its 99th percentile, closed, holes filled, specks dropped), cropped like the pair.
* **Classical** — bicubic (``F.interpolate``, the enhancer's base), then non-local means (``h = k·σ̂``, fast
  mode, 5×5 patches, distance 6) or BM3D (``bm3d.bm3d``, ``sigma_psd = k·σ̂``), σ̂ = Immerkær's estimate on the
  LOW-resolution image for both; each ``k`` chosen on the val pairs by mean tissue PSNR (:data:`GRIDS`), and
  the better of the two on val is the **best classical** for the test pairs (``--quick``: BM3D at k = 1.1, not
  tuned, and only the best classical run on the test pairs).
* **Context conditions** — each model with the true context (all pairs), contexts permuted across the pairs
  (``shuffled``), a calm context (every vital at its resting end) on the blurred pairs (``calm_but_blurred``)
  and an agitated one (every vital at its agitated end: motion 8 m/s², breathing 35/min, …) on the sharp pairs
  (``agitated_but_sharp``); each as a PSNR gain over the reference on the same pairs.
* **Checkerboard** — :func:`gan.metrics.checkerboard_ratio` of (output − bicubic) on the held-out slices fed as
  served (no simulated degradation): the central 128² of up to 8 evenly spaced slices per subject, ×2 to 256²,
  all-missing context.
* **Figures** (per model; ``fast_`` for the fast one) — per-pair differences, then their mean overall, per
  modality, per subject and the spread of the subject means (min, max, sample std):
  ``tissue_psnr_gain_vs_best_classical_db``, ``ssim_gain_vs_best_classical`` (whole crop),
  ``psnr_gain_vs_bicubic_db`` (whole crop), ``wrong_context_loss_db`` (reference − agitated context, sharp
  pairs), ``context_gain_blurred_db`` (true context − reference, blurred pairs), ``shuffled_context_gain_db``
  (shuffled contexts − reference, all pairs), ``checkerboard_ratio`` (mean over the served slices). Kept from
  before: ``psnr_*``/``ssim*`` means, ``context_gain_db`` (true − reference, all pairs), ``shuffle_cost_db``
  (true − shuffled), ``by_modality``/``by_blur``/``by_subject`` tables of every method.

No training happens here: the weights come from :func:`gan.registry.load_model` and a missing model is an error
naming the training command.

    python -m bench.enhancer_quality                                   # the shipped models (gan/weights)
    python -m bench.enhancer_quality --quick                           # under a minute
    python -m bench.enhancer_quality --weights var/train --name enhancer-x2-quality \\
        --blind-name enhancer-x2-quality-blind --fast-weights gan/weights --fast-name enhancer-x2

The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm3d
import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import denoise_nl_means
from torch import nn

from core import CONTEXT_SIZE, InferenceSettings
from gan import (
    BLUR_GROUPS,
    CARD_FILE,
    DEFAULT_DATASETS,
    DEFAULT_ROOT,
    HELD_OUT_TEST_SUBJECTS,
    PATCH_MARGIN,
    VITAL_RANGES,
    PairBatch,
    PreparedSlice,
    TrainConfig,
    Volume,
    blur_px,
    center_window,
    checkerboard_ratio,
    held_out_test,
    load_card,
    load_dataset,
    load_model,
    make_pairs,
    noise_sigma,
    prepare_slices,
    psnr,
    sample_context,
    ssim,
    tissue_mask,
    training_splits,
)

__all__ = [
    "BLUR_MIX",
    "CROP",
    "DATASETS",
    "FIGURES",
    "GRIDS",
    "QUICK_GRIDS",
    "BenchPairs",
    "ServedSlices",
    "bicubic",
    "checkerboard_ratios",
    "classical",
    "condition_contexts",
    "evaluate",
    "load_enhancer",
    "main",
    "make_bench_pairs",
    "model_output",
    "pair_scores",
    "run",
    "served_slices",
    "summary",
    "tune_classical",
]

DATASETS: tuple[str, ...] = DEFAULT_DATASETS  # every real CT/MR source the project installs (gan.data)
MODALITIES: tuple[str, ...] = ("CT", "MR")
#: A model's blind twin is registered as ``<name>`` + this (trained with ``--blind``; never served).
BLIND_SUFFIX = "-blind"
CROP = 176  # HR side of the central crop (a multiple of 4 and 16; crop + 2·margin = 192 fits every val slice)
#: Strength grids, k in h = k·σ̂ (NLM) and sigma_psd = k·σ̂ (BM3D); BM3D takes ~1.5 s per 176² pair on one core.
GRIDS: dict[str, tuple[float, ...]] = {
    "nl_means": (0.15, 0.25, 0.4, 0.6, 0.9, 1.3, 2.0),
    "bm3d": (0.8, 1.1, 1.5),
}
#: ``--quick``: BM3D at the strength full runs choose on val (not tuned: three BM3D runs per val pair cost 5 s).
QUICK_GRIDS: dict[str, tuple[float, ...]] = GRIDS | {"bm3d": (1.1,)}
PAIRS_PER_SUBJECT = {"full": 48, "quick": 4}
VAL_PAIRS_PER_SUBJECT = {"full": 24, "quick": 2}
#: Share of each :data:`gan.train.data.BLUR_GROUPS` group among each subject's pairs ("mild" 1–4 px pairs: none).
BLUR_MIX: dict[str, float] = {"still": 0.5, "blurred": 0.5}
#: Draws of :func:`gan.train.data.make_pairs` allowed to find one pair of a blur group.
MAX_DRAWS = 500
#: The served-slice checkerboard measurement: LR side and slices per subject.
CHECKERBOARD_SIDE = 128
CHECKERBOARD_SLICES = 8
#: Vitals of the wrong-context conditions: every channel at the resting / agitated end of training's ranges.
CALM: dict[str, float] = {channel: lo for channel, (lo, _) in VITAL_RANGES.items()}
AGITATED: dict[str, float] = {channel: hi for channel, (_, hi) in VITAL_RANGES.items()}
#: The headline figures of each model (the JSON's top level; ``fast_`` + name for the fast model).
FIGURES: tuple[str, ...] = (
    "tissue_psnr_gain_vs_best_classical_db",
    "ssim_gain_vs_best_classical",
    "psnr_gain_vs_bicubic_db",
    "wrong_context_loss_db",
    "context_gain_blurred_db",
    "shuffled_context_gain_db",
    "checkerboard_ratio",
)
SCORES: tuple[str, ...] = ("psnr_db", "ssim", "tissue_psnr_db", "tissue_ssim")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


# ---------------------------------------------------------------------------------------------------------- pairs


@dataclass
class BenchPairs:
    """Degraded pairs, the modality of each and the tissue mask of each HR crop (``pairs.subjects``: subjects)."""

    pairs: PairBatch
    modalities: list[str]
    tissue: np.ndarray  # N×crop×crop bool

    def __len__(self) -> int:
        return len(self.pairs)

    def group(self, name: str) -> np.ndarray:
        """Indices of the pairs in blur group ``name`` of :data:`gan.train.data.BLUR_GROUPS`."""
        lo, hi = BLUR_GROUPS[name]
        return np.flatnonzero([lo <= blur_px(p) <= hi for p in self.pairs.params])


def _centre(sl: PreparedSlice, size: int) -> PreparedSlice:
    """The central ``size``² region of the slice (symmetric padding where the slice is smaller)."""
    window = np.ascontiguousarray(center_window(sl.image, size))
    return PreparedSlice(sl.subject, sl.source, sl.modality, sl.region, window)


def _concat(batches: Sequence[PairBatch]) -> PairBatch:
    return PairBatch(
        lr=torch.cat([b.lr for b in batches]),
        hr=torch.cat([b.hr for b in batches]),
        context=torch.cat([b.context for b in batches]),
        subjects=[s for b in batches for s in b.subjects],
        observed=[o for b in batches for o in b.observed],
        true_levels=[t for b in batches for t in b.true_levels],
        params=[p for b in batches for p in b.params],
    )


def _group_plan(n: int, mix: Mapping[str, float] | None, rng: np.random.Generator) -> list[str | None]:
    """The blur group of each of ``n`` pairs: ``round(share · n)`` of each group (the last takes the rest), in a
    seeded random order; ``[None] * n`` (any blur, no draw from ``rng``) without a mix."""
    if mix is None:
        return [None] * n
    names = list(mix)
    counts = [round(mix[g] * n) for g in names[:-1]]
    counts.append(n - sum(counts))
    plan = [g for g, c in zip(names, counts, strict=True) for _ in range(c)]
    return [plan[i] for i in rng.permutation(n)]


def make_bench_pairs(
    slices: Sequence[PreparedSlice],
    scale: int,
    per_subject: int,
    seed: int,
    *,
    crop: int = CROP,
    allow_held_out: bool = False,
    noise_sigma: tuple[float, float] = TrainConfig.noise_sigma,
    missing_prob: float = TrainConfig.missing_prob,
    blur_mix: Mapping[str, float] | None = None,
) -> BenchPairs:
    """``per_subject`` pairs per subject (evenly spaced slices, cycled), central ``crop``² HR, via ``make_pairs``.

    ``blur_mix`` (e.g. :data:`BLUR_MIX`): each subject's pairs fall in these blur groups in these shares (a pair
    outside its group is drawn again, at most :data:`MAX_DRAWS` times); None: as drawn, training's mix (the pairs
    of the benchmark until 2026-12-06, on which the shipped 3.1.0 card's figures were measured).
    """
    rng = np.random.default_rng(seed)
    by_subject: dict[str, list[PreparedSlice]] = {}
    for sl in slices:
        by_subject.setdefault(sl.subject, []).append(sl)
    batches, modalities, tissue = [], [], []
    masks: dict[int, np.ndarray] = {}  # tissue mask of each source slice, cropped like its pairs
    for subject in sorted(by_subject):
        items = by_subject[subject]
        chosen = np.linspace(0, len(items) - 1, min(per_subject, len(items))).round().astype(int)
        for i, group in enumerate(_group_plan(per_subject, blur_mix, rng)):
            source = items[int(chosen[i % len(chosen)])]
            sl = _centre(source, crop + 2 * PATCH_MARGIN)
            batches.append(_draw(sl, group, scale, rng, crop, noise_sigma, missing_prob, allow_held_out))
            modalities.append(sl.modality)
            if id(source) not in masks:
                window = center_window(tissue_mask(source.image), crop + 2 * PATCH_MARGIN)
                masks[id(source)] = window[PATCH_MARGIN : PATCH_MARGIN + crop, PATCH_MARGIN : PATCH_MARGIN + crop]
            tissue.append(masks[id(source)])
    if not batches:
        raise ValueError("no usable slices to build pairs from")
    return BenchPairs(_concat(batches), modalities, np.stack(tissue))


def _draw(
    sl: PreparedSlice,
    group: str | None,
    scale: int,
    rng: np.random.Generator,
    crop: int,
    noise_sigma: tuple[float, float],
    missing_prob: float,
    allow_held_out: bool,
) -> PairBatch:
    """One pair of ``sl`` (its whole region is the patch plus margin) whose blur is in ``group`` (None: any)."""
    lo, hi = BLUR_GROUPS[group] if group is not None else (0, math.inf)
    for _ in range(MAX_DRAWS):
        batch = make_pairs(
            [sl], scale, rng, 1, patch=crop, noise_sigma=noise_sigma, missing_prob=missing_prob,
            allow_held_out=allow_held_out,
        )  # fmt: skip
        if lo <= blur_px(batch.params[0]) <= hi:
            return batch
    raise ValueError(f"{sl.subject}: no {group!r} pair (blur {lo}–{hi} px) in {MAX_DRAWS} draws")


@dataclass
class ServedSlices:
    """Real slices as the service gets them: central LR windows N×1×side×side, with subject and modality."""

    lr: torch.Tensor
    subjects: list[str]
    modalities: list[str]


def served_slices(
    slices: Sequence[PreparedSlice], per_subject: int = CHECKERBOARD_SLICES, side: int = CHECKERBOARD_SIDE
) -> ServedSlices:
    """The central ``side``² of up to ``per_subject`` evenly spaced slices of each subject (no degradation)."""
    by_subject: dict[str, list[PreparedSlice]] = {}
    for sl in slices:
        by_subject.setdefault(sl.subject, []).append(sl)
    windows, subjects, modalities = [], [], []
    for subject in sorted(by_subject):
        items = by_subject[subject]
        for i in sorted(set(np.linspace(0, len(items) - 1, min(per_subject, len(items))).round().astype(int))):
            windows.append(np.ascontiguousarray(center_window(items[i].image, side), dtype=np.float32))
            subjects.append(subject)
            modalities.append(items[i].modality)
    if not windows:
        raise ValueError("no slices to serve")
    return ServedSlices(torch.from_numpy(np.stack(windows)[:, None]), subjects, modalities)


def checkerboard_ratios(model: nn.Module, served: ServedSlices) -> np.ndarray:
    """:func:`gan.metrics.checkerboard_ratio` of (output − bicubic) for each served slice, all-missing context."""
    out = model_output(model, served.lr, torch.zeros(len(served.subjects), CONTEXT_SIZE))
    base = bicubic(served.lr, int(model.scale))
    return np.array([checkerboard_ratio(o, b) for o, b in zip(out, base, strict=True)])


# -------------------------------------------------------------------------------------------------------- methods


def bicubic(lr: torch.Tensor, scale: int) -> np.ndarray:
    """N×1×h×w → N×(scale·h)×(scale·w) float64, bicubic (align_corners=False, the model's base), clamped to [0, 1]."""
    with torch.no_grad():
        up = F.interpolate(lr, scale_factor=float(scale), mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)[:, 0].double().numpy()


def classical(up: np.ndarray, method: str, strength: float, lr: np.ndarray, threads: int = 1) -> np.ndarray:
    """Denoise one bicubic image with ``nl_means`` (h = strength · σ̂) or ``bm3d`` (sigma_psd = strength · σ̂).

    σ̂ is :func:`gan.metrics.noise_sigma` (Immerkær) of the LOW-resolution image ``lr`` (its noise is white;
    bicubic upsampling correlates and shrinks it). ``threads``: BM3D's threads.
    """
    sigma = max(noise_sigma(lr), 1e-4)
    if method == "nl_means":
        out = denoise_nl_means(up, h=strength * sigma, patch_size=5, patch_distance=6, fast_mode=True)
    elif method == "bm3d":
        profile = bm3d.BM3DProfile()
        profile.num_threads = threads
        out = bm3d.bm3d(up, sigma_psd=strength * sigma, profile=profile)
    else:
        raise ValueError(f"unknown classical method {method!r}")
    return np.clip(out, 0.0, 1.0)


def _classical_all(bp: BenchPairs, up: np.ndarray, method: str, strength: float, threads: int) -> np.ndarray:
    low = bp.pairs.lr[:, 0].double().numpy()
    return np.stack([classical(u, method, strength, lo, threads) for u, lo in zip(up, low, strict=True)])


def pair_scores(hr: np.ndarray, out: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-pair PSNR and SSIM (data range 1) over the whole crop and, given masks, over the tissue (NaN where a
    crop holds no tissue)."""
    scores = {
        "psnr_db": np.array([psnr(h, o, 1.0) for h, o in zip(hr, out, strict=True)]),
        "ssim": np.array([ssim(h, o, 1.0) for h, o in zip(hr, out, strict=True)]),
    }
    if tissue is not None:
        has = [bool(m[5:-5, 5:-5].any()) for m in tissue]  # the SSIM valid region (σ = 1.5: 5-px border)
        scores["tissue_psnr_db"] = np.array(
            [psnr(h, o, 1.0, mask=m) if k else math.nan for h, o, m, k in zip(hr, out, tissue, has, strict=True)]
        )
        scores["tissue_ssim"] = np.array(
            [ssim(h, o, 1.0, mask=m) if k else math.nan for h, o, m, k in zip(hr, out, tissue, has, strict=True)]
        )
    return scores


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _table(
    scores: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    blur: Sequence[int] | None = None,
    subjects: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Mean of each score over all pairs, per modality, per blur group and per subject (with pair counts)."""
    result: dict[str, Any] = {k: _mean(v) for k, v in scores.items()}
    blur_arr = np.asarray([] if blur is None else blur)
    owners = np.asarray([] if subjects is None else subjects)
    groups = {
        "by_modality": {m: np.asarray(modalities) == m for m in MODALITIES},
        "by_blur": {g: (blur_arr >= lo) & (blur_arr <= hi) for g, (lo, hi) in BLUR_GROUPS.items()} if blur else {},
        "by_subject": {name: owners == name for name in sorted(set(owners.tolist()))},
    }
    for key, members in groups.items():
        result[key] = {}
        for name, chosen in members.items():
            if chosen.any():
                result[key][name] = {k: _mean(v[chosen]) for k, v in scores.items()} | {"pairs": int(chosen.sum())}
    return result


def evaluate(
    hr: np.ndarray,
    out: np.ndarray,
    modalities: Sequence[str],
    blur: Sequence[int] | None = None,
    subjects: Sequence[str] | None = None,
    tissue: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean PSNR/SSIM (and, given masks, tissue PSNR/SSIM) over pairs, per modality, per blur group (given each
    pair's total blur length) and per subject (given each pair's subject); data range 1."""
    return _table(pair_scores(hr, out, tissue), modalities, blur, subjects)


def tune_classical(
    val: BenchPairs, scale: int, threads: int = 1, grids: Mapping[str, tuple[float, ...]] = GRIDS
) -> dict[str, Any]:
    """Each classical method's strength chosen from ``grids`` on the VAL pairs by mean tissue PSNR; the better
    method wins."""
    up = bicubic(val.pairs.lr, scale)
    hr = val.pairs.hr[:, 0].double().numpy()
    table: dict[str, dict[str, float | None]] = {}
    best: dict[str, float] = {}
    for method, grid in grids.items():
        table[method] = {
            str(k): _mean(pair_scores(hr, _classical_all(val, up, method, k, threads), val.tissue)["tissue_psnr_db"])
            for k in grid
        }
        best[method] = float(max(grid, key=lambda k, m=method: table[m][str(k)] or -math.inf))
    winner = max(best, key=lambda m: table[m][str(best[m])] or -math.inf)
    return {
        "method": winner,
        "parameter": best[winner],
        "best": best,
        "at_grid_edge": {m: len(g) > 1 and best[m] in (min(g), max(g)) for m, g in grids.items()},
        "val_tissue_psnr_db": table,
        "val_bicubic_tissue_psnr_db": _mean(pair_scores(hr, up, val.tissue)["tissue_psnr_db"]),
        "val_pairs": len(val),
        "val_subjects": sorted(set(val.pairs.subjects)),
    }


def model_output(model: nn.Module, lr: torch.Tensor, context: torch.Tensor | None, batch: int = 16) -> np.ndarray:
    """``model`` on low-resolution inputs (N×1×h×w) with their contexts, in batches, without gradients."""
    outs = []
    with torch.no_grad():
        for i in range(0, lr.shape[0], batch):
            ctx = None if context is None else context[i : i + batch]
            outs.append(model(lr[i : i + batch], ctx).clamp(0.0, 1.0)[:, 0].double().numpy())
    return np.concatenate(outs)


def condition_contexts(levels: Mapping[str, float], n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` context vectors of every channel at ``levels``, each reading 0–120 s old (as in training)."""
    return torch.from_numpy(np.stack([sample_context(levels, rng).vector for _ in range(n)]).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------- model


def shipped_recipe(out: str | Path, name: str) -> str:
    """The shipped ``enhancer-x2`` card's training command, writing ``name`` under ``out`` instead."""
    words = load_card(DEFAULT_ROOT / InferenceSettings().enhancer.name / CARD_FILE).training.command.split()
    for flag, value in (("--out", str(out)), ("--name", name)):
        words[words.index(flag) + 1] = value
    return " ".join(words)


def load_enhancer(
    weights: str | Path | None, name: str, *, blind: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """``gan.registry.load_model(weights, name)`` (``None``: the shipped weights); a missing model raises
    FileNotFoundError naming the train command."""
    root = DEFAULT_ROOT if weights is None else Path(weights)
    card_path = root / name / CARD_FILE
    if not card_path.is_file():
        command = shipped_recipe(root, name) + (" --blind" if blind else "")
        raise FileNotFoundError(
            f"no trained enhancer {name!r} under {root} ({card_path} missing); the benchmark does not train — "
            f"train it first with: {command}"
        )
    model, card = load_model(root, name)
    if card.architecture != "enhancer":
        raise ValueError(f"{card_path}: architecture {card.architecture!r}, expected 'enhancer'")
    info = {
        "name": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "card_sha256": hashlib.sha256(card_path.read_bytes()).hexdigest(),
        "dir": str(root),
        "config": card.config,
        "command": card.training.command,
    }
    return model, info


@dataclass
class Enhancer:
    """A model under test and the reference of its context figures (a blind twin, or None: itself, zero context)."""

    model: nn.Module
    info: dict[str, Any]
    blind: nn.Module | None = None
    blind_info: dict[str, Any] | None = None

    @property
    def reference(self) -> str:
        return "zero-context" if self.blind is None else "blind-twin"


def _load_pair(
    weights: str | Path | None, name: str, blind_weights: str | Path | None, blind_name: str | None
) -> Enhancer:
    model, info = load_enhancer(weights, name)
    if blind_name is None:
        return Enhancer(model, info)
    blind, blind_info = load_enhancer(weights if blind_weights is None else blind_weights, blind_name, blind=True)
    if int(blind.scale) != int(model.scale):
        raise ValueError(f"blind model {blind_name!r} has scale {blind.scale}, the enhancer {model.scale}")
    return Enhancer(model, info, blind, blind_info)


def blind_twin(weights: str | Path | None, name: str) -> str | None:
    """The blind twin registered beside ``name`` (``<name>-blind`` with a card under the same root), or None."""
    twin = name + BLIND_SUFFIX
    return twin if ((DEFAULT_ROOT if weights is None else Path(weights)) / twin / CARD_FILE).is_file() else None


def _identity(
    weights: str | Path | None, name: str, blind_weights: str | Path | None, blind_name: str | None
) -> tuple[Path, str, Path | None, str | None]:
    """What a model and its reference are: resolved registry roots and names."""
    root = (DEFAULT_ROOT if weights is None else Path(weights)).resolve()
    blind_root = None if blind_name is None else (root if blind_weights is None else Path(blind_weights).resolve())
    return root, name, blind_root, blind_name


# ------------------------------------------------------------------------------------------------------- figures


def summary(values: np.ndarray, modalities: Sequence[str], subjects: Sequence[str]) -> dict[str, Any]:
    """Mean of per-item values overall, per modality and per subject, and the spread of the subject means
    (min, max, sample std over subjects); NaN items (no tissue) are left out."""
    v = np.asarray(values, dtype=np.float64)
    mods, owners = np.asarray(modalities), np.asarray(subjects)
    by_subject = {s: _r(_mean(v[owners == s])) for s in sorted(set(subjects))}
    means = np.array([x for x in by_subject.values() if x is not None])
    return {
        "overall": _r(_mean(v)),
        "by_modality": {m: _r(_mean(v[mods == m])) for m in MODALITIES if (mods == m).any()},
        "by_subject": by_subject,
        "subject_spread": {
            "min": _r(float(means.min())) if means.size else None,
            "max": _r(float(means.max())) if means.size else None,
            "std": _r(float(means.std(ddof=1))) if means.size > 1 else None,
            "subjects": int(means.size),
        },
        "n": int(np.isfinite(v).sum()),
    }


def _only(idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at the pairs ``idx``, NaN elsewhere."""
    out = np.full(len(values), math.nan)
    out[idx] = values[idx]
    return out


def _evaluate_model(
    enhancer: Enhancer,
    test: BenchPairs,
    base: Mapping[str, Mapping[str, np.ndarray]],
    best: str,
    served: ServedSlices,
    permutation: np.ndarray,
    seed: int,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """One model's report — its :data:`FIGURES` with breakdowns and its gain over the reference in every context
    condition — and the per-pair scores of its outputs (true context, shuffled, reference)."""
    lr, context = test.pairs.lr, test.pairs.context
    hr = test.pairs.hr[:, 0].double().numpy()
    still, blurred = test.group("still"), test.group("blurred")
    rng = np.random.default_rng(seed + 3)
    calm, agitated = condition_contexts(CALM, len(blurred), rng), condition_contexts(AGITATED, len(still), rng)

    def scored(idx: np.ndarray, model: nn.Module, ctx: torch.Tensor) -> dict[str, np.ndarray]:
        """Scores of ``model`` given ``ctx`` (one row per chosen pair) on the pairs ``idx``; NaN elsewhere."""
        full = {key: np.full(len(test), math.nan) for key in SCORES}
        if len(idx):
            for key, values in pair_scores(hr[idx], model_output(model, lr[idx], ctx), test.tissue[idx]).items():
                full[key][idx] = values
        return full

    every = np.arange(len(test))
    enh = scored(every, enhancer.model, context)
    shuffled = scored(every, enhancer.model, context[torch.from_numpy(permutation)])
    ref = scored(every, enhancer.model if enhancer.blind is None else enhancer.blind, torch.zeros_like(context))
    calm_blurred = scored(blurred, enhancer.model, calm)["psnr_db"]
    agitated_sharp = scored(still, enhancer.model, agitated)["psnr_db"]

    def s(values: np.ndarray) -> dict[str, Any]:
        return summary(values, test.modalities, test.pairs.subjects)

    gain = enh["psnr_db"] - ref["psnr_db"]
    figures = {
        "tissue_psnr_gain_vs_best_classical_db": s(enh["tissue_psnr_db"] - base[best]["tissue_psnr_db"]),
        "ssim_gain_vs_best_classical": s(enh["ssim"] - base[best]["ssim"]),
        "psnr_gain_vs_bicubic_db": s(enh["psnr_db"] - base["bicubic"]["psnr_db"]),
        "wrong_context_loss_db": s(ref["psnr_db"] - agitated_sharp),
        "context_gain_blurred_db": s(_only(blurred, gain)),
        "shuffled_context_gain_db": s(shuffled["psnr_db"] - ref["psnr_db"]),
        "checkerboard_ratio": summary(checkerboard_ratios(enhancer.model, served), served.modalities, served.subjects),
    }
    report = {
        "weights": enhancer.info,
        "blind_reference": enhancer.reference,
        "blind_weights": enhancer.blind_info,
        "figures": figures,
        # PSNR gain over the reference on the same pairs (dB); "n" = pairs
        "context_conditions": {
            "true": s(gain),
            "true_on_sharp": s(_only(still, gain)),
            "true_on_blurred": figures["context_gain_blurred_db"],
            "shuffled": figures["shuffled_context_gain_db"],
            "calm_but_blurred": s(calm_blurred - ref["psnr_db"]),
            "agitated_but_sharp": s(agitated_sharp - ref["psnr_db"]),
        },
    }
    return report, {"enhancer": enh, "enhancer_shuffled": shuffled, "blind": ref}


# ------------------------------------------------------------------------------------------------------------ run


def run(
    weights: str | Path | None = None,
    name: str | None = None,
    blind_name: str | None = None,
    *,
    blind_weights: str | Path | None = None,
    fast_weights: str | Path | None = None,
    fast_name: str | None = None,
    fast_blind_name: str | None = None,
    fast_blind_weights: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    split_seed: int = 0,
    datasets: Sequence[str] = DATASETS,
    volumes: Sequence[Volume] | None = None,
    pairs_per_subject: int | None = None,
    val_pairs_per_subject: int | None = None,
    threads: int = 1,
    progress: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON summary (see the module docstring).

    ``name`` defaults to the study (PACS) path's enhancer and ``fast_name`` to the fast operating point
    (``enhancer``) in the default settings; ``blind_weights`` / ``fast_blind_weights`` default to the model's own
    root. ``threads``: BM3D's threads (torch's are the caller's).
    """
    started = time.perf_counter()
    served = InferenceSettings()
    name, fast_name = name or served.enhancer_for("study").name, fast_name or served.enhancer.name
    blind_name = blind_name or blind_twin(blind_weights or weights, name)
    fast_blind_name = fast_blind_name or blind_twin(fast_blind_weights or fast_weights, fast_name)
    pacs = _load_pair(weights, name, blind_weights, blind_name)  # fail before loading data
    same = _identity(fast_weights, fast_name, fast_blind_weights, fast_blind_name) == _identity(
        weights, name, blind_weights, blind_name
    )
    fast = pacs if same else _load_pair(fast_weights, fast_name, fast_blind_weights, fast_blind_name)
    scale = int(pacs.model.scale)
    if int(fast.model.scale) != scale:
        raise ValueError(f"the fast model has scale {fast.model.scale}, the PACS model {scale}")
    mode = "quick" if quick else "full"
    per_subject = pairs_per_subject or PAIRS_PER_SUBJECT[mode]
    val_per_subject = val_pairs_per_subject or VAL_PAIRS_PER_SUBJECT[mode]

    given = volumes
    if volumes is None:
        volumes = [v for d in datasets for v in load_dataset(d)]
    volumes = [v for v in volumes if v.modality in MODALITIES and not v.is_rgb]
    test_slices = prepare_slices(held_out_test(volumes), MODALITIES, allow_held_out=True)
    val_slices = prepare_slices(training_splits(volumes, seed=split_seed)["val"], MODALITIES)  # refuses held-out
    if not test_slices:
        raise ValueError(f"no held-out test slices in {list(datasets)} (held-out: {sorted(HELD_OUT_TEST_SUBJECTS)})")
    test = make_bench_pairs(test_slices, scale, per_subject, seed, allow_held_out=True, blur_mix=BLUR_MIX)
    val = make_bench_pairs(val_slices, scale, val_per_subject, seed + 1, blur_mix=BLUR_MIX)
    leaked = sorted(set(test.pairs.subjects) - HELD_OUT_TEST_SUBJECTS)
    if leaked or set(val.pairs.subjects) & HELD_OUT_TEST_SUBJECTS:
        raise AssertionError(f"split leakage: test non-held-out {leaked}, val {sorted(set(val.pairs.subjects))}")
    served = served_slices(test_slices)
    progress(f"{len(test)} test pairs from {sorted(set(test.pairs.subjects))}, {len(val)} val pairs")

    tuned = tune_classical(val, scale, threads, QUICK_GRIDS if quick else GRIDS)
    progress(f"classical tuned on val: {tuned['method']} {tuned['best']} ({tuned['val_tissue_psnr_db']})")

    hr = test.pairs.hr[:, 0].double().numpy()
    blur = [blur_px(p) for p in test.pairs.params]
    up = bicubic(test.pairs.lr, scale)
    base: dict[str, dict[str, np.ndarray]] = {"bicubic": pair_scores(hr, up, test.tissue)}
    for method in GRIDS if not quick else (tuned["method"],):  # quick: only the one chosen on val
        out = _classical_all(test, up, method, tuned["best"][method], threads)
        base[method] = pair_scores(hr, out, test.tissue)
    best = tuned["method"]
    permutation = np.random.default_rng(seed + 2).permutation(len(test))
    pacs_report, pacs_scores = _evaluate_model(pacs, test, base, best, served, permutation, seed)
    models = {"pacs": pacs_report, "fast": pacs_report}
    scores = dict(base) | {"classical": base[best]} | pacs_scores
    if fast is not pacs:  # the same model in both roles is run once
        models["fast"], fast_scores = _evaluate_model(fast, test, base, best, served, permutation, seed)
        scores |= {"fast_" + k: v for k, v in fast_scores.items()}
    tables = {k: _table(v, test.modalities, blur, test.pairs.subjects) for k, v in scores.items()}
    progress("; ".join(f"{k} {_r(t['psnr_db'], 2)}, tissue {_r(t['tissue_psnr_db'], 2)} dB" for k, t in tables.items()))

    def mean(method: str, score: str = "psnr_db") -> float | None:
        return _r(tables[method][score])

    def diff(a: str, b: str) -> float | None:
        return _r(float(np.nanmean(scores[a]["psnr_db"] - scores[b]["psnr_db"])))

    headline = {
        prefix + key: models[role]["figures"][key]["overall"]
        for role, prefix in (("pacs", ""), ("fast", "fast_"))
        for key in FIGURES
    }
    return {
        "benchmark": "enhancer_quality",
        "quick": quick,
        **headline,
        "blind_reference": models["pacs"]["blind_reference"],
        "fast_blind_reference": models["fast"]["blind_reference"],
        "psnr_bicubic_db": mean("bicubic"),
        "psnr_classical_db": mean("classical"),
        "psnr_enhancer_db": mean("enhancer"),
        "psnr_enhancer_shuffled_db": mean("enhancer_shuffled"),
        "psnr_blind_db": mean("blind"),
        "psnr_gain_vs_classical_db": diff("enhancer", "classical"),
        "tissue_psnr_bicubic_db": mean("bicubic", "tissue_psnr_db"),
        "tissue_psnr_classical_db": mean("classical", "tissue_psnr_db"),
        "tissue_psnr_enhancer_db": mean("enhancer", "tissue_psnr_db"),
        "ssim": mean("enhancer", "ssim"),
        "ssim_bicubic": mean("bicubic", "ssim"),
        "ssim_classical": mean("classical", "ssim"),
        "ssim_enhancer_shuffled": mean("enhancer_shuffled", "ssim"),
        "ssim_blind": mean("blind", "ssim"),
        "context_gain_db": diff("enhancer", "blind"),
        "shuffle_cost_db": diff("enhancer", "enhancer_shuffled"),
        "models": models,
        "by_modality": {
            m: {k: v["by_modality"][m] for k, v in tables.items() if m in v["by_modality"]} for m in MODALITIES
        },
        "by_blur": {g: {k: v["by_blur"][g] for k, v in tables.items() if g in v["by_blur"]} for g in BLUR_GROUPS},
        "by_subject": {s: {k: v["by_subject"][s] for k, v in tables.items()} for s in sorted(set(test.pairs.subjects))},
        "methods": {k: {s: _r(v[s]) for s in SCORES} for k, v in tables.items()},
        "classical_method": best,
        "classical_parameter": tuned["parameter"],
        "classical_parameter_name": "h / estimated LR noise sigma" if best == "nl_means" else "sigma_psd / estimated"
        " LR noise sigma",
        "classical_tuning": tuned,
        "pairs": len(test),
        "pairs_by_modality": {m: test.modalities.count(m) for m in MODALITIES},
        "pairs_by_blur": {g: len(test.group(g)) for g in BLUR_GROUPS},
        "subjects": sorted(set(test.pairs.subjects)),
        "shuffle_fixed_points": int((permutation == np.arange(len(test))).sum()),
        "checkerboard_slices": len(served.subjects),
        "fast_is_pacs_model": fast is pacs,
        "weights": pacs.info,
        "blind_weights": pacs.blind_info,
        "fast_weights": fast.info,
        "fast_blind_weights": fast.blind_info,
        "data": {
            "datasets": list(datasets) if given is None else "volumes supplied by the caller",
            "test": "gan.data.held_out_test subjects only (HELD_OUT_TEST_SUBJECTS)",
            "tuning": f"classical strengths on the val split of gan.train.data.training_splits(seed={split_seed})",
            "region": f"central {CROP}x{CROP} HR crop of each [0, 1]-normalised slice (not full slices)",
            "degradation": f"gan.train.data.make_pairs(allow_held_out=True), x{scale}, noise sigma "
            f"U{tuple(TrainConfig.noise_sigma)}, channels missing p={TrainConfig.missing_prob}, seed {seed}",
            "blur_mix": BLUR_MIX,
            "pairs_per_subject": per_subject,
            "checkerboard": f"central {CHECKERBOARD_SIDE}^2 of up to {CHECKERBOARD_SLICES} slices per held-out "
            "subject, no degradation, all-missing context",
            "data_range": 1.0,
        },
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enhancer_quality", description=__doc__.split("\n")[0])
    served = InferenceSettings()
    parser.add_argument("--weights", default=None, help="registry root of --name (default: the shipped gan/weights)")
    parser.add_argument("--name", default=None, help="the model the PACS (study) path serves (default "
                        f"{served.enhancer_for('study').name})")  # fmt: skip
    parser.add_argument("--blind-name", default=None, help="its blind twin (trained with --blind); default: "
                        "<name>-blind where registered, else the model itself with zero context")  # fmt: skip
    parser.add_argument("--blind-weights", default=None, help="registry root of --blind-name (default --weights)")
    parser.add_argument("--fast-weights", default=None, help="registry root of --fast-name (default gan/weights)")
    parser.add_argument("--fast-name", default=None, help=f"the fast model (default {served.enhancer.name})")
    parser.add_argument("--fast-blind-name", default=None, help="the fast model's blind twin (default as --blind-name)")
    parser.add_argument("--fast-blind-weights", default=None, help="registry root of --fast-blind-name")
    parser.add_argument("--quick", action="store_true", help="4 test / 2 val pairs per subject (under a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0, help="the training split seed (val subjects)")
    parser.add_argument("--pairs-per-subject", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="BM3D threads (torch runs on 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        summary_ = run(
            args.weights, args.name, args.blind_name, blind_weights=args.blind_weights,
            fast_weights=args.fast_weights, fast_name=args.fast_name, fast_blind_name=args.fast_blind_name,
            fast_blind_weights=args.fast_blind_weights, quick=args.quick, seed=args.seed,
            split_seed=args.split_seed, pairs_per_subject=args.pairs_per_subject, threads=args.threads,
        )  # fmt: skip
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary_))
    return 0


if __name__ == "__main__":
    sys.exit(main())
