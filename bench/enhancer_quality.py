"""Enhancer quality on the fixed held-out test subjects against bicubic, a tuned classical pipeline and itself.

Method, all in one process on identical inputs:

* **Data** — the default datasets (``pydicom``, ``mni152``, ``pyradiomics``), CT and MR only. Test pairs come ONLY
  from :data:`gan.data.HELD_OUT_TEST_SUBJECTS` (:func:`gan.data.held_out_test`); the classical pipeline is tuned on
  the ``val`` split of :func:`gan.train.data.training_splits` (the model's own val subjects, never test). Slices are
  normalised as in training and serving (:func:`gan.train.data.prepare_slices`, :mod:`gan.intensity`: CT window,
  MR p99.5 per instance — per axial slice for NIfTI/NRRD volumes) to [0, 1].
* **Pairs** — each subject gives the same number of pairs (``--pairs-per-subject``; 48, 8 with ``--quick``):
  evenly spaced foreground slices, cycled when a subject has fewer slices than pairs (each repeat gets other
  vitals and noise). Every pair is the **central 176×176 HR crop** of its slice (full slices are up to 512²; the
  crop keeps the runtime low and fits the smallest val slice, 233×197), degraded exactly as training does by
  :func:`gan.train.data.make_pairs` (``allow_held_out=True``): sampled vitals → ``params_from_context`` (true levels)
  → blur with an 8-pixel real margin → ×scale block mean → noise σ ~ U(0.01, 0.03) (Rician for MR); the context
  the model sees is built from the OBSERVED vitals (channels missing at random). The slice handed to
  ``make_pairs`` is exactly crop + margin, so its patch is the centre crop. One generator seeded with ``--seed``
  drives everything: every method sees the same LR images.
* **Methods** — ``bicubic``: ``F.interpolate(mode="bicubic", align_corners=False)``, the enhancer's global-residual
  base; ``classical``: bicubic + ``skimage.restoration.denoise_nl_means`` (``h = k·σ̂``, σ̂ from
  Immerkær's estimate on the LR image, fast mode, 5×5 patches, distance 6) or bicubic +
  ``denoise_tv_chambolle`` (``weight``), each strength chosen by a small grid on the val pairs, and the method
  with the better val PSNR reported as ``classical`` (both are reported on test too); ``enhancer`` with the
  true context; ``enhancer_shuffled`` with the contexts permuted across the test pairs (fixed seed);
  optionally ``blind`` (a model trained with ``--blind``) with zero context. Outputs are clamped to [0, 1].
* **Metrics** — :func:`gan.metrics.psnr` and :func:`gan.metrics.ssim` with ``data_range=1`` on the 176×176
  crops, mean over pairs, plus per-modality (MR, CT) means, per-blur-group means (``by_blur``: "still" = no
  blur kernel, "blurred" = motion + respiratory + cardiac kernel lengths ≥ 5 HR px — does a method undo blur
  or only noise?) and per-subject means (``by_subject``: the held-out subjects give very different slice
  counts — one or two slices for the pydicom files, cycled — so one subject's image can weigh a quarter).
  ``context_gain_db`` = enhancer − blind (null without ``--blind-name``), ``shuffled_context_gain_db`` =
  enhancer − enhancer with shuffled context.

No training happens here: the weights come from :func:`gan.registry.load_model` and a missing model is an error
naming the training command.

    python -m bench.enhancer_quality --weights var/train --name enhancer-alpha-x2 [--blind-name NAME]
    python -m bench.enhancer_quality --weights var/train --name enhancer-alpha-x2 --quick   # under a minute
    python -m bench.enhancer_quality --weights gan/weights --name enhancer-x2 \
        --blind-weights var/train --blind-name enhancer-x2-blind     # the shipped model (docs/models.md)

The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle
from torch import nn

from core import InferenceSettings
from gan import (
    BLUR_GROUPS,
    CARD_FILE,
    DEFAULT_ROOT,
    HELD_OUT_TEST_SUBJECTS,
    PATCH_MARGIN,
    PairBatch,
    PreparedSlice,
    TrainConfig,
    Volume,
    blur_px,
    center_window,
    held_out_test,
    load_card,
    load_dataset,
    load_model,
    make_pairs,
    noise_sigma,
    prepare_slices,
    psnr,
    ssim,
    training_splits,
)

__all__ = [
    "CROP",
    "DATASETS",
    "NLM_GRID",
    "TV_GRID",
    "BenchPairs",
    "bicubic",
    "classical",
    "evaluate",
    "load_enhancer",
    "main",
    "make_bench_pairs",
    "run",
    "tune_classical",
]

DATASETS: tuple[str, ...] = ("pydicom", "mni152", "pyradiomics")
MODALITIES: tuple[str, ...] = ("CT", "MR")
CROP = 176  # HR side of the central crop (a multiple of 4 and 16; crop + 2·margin = 192 fits every val slice)
NLM_GRID: tuple[float, ...] = (0.15, 0.25, 0.4, 0.6, 0.9, 1.3, 2.0)  # h = k · estimated σ
TV_GRID: tuple[float, ...] = (0.002, 0.004, 0.007, 0.01, 0.015, 0.025, 0.04)  # denoise_tv_chambolle weight
PAIRS_PER_SUBJECT = {"full": 48, "quick": 8}
VAL_PAIRS_PER_SUBJECT = {"full": 24, "quick": 6}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- pairs


@dataclass
class BenchPairs:
    """Degraded pairs plus the modality of each (``pairs.subjects`` names the subject of each pair)."""

    pairs: PairBatch
    modalities: list[str]

    def __len__(self) -> int:
        return len(self.pairs)


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
) -> BenchPairs:
    """``per_subject`` pairs per subject (evenly spaced slices, cycled), central ``crop``² HR, via ``make_pairs``."""
    rng = np.random.default_rng(seed)
    by_subject: dict[str, list[PreparedSlice]] = {}
    for sl in slices:
        by_subject.setdefault(sl.subject, []).append(sl)
    batches, modalities = [], []
    for subject in sorted(by_subject):
        items = by_subject[subject]
        chosen = np.linspace(0, len(items) - 1, min(per_subject, len(items))).round().astype(int)
        for i in range(per_subject):
            sl = _centre(items[int(chosen[i % len(chosen)])], crop + 2 * PATCH_MARGIN)
            batches.append(
                make_pairs(
                    [sl], scale, rng, 1, patch=crop, noise_sigma=noise_sigma, missing_prob=missing_prob,
                    allow_held_out=allow_held_out,
                )
            )  # fmt: skip
            modalities.append(sl.modality)
    if not batches:
        raise ValueError("no usable slices to build pairs from")
    return BenchPairs(_concat(batches), modalities)


# -------------------------------------------------------------------------------------------------------- methods


def bicubic(lr: torch.Tensor, scale: int) -> np.ndarray:
    """N×1×h×w → N×(scale·h)×(scale·w) float64, bicubic (align_corners=False, the model's base), clamped to [0, 1]."""
    with torch.no_grad():
        up = F.interpolate(lr, scale_factor=float(scale), mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)[:, 0].double().numpy()


def classical(up: np.ndarray, method: str, strength: float, lr: np.ndarray | None = None) -> np.ndarray:
    """Denoise one bicubic image: ``nl_means`` (h = strength · σ̂) or ``tv_chambolle`` (weight = strength).

    σ̂ is :func:`gan.metrics.noise_sigma` (Immerkær) of the LOW-resolution image ``lr`` when given (its noise is
    white; bicubic upsampling correlates and shrinks it), else of ``up``.
    """
    if method == "nl_means":
        sigma = max(noise_sigma(up if lr is None else lr), 1e-4)
        out = denoise_nl_means(up, h=strength * sigma, patch_size=5, patch_distance=6, fast_mode=True)
    elif method == "tv_chambolle":
        out = denoise_tv_chambolle(up, weight=strength)
    else:
        raise ValueError(f"unknown classical method {method!r}")
    return np.clip(out, 0.0, 1.0)


GRIDS: dict[str, tuple[float, ...]] = {"nl_means": NLM_GRID, "tv_chambolle": TV_GRID}


def _scores(hr: np.ndarray, out: np.ndarray) -> tuple[list[float], list[float]]:
    p = [psnr(hr[i], out[i], 1.0) for i in range(len(hr))]
    s = [ssim(hr[i], out[i], 1.0) for i in range(len(hr))]
    return p, s


def tune_classical(val: BenchPairs, scale: int) -> dict[str, Any]:
    """Grid search of each classical method's strength on the VAL pairs (mean PSNR); the better method wins."""
    up = bicubic(val.pairs.lr, scale)
    low = val.pairs.lr[:, 0].double().numpy()
    hr = val.pairs.hr[:, 0].double().numpy()
    table: dict[str, dict[str, float]] = {}
    best: dict[str, float] = {}
    for method, grid in GRIDS.items():
        table[method] = {}
        for k in grid:
            out = np.stack([classical(u, method, k, lo) for u, lo in zip(up, low, strict=True)])
            table[method][str(k)] = float(np.mean(_scores(hr, out)[0]))
        best[method] = float(max(grid, key=lambda k, m=method: table[m][str(k)]))
    winner = max(best, key=lambda m: table[m][str(best[m])])
    return {
        "method": winner,
        "parameter": best[winner],
        "best": best,
        "at_grid_edge": {m: best[m] in (min(GRIDS[m]), max(GRIDS[m])) for m in GRIDS},
        "val_psnr_db": table,
        "val_bicubic_psnr_db": float(np.mean(_scores(hr, up)[0])),
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


def evaluate(
    hr: np.ndarray,
    out: np.ndarray,
    modalities: Sequence[str],
    blur_px: Sequence[int] | None = None,
    subjects: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Mean PSNR/SSIM over pairs, per modality, (given each pair's total blur length) per
    :data:`gan.train.data.BLUR_GROUPS` group and (given each pair's subject) per subject (data range 1)."""
    p, s = _scores(hr, out)
    result: dict[str, Any] = {"psnr_db": float(np.mean(p)), "ssim": float(np.mean(s))}
    subsets = {m: np.asarray(modalities) == m for m in MODALITIES}
    blur = np.asarray([] if blur_px is None else blur_px)
    groups = {g: (blur >= lo) & (blur <= hi) for g, (lo, hi) in BLUR_GROUPS.items()} if blur_px is not None else {}
    owners = np.asarray([] if subjects is None else subjects)
    by_subject = {name: owners == name for name in sorted(set(owners.tolist()))}
    for key, members in (("by_modality", subsets), ("by_blur", groups), ("by_subject", by_subject)):
        result[key] = {}
        for name, chosen in members.items():
            idx = np.flatnonzero(chosen)
            if len(idx):
                result[key][name] = {
                    "psnr_db": float(np.mean([p[i] for i in idx])),
                    "ssim": float(np.mean([s[i] for i in idx])),
                    "pairs": len(idx),
                }
    return result


# ---------------------------------------------------------------------------------------------------------- model


def shipped_recipe(out: str | Path, name: str) -> str:
    """The shipped ``enhancer-x2`` card's training command, writing ``name`` under ``out`` instead."""
    words = load_card(DEFAULT_ROOT / InferenceSettings().enhancer.name / CARD_FILE).training.command.split()
    for flag, value in (("--out", str(out)), ("--name", name)):
        words[words.index(flag) + 1] = value
    return " ".join(words)


def load_enhancer(weights: str | Path, name: str, *, blind: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``gan.registry.load_model(weights, name)``; a missing model raises FileNotFoundError naming the train command."""
    card_path = Path(weights) / name / CARD_FILE
    if not card_path.is_file():
        command = shipped_recipe(weights, name) + (" --blind" if blind else "")
        raise FileNotFoundError(
            f"no trained enhancer {name!r} under {weights} ({card_path} missing); the benchmark does not train — "
            f"train it first with: {command}"
        )
    model, card = load_model(weights, name)
    if card.architecture != "enhancer":
        raise ValueError(f"{card_path}: architecture {card.architecture!r}, expected 'enhancer'")
    info = {
        "name": card.name,
        "sha256": card.sha256,
        "card_sha256": hashlib.sha256(card_path.read_bytes()).hexdigest(),
        "dir": str(Path(weights)),
        "config": card.config,
        "command": card.training.command,
    }
    return model, info


# ------------------------------------------------------------------------------------------------------------ run


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def run(
    weights: str | Path,
    name: str,
    blind_name: str | None = None,
    *,
    blind_weights: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    split_seed: int = 0,
    datasets: Sequence[str] = DATASETS,
    volumes: Sequence[Volume] | None = None,
    pairs_per_subject: int | None = None,
    val_pairs_per_subject: int | None = None,
    progress: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON summary (see the module docstring).

    ``blind_weights``: registry root of ``blind_name`` (default ``weights``).
    """
    started = time.perf_counter()
    model, info = load_enhancer(weights, name)  # fail before loading data
    blind_root = weights if blind_weights is None else blind_weights
    blind_model, blind_info = (None, None) if blind_name is None else load_enhancer(blind_root, blind_name, blind=True)
    scale = int(model.scale)
    if blind_model is not None and int(blind_model.scale) != scale:
        raise ValueError(f"blind model {blind_name!r} has scale {blind_model.scale}, the enhancer {scale}")
    mode = "quick" if quick else "full"
    per_subject = pairs_per_subject or PAIRS_PER_SUBJECT[mode]
    val_per_subject = val_pairs_per_subject or VAL_PAIRS_PER_SUBJECT[mode]

    given = volumes
    if volumes is None:
        volumes = [v for d in datasets for v in load_dataset(d)]
    volumes = [v for v in volumes if v.modality in MODALITIES and not v.is_rgb]
    test_volumes = held_out_test(volumes)
    val_volumes = training_splits(volumes, seed=split_seed)["val"]
    test_slices = prepare_slices(test_volumes, MODALITIES, allow_held_out=True)
    val_slices = prepare_slices(val_volumes, MODALITIES)  # refuses held-out subjects
    if not test_slices:
        raise ValueError(
            f"no held-out test slices in {list(datasets)} (held-out: {sorted(HELD_OUT_TEST_SUBJECTS)})"
        )
    test = make_bench_pairs(test_slices, scale, per_subject, seed, allow_held_out=True)
    val = make_bench_pairs(val_slices, scale, val_per_subject, seed + 1)
    leaked = sorted(set(test.pairs.subjects) - HELD_OUT_TEST_SUBJECTS)
    if leaked or set(val.pairs.subjects) & HELD_OUT_TEST_SUBJECTS:
        raise AssertionError(f"split leakage: test non-held-out {leaked}, val {sorted(set(val.pairs.subjects))}")
    progress(f"{len(test)} test pairs from {sorted(set(test.pairs.subjects))}, {len(val)} val pairs")

    tuned = tune_classical(val, scale)
    progress(f"classical tuned on val: {tuned['method']} {tuned['parameter']} ({tuned['val_psnr_db']})")

    hr = test.pairs.hr[:, 0].double().numpy()
    blur = [blur_px(p) for p in test.pairs.params]

    def scored(out: np.ndarray) -> dict[str, Any]:
        return evaluate(hr, out, test.modalities, blur, test.pairs.subjects)

    up = bicubic(test.pairs.lr, scale)
    results: dict[str, dict[str, Any]] = {"bicubic": scored(up)}
    low = test.pairs.lr[:, 0].double().numpy()
    for method, k in tuned["best"].items():
        results[method] = scored(np.stack([classical(u, method, k, lo) for u, lo in zip(up, low, strict=True)]))
    results["classical"] = results[tuned["method"]]
    context = test.pairs.context
    permutation = np.random.default_rng(seed + 2).permutation(len(test))
    results["enhancer"] = scored(model_output(model, test.pairs.lr, context))
    shuffled = context[torch.from_numpy(permutation)]
    results["enhancer_shuffled"] = scored(model_output(model, test.pairs.lr, shuffled))
    if blind_model is not None:
        results["blind"] = scored(model_output(blind_model, test.pairs.lr, torch.zeros_like(context)))
    progress("; ".join(f"{k} {v['psnr_db']:.2f} dB / {v['ssim']:.4f}" for k, v in results.items()))

    enh = results["enhancer"]["psnr_db"]
    blind_psnr = results["blind"]["psnr_db"] if "blind" in results else None
    return {
        "benchmark": "enhancer_quality",
        "quick": quick,
        "psnr_bicubic_db": _r(results["bicubic"]["psnr_db"]),
        "psnr_classical_db": _r(results["classical"]["psnr_db"]),
        "psnr_enhancer_db": _r(enh),
        "psnr_enhancer_shuffled_db": _r(results["enhancer_shuffled"]["psnr_db"]),
        "psnr_blind_db": _r(blind_psnr),
        "psnr_gain_vs_bicubic_db": _r(enh - results["bicubic"]["psnr_db"]),
        "psnr_gain_vs_classical_db": _r(enh - results["classical"]["psnr_db"]),
        "ssim": _r(results["enhancer"]["ssim"]),
        "ssim_bicubic": _r(results["bicubic"]["ssim"]),
        "ssim_classical": _r(results["classical"]["ssim"]),
        "ssim_enhancer_shuffled": _r(results["enhancer_shuffled"]["ssim"]),
        "ssim_blind": _r(results["blind"]["ssim"]) if "blind" in results else None,
        "context_gain_db": None if blind_psnr is None else _r(enh - blind_psnr),
        "shuffled_context_gain_db": _r(enh - results["enhancer_shuffled"]["psnr_db"]),
        "by_modality": {
            m: {k: v["by_modality"][m] for k, v in results.items() if m in v["by_modality"]} for m in MODALITIES
        },
        # blur = total motion + respiratory + cardiac kernel length (HR px): "still" 0, "blurred" >= 5
        "by_blur": {g: {k: v["by_blur"][g] for k, v in results.items() if g in v["by_blur"]} for g in BLUR_GROUPS},
        # 4 held-out subjects, but not 4 equal samples: PANCREAS_0001 is one slice, 021234567 two (cycled)
        "by_subject": {
            name: {k: v["by_subject"][name] for k, v in results.items()} for name in sorted(set(test.pairs.subjects))
        },
        "methods": {k: {"psnr_db": _r(v["psnr_db"]), "ssim": _r(v["ssim"])} for k, v in results.items()},
        "classical_method": tuned["method"],
        "classical_parameter": tuned["parameter"],
        "classical_parameter_name": "h / estimated LR noise sigma" if tuned["method"] == "nl_means" else "weight",
        "classical_tuning": tuned,
        "pairs": len(test),
        "pairs_by_modality": {m: test.modalities.count(m) for m in MODALITIES},
        "subjects": sorted(set(test.pairs.subjects)),
        "shuffle_fixed_points": int((permutation == np.arange(len(test))).sum()),
        "weights": info,
        "blind_weights": blind_info,
        "data": {
            "datasets": list(datasets) if given is None else "volumes supplied by the caller",
            "test": "gan.data.held_out_test subjects only (HELD_OUT_TEST_SUBJECTS)",
            "tuning": f"classical strength on the val split of gan.train.data.training_splits(seed={split_seed})",
            "region": f"central {CROP}x{CROP} HR crop of each [0, 1]-normalised slice (not full slices)",
            "degradation": f"gan.train.data.make_pairs(allow_held_out=True), x{scale}, noise sigma "
            f"U{tuple(TrainConfig.noise_sigma)}, channels missing p={TrainConfig.missing_prob}, seed {seed}",
            "pairs_per_subject": per_subject,
            "data_range": 1.0,
        },
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enhancer_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="registry root holding <name>/card.json (training --out)")
    parser.add_argument("--name", required=True, help="enhancer model name, e.g. enhancer-alpha-x2")
    parser.add_argument("--blind-name", default=None, help="a model trained with --blind (zero context)")
    parser.add_argument("--blind-weights", default=None, help="registry root of --blind-name (default --weights)")
    parser.add_argument("--quick", action="store_true", help="8 test / 6 val pairs per subject (under a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0, help="the training split seed (val subjects)")
    parser.add_argument("--pairs-per-subject", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        summary = run(
            args.weights, args.name, args.blind_name, blind_weights=args.blind_weights, quick=args.quick,
            seed=args.seed, split_seed=args.split_seed,
            pairs_per_subject=args.pairs_per_subject,
        )  # fmt: skip
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
