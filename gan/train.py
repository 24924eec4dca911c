"""Training of the context-conditioned enhancer on real images with simulated, vitals-driven degradation.

Data (:func:`make_pairs`): 2-D slices of real CT and MR volumes (:mod:`gan.data`), split BY SUBJECT with
:func:`gan.data.split` (train / val only: the test split, which always holds the held-out subjects, is never
touched). CT is windowed with its ``window`` to [0, 1]; MR is scaled per volume by ``(x − min) / (p99.5 − min)``
and clipped to [0, 1]. Each sample is a random HR patch, a plausible set of vitals (resting → agitated, some
channels missing at random), the context vector built by :func:`core.context.context_from_series` from those
vitals, and the LR patch made by :func:`gan.degrade.params_from_context` + :func:`gan.degrade.degrade`.

The degradation follows the patient's TRUE vitals; the model sees only the OBSERVED ones (a missing channel is
missing from the context, not from the patient). Blur is applied to a margin around the patch, then cropped,
so patch borders see real neighbours.

Training (:func:`train_enhancer`): Adam with linear warm-up and cosine decay (:meth:`TrainConfig.learning_rate`),
an EMA of the weights (what is validated and saved), fixed seeds, validation PSNR/SSIM (vs bicubic, overall and
for still / blurred pairs) every ``val_every`` steps on fixed val pairs, the lowest-val-loss step checkpointed
through :func:`gan.registry.save_model` with a model card, early stopping on the smoothed val loss, loss curves
as PNG. ``conditioning`` ("alpha", "film", "none") and ``blind`` (context zeroed) give the variants the benchmark
compares. CLI: ``python -m gan.train enhancer --steps N --out DIR --conditioning alpha|film|none [--blind] --seed S``
(:func:`main`; the shipped recipe is in ``docs/training.md``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import itertools
import json
import math
import shlex
import struct
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.context import CHANNELS, CONTEXT_SIZE, SensorContext, context_from_series
from gan import data as gdata
from gan import metrics
from gan.degrade import DegradationParams, degrade, params_from_context
from gan.losses import EnhancerLoss, FeatureNetwork, discriminator_loss

__all__ = [
    "BLUR_GROUPS",
    "DEFAULT_LOSS_WEIGHTS",
    "VITAL_RANGES",
    "PairBatch",
    "PreparedSlice",
    "TrainConfig",
    "TrainResult",
    "blur_px",
    "body_region",
    "main",
    "make_pairs",
    "normalise_volume",
    "prepare_slices",
    "sample_context",
    "sample_vitals",
    "train_enhancer",
    "training_splits",
    "write_loss_curve",
    "write_png",
]

#: Loss weights of the first (non-adversarial) stage.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"l1": 1.0, "ssim": 0.5, "mse": 0.0}
#: Plausible levels from resting (agitation 0) to agitated (agitation 1); motion is interpolated on a log scale.
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "motion": (0.05, 8.0),
    "respiratory_rate": (10.0, 35.0),
    "heart_rate": (55.0, 140.0),
    "spo2": (99.0, 90.0),
    "temperature": (36.5, 38.5),
    "systolic_bp": (110.0, 160.0),
    "diastolic_bp": (70.0, 95.0),
}
_AT_MS = 1_700_000_000_000  # an arbitrary fixed "acquisition time" for synthetic contexts
_MARGIN = 8  # HR pixels of real neighbourhood kept around a patch while blurring (a multiple of every scale)
_REGIONS = {"lung": "CHEST", "brain": "HEAD", "breast": "BREAST", "mni152": "HEAD"}


# ---------------------------------------------------------------------------------------------------------- data


@dataclass
class PreparedSlice:
    """One normalised 2-D slice ([0, 1] float32) with what the degradation needs."""

    subject: str
    source: str
    modality: str
    region: str
    image: np.ndarray


@dataclass
class PairBatch:
    """Training pairs: ``lr`` N×1×(P/s)×(P/s), ``hr`` N×1×P×P in [0, 1], ``context`` N×CONTEXT_SIZE (float32).

    ``observed`` are the levels the context shows (None = missing), ``true_levels`` the ones that drove the
    degradation.
    """

    lr: Tensor
    hr: Tensor
    context: Tensor
    subjects: list[str]
    observed: list[dict[str, float | None]]
    true_levels: list[dict[str, float]]
    params: list[DegradationParams]

    def __len__(self) -> int:
        return self.lr.shape[0]


def normalise_volume(volume: gdata.Volume) -> np.ndarray:
    """CT: ``window`` (center, width) → [0, 1]; others: ``(x − min) / (p99.5 − min)`` per volume; clipped, float32."""
    if volume.is_rgb:
        raise ValueError(f"{volume.source}: RGB images are not supported by the grey-level enhancer training")
    if volume.modality == "CT":
        center, width = volume.window or gdata.SOFT_TISSUE_WINDOW
        out = (volume.pixels.astype(np.float32) - (center - width / 2)) / width
    else:
        display = gdata.display_pixels(volume).astype(np.float32)
        lo, hi = float(display.min()), float(np.percentile(display, 99.5))
        out = (display - lo) / max(hi - lo, 1e-6)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def body_region(volume: gdata.Volume) -> str:
    """BodyPartExamined of a DICOM volume, else a region from the source name ("" when unknown)."""
    path = volume.meta.get("path")
    if path:
        import pydicom

        try:
            region = pydicom.dcmread(path, stop_before_pixels=True).get("BodyPartExamined")
        except Exception:  # an unreadable header only costs the region
            region = None
        if region:
            return str(region).upper().replace(" ", "")
    return next((r for key, r in _REGIONS.items() if key in volume.source.lower()), "")


def prepare_slices(
    volumes: Sequence[gdata.Volume],
    modalities: Sequence[str] = ("CT", "MR"),
    *,
    allow_held_out: bool = False,
    min_side: int = 32,
) -> list[PreparedSlice]:
    """Normalised foreground slices (:func:`gan.data.slices`, axis 0) of the volumes of ``modalities``.

    Held-out test subjects raise ValueError unless ``allow_held_out`` (evaluation code only).
    """
    held = sorted({v.subject for v in gdata.held_out_test(volumes)})
    if held and not allow_held_out:
        raise ValueError(f"held-out test subjects must never be used for training: {held}")
    out: list[PreparedSlice] = []
    for volume in volumes:
        if volume.modality not in modalities or volume.is_rgb or min(volume.spatial_shape[-2:]) < min_side:
            continue
        normalised = normalise_volume(volume)
        region = body_region(volume)
        for sl in gdata.slices(volume):
            image = normalised if normalised.ndim == 2 else normalised[sl.index]
            out.append(PreparedSlice(volume.subject, volume.source, volume.modality, region, image))
    return out


def sample_vitals(
    rng: np.random.Generator, missing_prob: float = 0.2, none_prob: float = 0.1
) -> tuple[dict[str, float], dict[str, float | None]]:
    """``(true, observed)`` vitals levels for one sample.

    One agitation level a ~ U(0, 1) per sample, each channel at ``clip(a + N(0, 0.15))`` of its
    :data:`VITAL_RANGES` span (motion log-scaled). In ``observed`` each channel is missing (None) with
    probability ``missing_prob``, and all of them with probability ``none_prob`` (no sensors worn).
    """
    agitation = float(rng.uniform(0.0, 1.0))
    true: dict[str, float] = {}
    for channel in CHANNELS:
        lo, hi = VITAL_RANGES[channel]
        u = float(np.clip(agitation + rng.normal(0.0, 0.15), 0.0, 1.0))
        true[channel] = lo * (hi / lo) ** u if channel == "motion" else lo + (hi - lo) * u
    none = rng.uniform() < none_prob
    missing = rng.uniform(size=len(CHANNELS)) < missing_prob
    observed = {c: (None if none or missing[i] else round(true[c], 4)) for i, c in enumerate(CHANNELS)}
    return true, observed


def sample_context(
    observed: Mapping[str, float | None], rng: np.random.Generator, patient_id: str = "synthetic"
) -> SensorContext:
    """The context :func:`core.context.context_from_series` builds from one reading per present channel.

    Each present channel gets one sample at its level, 0–120 s before the acquisition time (so ``fresh`` varies).
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for channel in CHANNELS:
        level = observed.get(channel)
        age_ms = int(rng.uniform(0.0, 120.0) * 1000)
        if level is not None:
            series[channel] = [(_AT_MS - age_ms, float(level))]
    return context_from_series(patient_id, series, _AT_MS)


def crop_patch(image: np.ndarray, size: int, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """A ``size``² region (symmetric padding if the image is smaller), preferring textured ones (std of the centre)."""
    h, w = image.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
        h, w = image.shape
    best, best_std = None, -1.0
    for _ in range(tries):
        r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        region = image[r : r + size, c : c + size]
        std = float(region[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN].std())
        if std > best_std:
            best, best_std = region, std
        if std > 0.05:
            break
    assert best is not None
    return best


def make_pairs(
    volumes: Sequence[gdata.Volume] | Sequence[PreparedSlice],
    scale: int,
    rng: np.random.Generator,
    n: int = 16,
    *,
    patch: int = 64,
    noise_sigma: tuple[float, float] = (0.01, 0.03),
    missing_prob: float = 0.2,
    none_prob: float = 0.1,
    modalities: Sequence[str] = ("CT", "MR"),
    allow_held_out: bool = False,
    textured_fraction: float = 1.0,
    dihedral: bool = False,
) -> PairBatch:
    """``n`` (lr, hr, context) samples from real slices; subjects are drawn uniformly, then one of their slices.

    ``volumes`` are :class:`gan.data.Volume` s (prepared here) or already :func:`prepare_slices` d slices.
    ``patch`` is the HR side (a multiple of ``scale``); noise σ (fraction of the [0, 1] range) is uniform in
    ``noise_sigma``. Held-out test subjects are refused unless ``allow_held_out``. A fraction
    ``textured_fraction`` of the patches prefers textured regions (best of 8 random crops by std); the others are
    plain uniform random crops (flat regions and background too, where denoising matters most).
    ``dihedral`` turns each clean region by one of the 8 flips/rotations (uniform) before it is degraded, so
    blur directions stay those the vitals drew (training augmentation; one more draw per sample).
    """
    if patch % scale or patch < 16:
        raise ValueError(f"patch must be a multiple of scale {scale} and >= 16, got {patch}")
    pool = list(volumes)
    if pool and isinstance(pool[0], gdata.Volume):
        pool = prepare_slices(pool, modalities, allow_held_out=allow_held_out)  # type: ignore[arg-type]
    elif not allow_held_out:
        held = sorted({s.subject for s in pool if s.subject in gdata.HELD_OUT_TEST_SUBJECTS})
        if held:
            raise ValueError(f"held-out test subjects must never be used for training: {held}")
    if not pool:
        raise ValueError(f"no usable {'/'.join(modalities)} slices in the given volumes")
    by_subject: dict[str, list[PreparedSlice]] = {}
    for sl in pool:
        by_subject.setdefault(sl.subject, []).append(sl)  # type: ignore[union-attr]
    subjects = sorted(by_subject)

    lrs, hrs, contexts, chosen, observed_all, true_all, params_all = [], [], [], [], [], [], []
    size = patch + 2 * _MARGIN
    for _ in range(n):
        subject = subjects[int(rng.integers(len(subjects)))]
        candidates = by_subject[subject]
        sl = candidates[int(rng.integers(len(candidates)))]
        textured = textured_fraction >= 1.0 or rng.uniform() < textured_fraction  # no extra draw at 1.0
        region = crop_patch(sl.image, size, rng, tries=8 if textured else 1)
        if dihedral:
            k = int(rng.integers(8))
            region = np.ascontiguousarray(np.rot90(region.T if k >= 4 else region, k % 4))
        true, observed = sample_vitals(rng, missing_prob, none_prob)
        ctx = sample_context(observed, rng)
        sigma = float(rng.uniform(*noise_sigma))
        params = params_from_context(true, f"{sl.modality}:{sl.region}", rng, scale=scale, noise_sigma=sigma)
        low = degrade(region, params, (0.0, 1.0), rng)
        m = _MARGIN // scale
        hrs.append(region[_MARGIN : _MARGIN + patch, _MARGIN : _MARGIN + patch])
        lrs.append(low[m : m + patch // scale, m : m + patch // scale])
        contexts.append(ctx.vector)
        chosen.append(subject)
        observed_all.append(observed)
        true_all.append(true)
        params_all.append(params)
    return PairBatch(
        lr=torch.from_numpy(np.stack(lrs)[:, None].astype(np.float32)),
        hr=torch.from_numpy(np.stack(hrs)[:, None].astype(np.float32)),
        context=torch.from_numpy(np.stack(contexts).astype(np.float32)),
        subjects=chosen,
        observed=observed_all,
        true_levels=true_all,
        params=params_all,
    )


def training_splits(
    volumes: Sequence[gdata.Volume], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, list[gdata.Volume]]:
    """:func:`gan.data.split` by subject; returns only ``train`` and ``val`` (the test split is never used here)."""
    parts = gdata.split(volumes, fractions, seed=seed)
    for name in ("train", "val"):
        leaked = sorted({v.subject for v in gdata.held_out_test(parts[name])})
        if leaked:  # split() guarantees this; checked again because training on them would be silent
            raise AssertionError(f"held-out test subjects in {name}: {leaked}")
    return {"train": parts["train"], "val": parts["val"]}


# ----------------------------------------------------------------------------------------------------------- PNG


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an H×W×3 uint8 array as an 8-bit RGB PNG (zlib only, no imaging library)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_png needs H×W×3 uint8, got {arr.shape}")
    h, w, _ = arr.shape

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(png)
    return path


def write_loss_curve(
    path: str | Path,
    train: Sequence[float],
    val_steps: Sequence[int],
    val_loss: Sequence[float],
    size: tuple[int, int] = (400, 640),
) -> Path:
    """Loss curves as a PNG: training loss (blue, moving average over ~2 % of the steps), val loss (orange, dots).

    x: step 0 … last; y: linear from the smallest to the largest plotted value; grey lines at quarters of both.
    """
    from skimage.draw import disk, line

    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 40, w - 20, 20, h - 30
    steps = max(len(train), max(val_steps, default=1), 1)
    k = max(1, len(train) // 50)
    smooth = np.convolve(np.asarray(train, float), np.ones(k) / k, mode="valid") if len(train) >= k else np.array([])
    values = np.concatenate([smooth, np.asarray(val_loss, float)]) if len(smooth) + len(val_loss) else np.zeros(1)
    lo, hi = float(np.min(values)), float(np.max(values))
    hi = hi if hi > lo else lo + 1e-6

    def xy(step: float, value: float) -> tuple[int, int]:
        x = left + (right - left) * step / steps
        y = bottom - (bottom - top) * (value - lo) / (hi - lo)
        return round(float(np.clip(y, top, bottom))), round(x)

    for q in range(5):
        y = round(top + (bottom - top) * q / 4)
        x = round(left + (right - left) * q / 4)
        img[y, left : right + 1] = 220
        img[top : bottom + 1, x] = 220
    img[bottom, left : right + 1] = 0
    img[top : bottom + 1, left] = 0

    def polyline(points: list[tuple[int, int]], colour: tuple[int, int, int]) -> None:
        for (r0, c0), (r1, c1) in itertools.pairwise(points):
            rr, cc = line(r0, c0, r1, c1)
            img[rr, cc] = colour

    polyline([xy(i + k, v) for i, v in enumerate(smooth)], (31, 119, 180))
    val_points = [xy(s, v) for s, v in zip(val_steps, val_loss, strict=True)]
    polyline(val_points, (255, 127, 14))
    for r, c in val_points:
        rr, cc = disk((r, c), 3, shape=img.shape[:2])
        img[rr, cc] = (255, 127, 14)
    return write_png(path, img)


# ------------------------------------------------------------------------------------------------------ training


@dataclass
class TrainConfig:
    """Everything :func:`train_enhancer` needs (stored in the model card)."""

    out: str = "var/train"
    name: str | None = None  # default: enhancer-<conditioning>[-blind]-x<scale>
    datasets: tuple[str, ...] = ("pydicom", "mni152", "pyradiomics")
    modalities: tuple[str, ...] = ("CT", "MR")
    split_seed: int = 0
    scale: int = 2
    patch: int = 64  # HR side; LR is patch / scale
    batch_size: int = 16
    steps: int = 1000
    lr: float = 5e-4  # peak learning rate (after the warm-up)
    lr_schedule: str = "cosine"  # "cosine": linear warm-up, then cosine decay to lr·final_lr_fraction; "constant"
    warmup_steps: int = 200  # at most steps // 10
    final_lr_fraction: float = 0.02
    ema_decay: float = 0.999  # EMA of the weights (what is validated and saved); 0 = off
    seed: int = 0
    conditioning: str = "alpha"
    blind: bool = False  # zero the context (train and val): the "no vitals" baseline
    channels: int = 32
    n_blocks: int = 4
    upsampler: str = "pixelshuffle"  # or "transposed" (the paper's; lowres trunk only)
    trunk: str = "lowres"  # or "unshuffle": the same blocks at half the LR resolution (about 4.6x fewer FLOPs)
    gate_kernel: int = 3  # attention gate conv kernel (1: a per-pixel channel mix)
    tail: str = "conv"  # or "direct": the last upsampling stage outputs the image (no output-resolution conv)
    noise_input: str = "none"  # or "map": Immerkær noise-level channels from the input (gan.models.enhancer)
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    perceptual_weight: float = 0.0
    feature_network: str = "se-classifier"  # or the path of a user-supplied VGG-19 state dict
    adversarial_weight: float = 0.0
    adversarial_mode: str = "bce"
    d_lr: float = 1e-4
    noise_sigma: tuple[float, float] = (0.01, 0.03)
    missing_prob: float = 0.2
    textured_fraction: float = 0.5  # patches preferring texture; the rest uniform crops (see make_pairs)
    augment: bool = False  # training patches turned by a random flip/rotation (make_pairs dihedral); val never
    val_every: int = 250
    val_pairs: int = 256
    val_seed: int = 0  # val pairs depend on this only: every variant and training seed sees the same ones
    patience: int = 8  # validations without improvement of the SMOOTHED val loss before stopping
    val_smoothing: float = 0.6  # smoothed = s · smoothed + (1 − s) · val loss (early stopping only)
    log_every: int = 50
    train_pool: int = 0  # > 0: draw batches from this many pairs made once (else fresh pairs every step)
    threads: int | None = None  # torch intra-op threads for this run (restored afterwards)
    command: str | None = None

    @property
    def model_name(self) -> str:
        return self.name or f"enhancer-{self.conditioning}{'-blind' if self.blind else ''}-x{self.scale}"

    def model_config(self) -> dict[str, Any]:
        """Constructor kwargs of the ``enhancer`` architecture."""
        return {
            "in_channels": 1,
            "scale": self.scale,
            "channels": self.channels,
            "n_blocks": self.n_blocks,
            "conditioning": self.conditioning,
            "upsampler": self.upsampler,
            "trunk": self.trunk,
            "gate_kernel": self.gate_kernel,
            "tail": self.tail,
            "noise_input": self.noise_input,
        }

    def learning_rate(self, step: int) -> float:
        """Learning rate at ``step`` (1-based): linear warm-up, then cosine decay (or constant)."""
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule != "cosine":
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        warmup = min(self.warmup_steps, self.steps // 10)
        if step <= warmup:
            return self.lr * step / warmup
        progress = (step - warmup) / max(self.steps - warmup, 1)
        floor = self.lr * self.final_lr_fraction
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainResult:
    """What a training run produced; ``model`` holds the best (lowest val loss) weights, in eval mode."""

    model: nn.Module
    config: TrainConfig
    checkpoint: Path
    loss_curve: Path
    history_file: Path
    best_step: int
    steps_run: int
    stopped_early: bool
    train_loss: list[float]
    val_history: list[dict[str, float]]
    metrics: dict[str, float]
    train_subjects: list[str]
    val_subjects: list[str]
    seconds: float


def progress_bar(total: int):
    """tqdm when installed, else None (a plain stderr line is printed every ``log_every`` steps)."""
    if importlib.util.find_spec("tqdm") is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", file=sys.stderr)


def feature_network(spec: str) -> FeatureNetwork:
    """``se-classifier`` (random trunk), ``se-classifier:<name>`` (registry, default root),
    ``se-classifier:<root>/<name>`` (registry under ``root``), else a VGG-19 state-dict file."""
    if spec == "se-classifier":
        return FeatureNetwork.se_classifier()
    if spec.startswith("se-classifier:"):
        where = Path(spec.split(":", 1)[1])
        root = where.parent if len(where.parts) > 1 else None
        return FeatureNetwork.se_classifier(registry_root=root, name=where.name)
    return FeatureNetwork.vgg19(spec)


#: Val pairs grouped by the blur the degradation applied (motion + respiratory + cardiac kernel lengths, HR px):
#: "still" = none, "blurred" = at least 5 px — the gain on each says whether the model inverts blur or only noise.
BLUR_GROUPS: dict[str, tuple[int, int]] = {"still": (0, 0), "blurred": (5, 10**6)}


def blur_px(params: DegradationParams) -> int:
    """Total blur kernel length (motion + respiratory + cardiac, HR pixels) of one degradation."""
    return params.motion_blur_px + params.resp_blur_px + params.cardiac_blur_px


def _psnr_ssim(hr: np.ndarray, out: np.ndarray, params: Sequence[DegradationParams], prefix: str) -> dict[str, float]:
    """Mean PSNR / SSIM over N×1×H×W pairs (data range 1), plus mean PSNR per :data:`BLUR_GROUPS` group."""
    psnrs = np.array([metrics.psnr(hr[j, 0], out[j, 0], 1.0) for j in range(len(hr))])
    ssims = [metrics.ssim(hr[j, 0], out[j, 0], 1.0) for j in range(len(hr))]
    blur = np.array([blur_px(p) for p in params])
    scores = {f"{prefix}_psnr": float(psnrs.mean()), f"{prefix}_ssim": float(np.mean(ssims))}
    for group, (lo, hi) in BLUR_GROUPS.items():
        chosen = (blur >= lo) & (blur <= hi)
        if chosen.any():
            scores[f"{prefix}_psnr_{group}"] = float(psnrs[chosen].mean())
    return scores


def _evaluate(
    model: nn.Module, val: PairBatch, content: EnhancerLoss, blind: bool, batch: int = 32
) -> dict[str, float]:
    """Val content loss, PSNR and SSIM (output clamped to [0, 1], data range 1), mean over the val pairs."""
    was_training = model.training
    model.eval()
    losses, outs = [], []
    with torch.no_grad():
        for i in range(0, len(val), batch):
            lr, hr, ctx = val.lr[i : i + batch], val.hr[i : i + batch], val.context[i : i + batch]
            sr = model(lr, torch.zeros_like(ctx) if blind else ctx)
            total, _ = content(sr, hr)
            losses.append(float(total) * lr.shape[0])
            outs.append(sr.clamp(0.0, 1.0).numpy())
    model.train(was_training)
    return {"val_loss": sum(losses) / len(val)} | _psnr_ssim(val.hr.numpy(), np.concatenate(outs), val.params, "val")


def _bicubic(model: nn.Module, val: PairBatch) -> dict[str, float]:
    """PSNR/SSIM of the bicubic upsampling of the val LR patches (the enhancer's global-residual base)."""
    with torch.no_grad():
        up = model.base(val.lr).clamp(0.0, 1.0).numpy()
    return _psnr_ssim(val.hr.numpy(), up, val.params, "bicubic")


def _card(config: TrainConfig, train_subjects: list[str], val_subjects: list[str], scores: dict[str, float]):
    content = {**config.loss_weights, "perceptual": config.perceptual_weight, "adversarial": config.adversarial_weight}
    return {
        "version": "0.1.0",
        "training": {
            "data": {
                "datasets": list(config.datasets),
                "modalities": list(config.modalities),
                "split": f"gan.data.split by subject, seed {config.split_seed}; held-out test subjects excluded",
                "train_subjects": train_subjects,
                "val_subjects": val_subjects,
                "degradation": (
                    f"gan.degrade from sampled vitals (true levels), x{config.scale} block mean, "
                    f"noise sigma U{tuple(config.noise_sigma)}, channels missing p={config.missing_prob}; "
                    f"{config.patch}-px HR patches, {config.textured_fraction:g} of them texture-preferring"
                    + ("; random flips/rotations" if config.augment else "")
                ),
            },
            "command": config.command or f"gan.train.train_enhancer({config!r})",
            "seed": config.seed,
        },
        "metrics": scores,
        "input": {
            "channels": 1,
            "scale": config.scale,
            "context_size": CONTEXT_SIZE,
            "normalisation": "CT: window (center, width) to [0, 1]; MR: (x - min) / (p99.5 - min) per volume; "
            "clipped to [0, 1]",
            "context": "zeroed (blind variant)" if config.blind else "core.context vector",
        },
        "synthetic_output": True,
        "notes": (
            f"loss weights {content}; conditioning {config.conditioning}{' (blind)' if config.blind else ''}; "
            "metrics on the val split (patches of the val subjects, data range 1). Trained on simulated "
            "degradation: not validated on real low-quality acquisitions."
        ),
    }


def train_enhancer(config: TrainConfig, volumes: Sequence[gdata.Volume] | None = None) -> TrainResult:
    """Train the ``enhancer`` on ``volumes`` (default: ``config.datasets`` loaded) and save the best checkpoint.

    Training pairs are drawn fresh every step from the train split (or from a fixed pool of ``train_pool``
    pairs); validation uses ``config.val_pairs`` fixed pairs of the val split. Returns a :class:`TrainResult`;
    files go to ``<out>/<name>/`` (weights, card) and ``<out>/<name>.loss.png`` / ``<out>/<name>.history.json``.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, volumes)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, volumes: Sequence[gdata.Volume] | None) -> TrainResult:
    from gan.models import build
    from gan.registry import save_model

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if volumes is None:
        volumes = [v for name in config.datasets for v in gdata.load(name)]
    volumes = [v for v in volumes if v.modality in config.modalities and not v.is_rgb]
    parts = training_splits(volumes, seed=config.split_seed)
    train_slices = prepare_slices(parts["train"], config.modalities)
    val_slices = prepare_slices(parts["val"], config.modalities)
    if not train_slices or not val_slices:
        raise ValueError("the train and the val split both need at least one usable slice")
    train_subjects = sorted({s.subject for s in train_slices})
    val_subjects = sorted({s.subject for s in val_slices})
    pair_kw = {
        "patch": config.patch,
        "noise_sigma": tuple(config.noise_sigma),
        "missing_prob": config.missing_prob,
        "textured_fraction": config.textured_fraction,
    }
    val = make_pairs(val_slices, config.scale, np.random.default_rng(config.val_seed), config.val_pairs, **pair_kw)

    model = build("enhancer", **config.model_config())
    model.train()
    # The EMA copy is what is validated and saved (the raw model when ema_decay is 0).
    averaged = copy.deepcopy(model).eval() if config.ema_decay > 0 else model
    weights = dict(config.loss_weights)
    options: dict[str, dict[str, Any]] = {}
    if config.perceptual_weight > 0:
        weights["perceptual"] = config.perceptual_weight
        options["perceptual"] = {"network": feature_network(config.feature_network)}
    content = EnhancerLoss(weights, options)
    discriminator = None
    if config.adversarial_weight > 0:
        discriminator = build("enhancer-discriminator", in_channels=1, base_channels=32)
        d_optim = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=(0.5, 0.999))
        weights["adversarial"] = config.adversarial_weight
        options["adversarial"] = {"discriminator": discriminator, "mode": config.adversarial_mode}
    criterion = EnhancerLoss(weights, options)
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99))

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = config.model_name
    baseline = _bicubic(model, val)
    train_loss: list[float] = []
    val_history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, Tensor] | None = None
    best_step, bad, stopped_early = 0, 0, False
    smoothed_best, smoothed = math.inf, math.nan
    checkpoint = out / name
    bar = progress_bar(config.steps)
    tick = time.perf_counter()

    def validate(step: int) -> bool:
        """Evaluate the (averaged) model, checkpoint on a lower val loss; True when patience is exhausted.

        Patience counts validations without improvement of the SMOOTHED val loss, so one noisy validation
        neither stops the run nor resets the count.
        """
        nonlocal best, best_state, best_step, bad, smoothed, smoothed_best
        scores = {"step": float(step), "lr": config.learning_rate(step)}
        scores |= _evaluate(averaged, val, content, config.blind)
        s = config.val_smoothing
        smoothed = scores["val_loss"] if math.isnan(smoothed) else s * smoothed + (1.0 - s) * scores["val_loss"]
        scores["val_loss_smoothed"] = smoothed
        val_history.append(scores)
        if not best or scores["val_loss"] < best["val_loss"] - 1e-7:
            best, best_step = scores, step
            best_state = {k: v.detach().clone() for k, v in averaged.state_dict().items()}
            card_metrics = {k: v for k, v in scores.items() if k not in ("step", "lr")} | baseline
            save_model(
                averaged, out, name, "enhancer", config.model_config(),
                _card(config, train_subjects, val_subjects, card_metrics | {"best_step": float(step)}),
            )  # fmt: skip
        if smoothed < smoothed_best - 1e-7:
            smoothed_best, bad = smoothed, 0
        else:
            bad += 1
        return bad >= config.patience

    train_kw = pair_kw | {"dihedral": config.augment}
    pool = make_pairs(train_slices, config.scale, rng, config.train_pool, **train_kw) if config.train_pool else None
    step = 0
    for step in range(1, config.steps + 1):
        if pool is None:
            batch = make_pairs(train_slices, config.scale, rng, config.batch_size, **train_kw)
            lr, hr, ctx = batch.lr, batch.hr, batch.context
        else:
            idx = torch.from_numpy(rng.choice(len(pool), config.batch_size, replace=config.batch_size > len(pool)))
            lr, hr, ctx = pool.lr[idx], pool.hr[idx], pool.context[idx]
        if config.blind:
            ctx = torch.zeros_like(ctx)
        if discriminator is not None:
            discriminator.requires_grad_(False)
        for group in optim.param_groups:
            group["lr"] = config.learning_rate(step)
        sr = model(lr, ctx)
        loss, parts_now = criterion(sr, hr)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if averaged is not model:
            # Bias-corrected start: the decay grows to ema_decay, so early checkpoints are not the initial weights.
            decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                for avg, live in zip(averaged.parameters(), model.parameters(), strict=True):
                    avg.lerp_(live, 1.0 - decay)
        if discriminator is not None:
            discriminator.requires_grad_(True)
            d_loss = discriminator_loss(discriminator(hr), discriminator(sr.detach()), config.adversarial_mode)
            d_optim.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optim.step()
            parts_now["discriminator"] = float(d_loss.detach())
        train_loss.append(float(loss.detach()))
        if not math.isfinite(train_loss[-1]):
            raise FloatingPointError(f"training loss is {train_loss[-1]} at step {step}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss[-1]:.4f}")
        elif step % config.log_every == 0 or step == config.steps:
            rate = config.log_every / max(time.perf_counter() - tick, 1e-9)
            tick = time.perf_counter()
            detail = ", ".join(f"{k} {v:.4f}" for k, v in parts_now.items())
            recent = float(np.mean(train_loss[-config.log_every :]))
            print(f"step {step}/{config.steps} loss {recent:.4f} ({detail}) {rate:.1f} it/s", file=sys.stderr)
        if step % config.val_every == 0 or step == config.steps:
            stop = validate(step)
            last = val_history[-1]
            print(
                f"val @ {step}: loss {last['val_loss']:.4f} PSNR {last['val_psnr']:.2f} dB SSIM {last['val_ssim']:.4f}"
                f" (bicubic {baseline['bicubic_psnr']:.2f} dB / {baseline['bicubic_ssim']:.4f})",
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
    model.eval()
    if discriminator is not None:
        save_model(
            discriminator, out, f"{name}-discriminator", "enhancer-discriminator",
            {"in_channels": 1, "base_channels": 32},
            _card(config, train_subjects, val_subjects, {}) | {"synthetic_output": False},
        )  # fmt: skip

    result_metrics = {k: v for k, v in best.items() if k not in ("step", "lr")} | baseline
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
                "metrics": result_metrics,
            },
            indent=1,
        )
    )
    return TrainResult(
        model=model,
        config=config,
        checkpoint=checkpoint,
        loss_curve=curve,
        history_file=history_file,
        best_step=best_step,
        steps_run=step,
        stopped_early=stopped_early,
        train_loss=train_loss,
        val_history=val_history,
        metrics=result_metrics,
        train_subjects=train_subjects,
        val_subjects=val_subjects,
        seconds=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gan.train", description="Train Aegle models on real images.")
    sub = parser.add_subparsers(dest="model", required=True)
    p = sub.add_parser("enhancer", help="the context-conditioned enhancer (simulated vitals-driven degradation)")
    d = TrainConfig()
    p.add_argument("--out", default=d.out, help="output root (checkpoint directory, loss PNG, history)")
    p.add_argument("--name", default=None, help="model name (default enhancer-<conditioning>[-blind]-x<scale>)")
    p.add_argument("--data", default=",".join(d.datasets), help="comma-separated gan.data datasets")
    p.add_argument("--modalities", default=",".join(d.modalities))
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up (at most steps / 10)")
    p.add_argument("--final-lr-fraction", type=float, default=d.final_lr_fraction, help="cosine floor / peak")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of the weights; 0 = off")
    p.add_argument("--scale", type=int, choices=(2, 4), default=d.scale)
    p.add_argument("--patch", type=int, default=d.patch, help="HR patch side")
    p.add_argument(
        "--textured-fraction", type=float, default=d.textured_fraction,
        help="fraction of patches cropped where the image is textured (the rest: uniform random crops)",
    )  # fmt: skip
    p.add_argument(
        "--augment", action="store_true",
        help="turn each training patch by a random flip/rotation (one of 8) before degrading it; val pairs never",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--conditioning", choices=("alpha", "film", "none"), default=d.conditioning)
    p.add_argument("--blind", action="store_true", help="zero the context vector (the no-vitals baseline)")
    p.add_argument("--channels", type=int, default=d.channels)
    p.add_argument("--blocks", type=int, default=d.n_blocks)
    p.add_argument("--trunk", choices=("lowres", "unshuffle"), default=d.trunk)
    p.add_argument("--upsampler", choices=("pixelshuffle", "transposed"), default=d.upsampler)
    p.add_argument("--gate-kernel", type=int, choices=(1, 3), default=d.gate_kernel)
    p.add_argument("--tail", choices=("conv", "direct"), default=d.tail)
    p.add_argument(
        "--noise-input", choices=("none", "map"), default=d.noise_input,
        help="'map': local and global noise-level channels estimated from the input enter the head",
    )  # fmt: skip
    p.add_argument("--l1-weight", type=float, default=d.loss_weights["l1"])
    p.add_argument("--ssim-weight", type=float, default=d.loss_weights["ssim"])
    p.add_argument("--mse-weight", type=float, default=d.loss_weights["mse"])
    p.add_argument("--perceptual-weight", type=float, default=d.perceptual_weight)
    p.add_argument(
        "--feature-network", default=d.feature_network,
        help="se-classifier (random trunk), se-classifier:<registry name> (gan/weights), "
        "se-classifier:<root>/<name>, or a VGG-19 state-dict file",
    )  # fmt: skip
    p.add_argument("--adversarial-weight", type=float, default=d.adversarial_weight)
    p.add_argument("--adversarial-mode", choices=("bce", "hinge"), default=d.adversarial_mode)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--val-pairs", type=int, default=d.val_pairs)
    p.add_argument("--patience", type=int, default=d.patience, help="validations without smoothed improvement")
    p.add_argument("--val-smoothing", type=float, default=d.val_smoothing, help="EMA factor of the val loss")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--train-pool", type=int, default=d.train_pool, help="> 0: reuse this many pairs")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gan.train enhancer ...``: train, print the final metrics as JSON, return 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    config = TrainConfig(
        out=args.out,
        name=args.name,
        datasets=tuple(s for s in args.data.split(",") if s),
        modalities=tuple(s for s in args.modalities.split(",") if s),
        split_seed=args.split_seed,
        scale=args.scale,
        patch=args.patch,
        textured_fraction=args.textured_fraction,
        augment=args.augment,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps,
        final_lr_fraction=args.final_lr_fraction,
        ema_decay=args.ema_decay,
        seed=args.seed,
        conditioning=args.conditioning,
        blind=args.blind,
        channels=args.channels,
        n_blocks=args.blocks,
        trunk=args.trunk,
        upsampler=args.upsampler,
        gate_kernel=args.gate_kernel,
        tail=args.tail,
        noise_input=args.noise_input,
        loss_weights={"l1": args.l1_weight, "ssim": args.ssim_weight, "mse": args.mse_weight},
        perceptual_weight=args.perceptual_weight,
        feature_network=args.feature_network,
        adversarial_weight=args.adversarial_weight,
        adversarial_mode=args.adversarial_mode,
        val_every=args.val_every,
        val_pairs=args.val_pairs,
        patience=args.patience,
        val_smoothing=args.val_smoothing,
        log_every=args.log_every,
        train_pool=args.train_pool,
        threads=args.threads,
        command="python -m gan.train " + shlex.join(argv),
    )
    result = train_enhancer(config)
    summary = {
        "checkpoint": str(result.checkpoint),
        "loss_curve": str(result.loss_curve),
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "train_subjects": result.train_subjects,
        "val_subjects": result.val_subjects,
        "metrics": result.metrics,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
