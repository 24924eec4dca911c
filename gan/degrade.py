"""Context-driven degradation: a SIMULATION of what a restless or breathless patient does to an acquisition.

This is not a physical model of any scanner. It turns a clean image into a plausible low-quality one so that
the context-conditioned enhancer can be trained and evaluated on pairs whose degradation follows the vitals:

* motion (RMS dynamic acceleration, m/s²) → a straight motion-blur line at a random in-plane angle;
* respiratory rate → a blur line along the vertical (row, cranio-caudal / antero-posterior) axis, chest and
  abdomen only;
* heart rate → a small isotropic (disk) blur, chest only;
* SpO2, temperature and blood pressure → nothing (no physical path from them to the image);
* a missing channel → its reference level, i.e. no blur from that channel.

The mapping lives in one table, :data:`MAPPING` (rendered into ``docs/degradation.md`` by
:func:`mapping_markdown`). Resolution loss (block mean, ×2/×4) and noise are not driven by vitals: the caller
chooses the scale and the noise level; the noise model follows the modality (:data:`MODALITY_NOISE`: Rician for MR
magnitude images, Poisson-like signal-dependent noise for X-ray, Gaussian or Poisson-like for CT). See
``docs/degradation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy import ndimage

from core import SensorContext

SCALES: tuple[int, ...] = (1, 2, 4)
MODALITIES: frozenset[str] = frozenset({"CT", "MR", "CR", "DX"})
#: DICOM BodyPartExamined terms where breathing moves the anatomy in the image.
BREATHING_REGIONS: frozenset[str] = frozenset(
    {"CHEST", "ABDOMEN", "CHESTABDOMEN", "ABDOMENPELVIS", "CHESTABDPELVIS", "LUNG", "HEART", "LIVER"}
)
#: Regions where the beating heart is in the field of view.
CARDIAC_REGIONS: frozenset[str] = frozenset({"CHEST", "CHESTABDOMEN", "CHESTABDPELVIS", "LUNG", "HEART"})
#: Multiplicative jitter on every mapped blur length: uniform in [1 − J, 1 + J].
JITTER = 0.10

NoiseModel = Literal["gaussian", "rician", "poisson"]
#: The noise models of :func:`degrade` (docs/degradation.md states each and its source).
NOISE_MODELS: tuple[NoiseModel, ...] = get_args(NoiseModel)
#: The noise models of each modality; :func:`params_from_context` draws one uniformly where there are several.
#: MR: magnitude images (Rician). CR/DX: quantum noise of the detected X-rays (Poisson-like). CT: stationary
#: Gaussian, or the Poisson-like stand-in for the signal dependence of its photon noise.
MODALITY_NOISE: dict[str, tuple[NoiseModel, ...]] = {
    "MR": ("rician",),
    "CT": ("gaussian", "poisson"),
    "CR": ("poisson",),
    "DX": ("poisson",),
}
#: Poisson-like noise has the nominal σ at this fraction of the data range (its std is σ·√(t / 0.5) at t).
POISSON_REFERENCE = 0.5


@dataclass(frozen=True)
class MappingRow:
    """One row of the vitals → severity table.

    ``parameter`` is None for channels deliberately not mapped. Otherwise the blur length in pixels is
    ``max_px · clip((level − start) / (full − start), 0, 1)`` (monotonic, 0 up to ``start``, saturating at
    ``full``), times the jitter, then rounded to the nearest odd length (1 → no blur).
    """

    channel: str
    parameter: str | None
    regions: str
    start: float | None
    full: float | None
    max_px: float | None
    rationale: str

    def blur_px(self, level: float) -> float:
        """The un-jittered, un-rounded blur length for a raw level."""
        assert self.start is not None and self.full is not None and self.max_px is not None
        return self.max_px * float(np.clip((level - self.start) / (self.full - self.start), 0.0, 1.0))


MAPPING: tuple[MappingRow, ...] = (
    MappingRow(
        "motion", "motion_blur_px", "all", 0.2, 6.0, 9.0,
        "Patient movement during the exposure smears the object along the direction of travel; a still patient "
        "wearing the sensor reads ~0.2 m/s² (sensor noise, small postural sway), vigorous movement ≥ 6 m/s². "
        "Direction unknown from an RMS value: uniform random angle.",
    ),
    MappingRow(
        "respiratory_rate", "resp_blur_px", "CT/MR/CR/DX, chest or abdomen", 16.0, 40.0, 7.0,
        "Free breathing moves diaphragm, chest wall and upper abdomen mostly cranio-caudally and "
        "antero-posteriorly (both vertical in the displayed image); faster, shallower breathing above the adult "
        "reference of 16/min means more motion per exposure.",
    ),
    MappingRow(
        "heart_rate", "cardiac_blur_px", "chest only", 75.0, 150.0, 3.0,
        "Un-gated chest images blur the heart and adjacent lung; more so at higher rates (shorter diastole). "
        "Small, isotropic, applied to the whole image (not localised to the heart).",
    ),
    MappingRow("spo2", None, "—", None, None, None,
               "Not mapped: desaturation has no direct physical effect on the acquisition."),
    MappingRow("temperature", None, "—", None, None, None,
               "Not mapped: fever has no direct physical effect on the acquisition."),
    MappingRow("systolic_bp", None, "—", None, None, None,
               "Not mapped: no direct physical effect (pulsatility is covered by heart rate)."),
    MappingRow("diastolic_bp", None, "—", None, None, None,
               "Not mapped: no direct physical effect (pulsatility is covered by heart rate)."),
)  # fmt: skip


@dataclass(frozen=True)
class DegradationParams:
    """What :func:`degrade` applies. Blur lengths are odd pixel counts, 0 (or 1) meaning none."""

    scale: int = 1
    noise_sigma: float = 0.0
    noise_model: NoiseModel = "gaussian"
    motion_blur_px: int = 0
    motion_angle_deg: float = 0.0
    resp_blur_px: int = 0
    cardiac_blur_px: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise ValueError(f"noise_sigma must be a finite fraction of the data range >= 0, got {self.noise_sigma!r}")
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {self.noise_model!r}")
        if not math.isfinite(self.motion_angle_deg):
            raise ValueError(f"motion_angle_deg must be finite, got {self.motion_angle_deg!r}")
        for name in ("motion_blur_px", "resp_blur_px", "cardiac_blur_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
            if value > 1 and value % 2 == 0:
                raise ValueError(f"{name} must be odd (a centred kernel), got {value}")


def _odd(px: float) -> int:
    """Nearest odd length; 1 (identity) is reported as 0."""
    n = 2 * math.floor(px / 2) + 1
    return 0 if n <= 1 else n


def _parse_modality(modality: str) -> tuple[str, str]:
    if not isinstance(modality, str) or not modality.strip():
        raise ValueError("modality must be a string like 'CT', 'CR:CHEST' or 'MR:ABDOMEN'")
    code, _, region = modality.strip().upper().partition(":")
    code, region = code.strip(), region.strip().replace(" ", "")
    if code not in MODALITIES:
        raise ValueError(f"unsupported modality {code!r}; expected one of {sorted(MODALITIES)}")
    return code, region


def _levels(ctx: SensorContext | Mapping[str, float | None] | None) -> dict[str, float | None]:
    if ctx is None:
        return {}
    raw = ctx.levels if isinstance(ctx, SensorContext) else ctx
    if not isinstance(raw, Mapping):
        raise ValueError("context must be a SensorContext, a mapping of channel levels, or None")
    levels: dict[str, float | None] = {}
    for channel, value in raw.items():
        if value is None:
            levels[channel] = None
            continue
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"context level {channel!r} is not finite ({value}); use None for a missing channel")
        levels[channel] = value
    return levels


def params_from_context(
    ctx: SensorContext | Mapping[str, float | None] | None,
    modality: str,
    rng: np.random.Generator,
    *,
    scale: int = 1,
    noise_sigma: float = 0.0,
    noise_model: NoiseModel | None = None,
) -> DegradationParams:
    """Severity from vitals via :data:`MAPPING`.

    ``modality`` is a DICOM modality code, optionally with the BodyPartExamined after a colon ("CT:CHEST").
    ``scale`` and ``noise_sigma`` are passed through (not vitals-driven). ``noise_model`` defaults to the
    modality's (:data:`MODALITY_NOISE`). ``rng`` draws the motion angle, one jitter factor per mapped row and then,
    for a modality with several noise models and no ``noise_model`` given, the model — always in the same order
    (reproducible per seed; for a fixed seed the result is monotonic in every level).
    """
    code, region = _parse_modality(modality)
    levels = _levels(ctx)
    angle = float(rng.uniform(0.0, 180.0))
    lengths: dict[str, int] = {}
    for row in MAPPING:
        if row.parameter is None:
            continue
        jitter = float(rng.uniform(1.0 - JITTER, 1.0 + JITTER))
        applies = (
            row.parameter == "motion_blur_px"
            or (row.parameter == "resp_blur_px" and region in BREATHING_REGIONS)
            or (row.parameter == "cardiac_blur_px" and region in CARDIAC_REGIONS)
        )
        level = levels.get(row.channel)
        px = 0.0 if level is None or not applies else min(row.blur_px(level) * jitter, float(row.max_px))
        lengths[row.parameter] = _odd(px)
    if noise_model is None:
        options = MODALITY_NOISE[code]
        noise_model = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
    return DegradationParams(
        scale=scale, noise_sigma=float(noise_sigma), noise_model=noise_model, motion_angle_deg=angle, **lengths
    )


def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Normalised ``length × length`` line kernel through the centre, angle counter-clockwise from +x.

    0° is horizontal (along a row), 90° vertical (along a column; rows point down in the image).
    """
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1 or length % 2 == 0:
        raise ValueError(f"kernel length must be a positive odd int, got {length!r}")
    kernel = np.zeros((length, length), dtype=np.float64)
    c = (length - 1) / 2
    theta = math.radians(angle_deg)
    n = 8 * length  # supersampled points at the centres of 8·length equal steps along the line
    t = (np.arange(n) + 0.5) * (length / n) - length / 2
    rows = np.clip(np.rint(c - t * math.sin(theta)), 0, length - 1).astype(int)
    cols = np.clip(np.rint(c + t * math.cos(theta)), 0, length - 1).astype(int)
    np.add.at(kernel, (rows, cols), 1.0)
    return kernel / kernel.sum()


def disk_kernel(diameter: int) -> np.ndarray:
    """Normalised disk of an odd diameter (the cardiac blur)."""
    if diameter < 1 or diameter % 2 == 0:
        raise ValueError(f"disk diameter must be a positive odd int, got {diameter!r}")
    r = (diameter - 1) / 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = (xx**2 + yy**2 <= r**2 + 0.5 * r).astype(np.float64)
    return kernel / kernel.sum()


def _check_range(data_range: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"data_range must be finite with hi > lo (a positive width), got ({lo}, {hi})")
    return lo, hi


def _check_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (H×W) or 3-D (H×W×C), got ndim={arr.ndim}")
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"image must be real-valued numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    return arr


def _degrade_plane(plane: np.ndarray, params: DegradationParams, lo: float, hi: float, rng: np.random.Generator):
    out = np.clip(plane, lo, hi)
    if params.motion_blur_px > 1:
        out = ndimage.convolve(out, line_kernel(params.motion_blur_px, params.motion_angle_deg), mode="reflect")
    if params.resp_blur_px > 1:
        out = ndimage.convolve(out, line_kernel(params.resp_blur_px, 90.0), mode="reflect")
    if params.cardiac_blur_px > 1:
        out = ndimage.convolve(out, disk_kernel(params.cardiac_blur_px), mode="reflect")
    s = params.scale
    if s > 1:
        h, w = out.shape
        out = out.reshape(h // s, s, w // s, s).mean(axis=(1, 3))
    if params.noise_sigma > 0:
        out = _noisy(out, params.noise_model, params.noise_sigma, lo, hi, rng)
    return np.clip(out, lo, hi)


def _noisy(
    plane: np.ndarray, model: NoiseModel, level: float, lo: float, hi: float, rng: np.random.Generator
) -> np.ndarray:
    """``plane`` (values in [lo, hi]) with noise of ``level`` (a fraction of hi − lo), not yet clipped.

    gaussian: + N(0, s²), s = level·(hi − lo). rician: |(x − lo) + n₁ + i·n₂| + lo with n₁, n₂ ~ N(0, s²).
    poisson: lo + (hi − lo)·Poisson(λ·t)/λ, t = (x − lo)/(hi − lo), λ = POISSON_REFERENCE / level², so the mean is
    kept and the std is level·(hi − lo)·√(t / POISSON_REFERENCE).
    """
    sigma = level * (hi - lo)
    if model == "gaussian":
        return plane + rng.normal(0.0, sigma, plane.shape)
    if model == "rician":
        return np.hypot(plane - lo + rng.normal(0.0, sigma, plane.shape), rng.normal(0.0, sigma, plane.shape)) + lo
    photons = POISSON_REFERENCE / level**2
    fraction = np.clip((plane - lo) / (hi - lo), 0.0, 1.0)
    return lo + (hi - lo) * rng.poisson(fraction * photons) / photons


def degrade(
    image: np.ndarray, params: DegradationParams, data_range: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Clip → blur (motion, respiratory, cardiac) → block-mean downsample → noise → clip; float32 out.

    ``image`` is H×W or H×W×C (channels processed independently, noise drawn per channel). H and W must be
    divisible by ``params.scale`` (else ValueError; :func:`paired` crops for you); the result is the SMALL
    image, ``(H/scale, W/scale[, C])``. ``rng`` is used for noise only.
    """
    if not isinstance(params, DegradationParams):
        raise ValueError("params must be a DegradationParams")
    arr = _check_image(image)
    lo, hi = _check_range(data_range)
    h, w = arr.shape[:2]
    if h % params.scale or w % params.scale:
        raise ValueError(f"image shape {h}×{w} is not divisible by scale {params.scale}; crop it first")
    if arr.ndim == 2:
        return _degrade_plane(arr, params, lo, hi, rng).astype(np.float32)
    planes = [_degrade_plane(arr[..., c], params, lo, hi, rng) for c in range(arr.shape[2])]
    return np.stack(planes, axis=-1).astype(np.float32)


def paired(
    image: np.ndarray,
    ctx: SensorContext | Mapping[str, float | None] | None,
    modality: str,
    data_range: tuple[float, float],
    rng: np.random.Generator,
    *,
    scale: int = 1,
    noise_sigma: float = 0.0,
    noise_model: NoiseModel | None = None,
) -> tuple[np.ndarray, np.ndarray, DegradationParams]:
    """A training pair ``(low_quality, high_quality_target, params)``.

    The target is the clean image cropped (top-left anchored) to a multiple of ``scale`` and clipped to
    ``data_range``, as float32; the low-quality image is ``degrade`` of that target (``noise_model`` as for
    :func:`params_from_context`).
    """
    arr = _check_image(image)
    lo, hi = _check_range(data_range)
    params = params_from_context(ctx, modality, rng, scale=scale, noise_sigma=noise_sigma, noise_model=noise_model)
    h, w = arr.shape[:2]
    h, w = h - h % scale, w - w % scale
    if h == 0 or w == 0:
        raise ValueError(f"image {arr.shape[0]}×{arr.shape[1]} is smaller than scale {scale}")
    target = np.clip(arr[:h, :w], lo, hi).astype(np.float32)
    return degrade(target, params, (lo, hi), rng), target, params


def mapping_markdown() -> str:
    """:data:`MAPPING` as a Markdown table (the one in ``docs/degradation.md``)."""

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:g}"

    lines = [
        "| channel | parameter | applies to | 0 px at or below | saturates at | max px | rationale |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in MAPPING:
        lines.append(
            f"| {r.channel} | {r.parameter or 'not mapped'} | {r.regions} | {fmt(r.start)} | {fmt(r.full)} "
            f"| {fmt(r.max_px)} | {r.rationale} |"
        )
    return "\n".join(lines) + "\n"
