"""Training data of the enhancer (and the slices the classifier and the benchmarks share): real images with
simulated, vitals-driven degradation.

Data (:func:`make_pairs`): 2-D slices of real CT and MR volumes (:mod:`gan.data`), split BY SUBJECT with
:func:`training_splits` (train / val only: the test split, which always holds the held-out subjects, is never
touched), normalised to [0, 1] by :func:`gan.intensity.normalise_volume` (CT window; other modalities
``(x − min) / (p99.5 − min)`` per instance). Each sample is a random HR patch, a plausible set of vitals (resting →
agitated, some channels missing at random), the context vector built by :func:`core.context.context_from_series`
from those vitals, and the LR patch made by :func:`gan.degrade.params_from_context` + :func:`gan.degrade.degrade`.

The degradation follows the patient's TRUE vitals; the model sees only the OBSERVED ones (a missing channel is
missing from the context, not from the patient). Blur is applied to a margin around the patch, then cropped,
so patch borders see real neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core import CHANNELS, SensorContext, context_from_series
from gan import data as gdata
from gan.degrade import DegradationParams, degrade, params_from_context
from gan.intensity import normalise_volume

__all__ = [
    "BLUR_GROUPS",
    "PATCH_MARGIN",
    "VITAL_RANGES",
    "PairBatch",
    "PreparedSlice",
    "blur_px",
    "body_region",
    "crop_patch",
    "make_pairs",
    "prepare_slices",
    "sample_context",
    "sample_vitals",
    "training_splits",
]

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
#: HR pixels of real neighbourhood kept around a patch while it is blurred, then cut (a multiple of every scale).
PATCH_MARGIN = 8
_REGIONS = {
    "lung": "CHEST",
    "brain": "HEAD",
    "breast": "BREAST",
    "mni152": "HEAD",
    "nibabel": "HEAD",
    "dipy": "HEAD",
    "pydeface": "HEAD",
}


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
        std = float(region[PATCH_MARGIN:-PATCH_MARGIN, PATCH_MARGIN:-PATCH_MARGIN].std())
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
    mismatch: float = 0.0,
) -> PairBatch:
    """``n`` (lr, hr, context) samples from real slices; subjects are drawn uniformly, then one of their slices.

    ``volumes`` are :class:`gan.data.Volume` s (prepared here) or already :func:`prepare_slices` d slices.
    ``patch`` is the HR side (a multiple of ``scale``); noise σ (fraction of the [0, 1] range) is uniform in
    ``noise_sigma``, its model the slice modality's (:data:`gan.degrade.MODALITY_NOISE`: Rician for MR, Gaussian
    or Poisson-like for CT, drawn per pair; ``params[i].noise_model`` says which). Blur follows the true vitals, so
    part of the pairs are sharp (about 60 % with the default vitals). Held-out test subjects are refused unless
    ``allow_held_out``. A fraction
    ``textured_fraction`` of the patches prefers textured regions (best of 8 random crops by std); the others are
    plain uniform random crops (flat regions and background too, where denoising matters most).
    ``dihedral`` turns each clean region by one of the 8 flips/rotations (uniform) before it is degraded, so
    blur directions stay those the vitals drew (training augmentation; one more draw per sample).
    ``mismatch``: the fraction of samples whose context shows vitals drawn independently of the ones that degraded
    the image (a sensor on the wrong bed, a loose sensor, a patient still during the scan but not around it):
    agitated contexts on sharp images, calm ones on blurred images, and everything between. A model trained with
    it must read the image as well as the context. ``observed`` holds what the context shows, ``true_levels``
    what degraded the image. At 0 (the default) no extra random draw is made.
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
    size = patch + 2 * PATCH_MARGIN
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
        if mismatch > 0 and rng.uniform() < mismatch:
            _, observed = sample_vitals(rng, missing_prob, none_prob)  # the context of another moment or patient
        ctx = sample_context(observed, rng)
        sigma = float(rng.uniform(*noise_sigma))
        params = params_from_context(true, f"{sl.modality}:{sl.region}", rng, scale=scale, noise_sigma=sigma)
        low = degrade(region, params, (0.0, 1.0), rng)
        m = PATCH_MARGIN // scale
        hrs.append(region[PATCH_MARGIN : PATCH_MARGIN + patch, PATCH_MARGIN : PATCH_MARGIN + patch])
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
    """:func:`gan.data.split` by subject, with every modality in ``val`` (``cover``: a CT and an MR subject
    whenever two of each are free); returns only ``train`` and ``val`` (the test split is never used here)."""
    parts = gdata.split(volumes, fractions, seed=seed, cover=lambda v: v.modality)
    for name in ("train", "val"):
        leaked = sorted({v.subject for v in gdata.held_out_test(parts[name])})
        if leaked:  # split() guarantees this; checked again because training on them would be silent
            raise AssertionError(f"held-out test subjects in {name}: {leaked}")
    return {"train": parts["train"], "val": parts["val"]}


#: Val pairs grouped by the blur the degradation applied (motion + respiratory + cardiac kernel lengths, HR px):
#: "still" = none, "blurred" = at least 5 px — the gain on each says whether the model inverts blur or only noise.
BLUR_GROUPS: dict[str, tuple[int, int]] = {"still": (0, 0), "blurred": (5, 10**6)}


def blur_px(params: DegradationParams) -> int:
    """Total blur kernel length (motion + respiratory + cardiac, HR pixels) of one degradation."""
    return params.motion_blur_px + params.resp_blur_px + params.cardiac_blur_px
