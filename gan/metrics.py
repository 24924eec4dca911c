"""Image-quality metrics with explicit conventions (numpy/scipy only, no torch).

Conventions shared by every function here:

* Inputs are 2-D grayscale arrays (H×W) or channel-last colour/multichannel arrays (H×W×C).
  A 3-D array is always read as H×W×C; volumes must be passed slice by slice.
* Integer or floating inputs are accepted; everything is computed in float64 (so 12/16-bit and
  signed Hounsfield-unit data never overflow). Booleans, complex and non-numeric dtypes are rejected.
* ``data_range`` (max − min of the *possible* values, e.g. 4095 for 12-bit, 2000 for a −1000..1000 HU
  window) is always supplied by the caller; it is never guessed from the dtype.
* Invalid input raises :class:`ValueError` whose message names the problem
  (shape mismatch, empty array, NaN/inf, non-numeric dtype, data_range <= 0, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CHECKERBOARD_HALF_WIDTH",
    "CHECKERBOARD_HIGH_BAND",
    "METRICS",
    "TISSUE_CLOSING_RADIUS",
    "TISSUE_LEVEL",
    "TISSUE_MIN_SIZE",
    "checkerboard_ratio",
    "compute",
    "mean_gradient",
    "mutual_information",
    "ncc",
    "noise_sigma",
    "normalized_mutual_information",
    "psnr",
    "spatial_frequency",
    "ssim",
    "tissue_mask",
]

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- validation


def _as_image(x: ArrayLike, name: str) -> FloatArray:
    """Validate one image and return it as a float64 array."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: non-numeric dtype {arr.dtype}; expected an integer or floating-point image")
    if arr.size == 0:
        raise ValueError(f"{name}: empty array (shape {arr.shape})")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D (H×W) or 3-D channel-last (H×W×C) image, got ndim={arr.ndim}")
    out = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: contains NaN or inf values")
    return out


def _pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str] = ("reference", "test")) -> tuple[FloatArray, FloatArray]:
    x = _as_image(a, names[0])
    y = _as_image(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {names[0]} has shape {x.shape}, {names[1]} has shape {y.shape}")
    return x, y


def _check_range(data_range: float) -> float:
    try:
        r = float(data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}") from None
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"data_range must be a positive finite number (data_range <= 0 or non-finite), got {r}")
    return r


def _channels(img: FloatArray) -> list[FloatArray]:
    return [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[-1])]


def _check_mask(mask: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """A boolean H×W mask for images of ``shape`` (H×W or H×W×C), with at least one True pixel."""
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
    if m.shape != shape[:2]:
        raise ValueError(f"mask has shape {m.shape}, the images' spatial shape is {shape[:2]}")
    if not m.any():
        raise ValueError("mask selects no pixel")
    return m


# --------------------------------------------------------------------------- full-reference metrics


def psnr(reference: ArrayLike, test: ArrayLike, data_range: float, *, mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10·log10(data_range² / MSE)``.

    MSE is the mean over all pixels (and channels), or over the pixels where the H×W boolean ``mask`` is True
    (e.g. :func:`tissue_mask` of the reference). ``data_range`` is required. Identical images return ``+inf``.
    Same convention as ``skimage.metrics.peak_signal_noise_ratio``.
    """
    x, y = _pair(reference, test)
    r = _check_range(data_range)
    squared = (x - y) ** 2
    mse = float(np.mean(squared if mask is None else squared[_check_mask(mask, x.shape)]))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(r * r / mse))


def ssim(
    reference: ArrayLike,
    test: ArrayLike,
    data_range: float,
    *,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    mask: ArrayLike | None = None,
) -> float:
    """Mean structural similarity (Wang et al. 2004), Gaussian-weighted.

    Convention (identical to ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range)``):

    * local statistics from a Gaussian window, σ=1.5 truncated at 3.5σ → 11×11 taps;
    * population (biased) local variances/covariance;
    * ``C1=(K1·L)²``, ``C2=(K2·L)²`` with K1=0.01, K2=0.03, L=data_range;
    * filtering uses ``mode='reflect'`` borders, then the SSIM map is cropped by the window radius
      (5 px for σ=1.5) on every side, so the mean is over the valid region only;
    * H×W×C input: SSIM per channel, then the mean over channels;
    * ``mask`` (H×W boolean, e.g. :func:`tissue_mask` of the reference): the mean is over the masked pixels of
      the valid region only (the local statistics still see every pixel).

    Both spatial sides must be at least the window size (11 for σ=1.5).
    """
    x, y = _pair(reference, test)
    r = _check_range(data_range)
    chosen = None if mask is None else _check_mask(mask, x.shape)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    win = 2 * radius + 1
    if min(x.shape[0], x.shape[1]) < win:
        raise ValueError(f"image too small for SSIM: spatial shape {x.shape[:2]}, window is {win}×{win}")
    c1 = (k1 * r) ** 2
    c2 = (k2 * r) ** 2

    from scipy import ndimage  # here, not at module level: gan.models.enhancer imports this module

    def filt(z: FloatArray) -> FloatArray:
        return ndimage.gaussian_filter(z, sigma=sigma, truncate=truncate, mode="reflect")

    inner = (slice(radius, -radius), slice(radius, -radius))
    if chosen is not None and not chosen[inner].any():
        raise ValueError(f"mask has no pixel in the SSIM valid region (the image minus a {radius}-px border)")
    values = []
    for xc, yc in zip(_channels(x), _channels(y), strict=True):
        ux, uy = filt(xc), filt(yc)
        vx = filt(xc * xc) - ux * ux
        vy = filt(yc * yc) - uy * uy
        vxy = filt(xc * yc) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        valid = s[inner]
        values.append(float(valid.mean() if chosen is None else valid[chosen[inner]].mean()))
    return float(np.mean(values))


def ncc(a: ArrayLike, b: ArrayLike) -> float:
    """Normalised cross-correlation = Pearson correlation of all pixel values, in [-1, 1].

    Global (not windowed), zero-mean and unit-variance normalised; equals ``np.corrcoef(a.ravel(), b.ravel())[0, 1]``.
    Invariant to positive affine intensity changes (``ncc(a, 2a+3) == 1``).
    A constant image has zero variance, so NCC is undefined: this raises ``ValueError``.
    """
    x, y = _pair(a, b, ("a", "b"))
    xd = x.ravel() - x.mean()
    yd = y.ravel() - y.mean()
    nx = float(np.sqrt(np.dot(xd, xd)))
    ny = float(np.sqrt(np.dot(yd, yd)))
    for name, n in (("a", nx), ("b", ny)):
        if n == 0.0:
            raise ValueError(f"ncc undefined: {name} is a constant image (zero variance)")
    return float(np.clip(np.dot(xd, yd) / (nx * ny), -1.0, 1.0))


def _entropy(p: FloatArray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def _joint_hist(a: ArrayLike, b: ArrayLike, bins: int) -> FloatArray:
    x, y = _pair(a, b, ("a", "b"))
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    # Each axis spans its own image's [min, max] with `bins` equal-width bins (np.histogram2d default).
    hist, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=int(bins))
    return hist / hist.sum()


def mutual_information(a: ArrayLike, b: ArrayLike, bins: int = 256) -> float:
    """Mutual information in **nats** (natural log) from a joint histogram.

    ``MI = H(A) + H(B) − H(A,B)`` with ``H(p) = −Σ p·ln p``, where p is the normalised ``bins×bins``
    joint histogram; each axis uses ``bins`` equal-width bins over that image's own [min, max].
    ``MI(a, a)`` equals the entropy of a's ``bins``-bin histogram; independent images give ≈ 0
    (plus a small positive finite-sample bias). Divide by ``ln 2`` for bits.
    """
    p = _joint_hist(a, b, bins)
    return _entropy(p.sum(axis=1)) + _entropy(p.sum(axis=0)) - _entropy(p.ravel())


def normalized_mutual_information(a: ArrayLike, b: ArrayLike, bins: int = 100) -> float:
    """Studholme normalised MI: ``(H(A) + H(B)) / H(A,B)``, in [1, 2] (unitless).

    Same definition and binning as ``skimage.metrics.normalized_mutual_information(a, b, bins=bins)``
    (which also defaults to 100 bins). Returns 1.0 for the degenerate case where both images
    are constant (H(A,B) = 0).
    """
    p = _joint_hist(a, b, bins)
    h_joint = _entropy(p.ravel())
    if h_joint == 0.0:
        return 1.0
    return (_entropy(p.sum(axis=1)) + _entropy(p.sum(axis=0))) / h_joint


# --------------------------------------------------------------------------- no-reference metrics


def spatial_frequency(img: ArrayLike) -> float:
    """Spatial frequency ``SF = sqrt(RF² + CF²)`` (Eskicioglu & Fisher 1995).

    ``RF² = mean((I[i, j] − I[i, j−1])²)`` over the M·(N−1) horizontal first differences,
    ``CF² = mean((I[i, j] − I[i−1, j])²)`` over the (M−1)·N vertical first differences, i.e. each sum
    is divided by its own number of differences (not by M·N). H×W×C: mean of per-channel SF.
    Requires at least 2 rows and 2 columns. In the image's intensity units.
    """
    x = _as_image(img, "img")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"spatial_frequency needs at least 2×2 pixels, got spatial shape {x.shape[:2]}")
    vals = []
    for c in _channels(x):
        rf2 = float(np.mean(np.diff(c, axis=1) ** 2))
        cf2 = float(np.mean(np.diff(c, axis=0) ** 2))
        vals.append(math.sqrt(rf2 + cf2))
    return float(np.mean(vals))


def mean_gradient(img: ArrayLike) -> float:
    """Average gradient ``AG = mean(sqrt((dx² + dy²) / 2))``.

    Forward differences ``dx = I[i, j+1] − I[i, j]``, ``dy = I[i+1, j] − I[i, j]`` evaluated on the
    (M−1)×(N−1) grid where both exist (last row/column dropped), averaged over those positions.
    H×W×C: mean of per-channel AG. Requires at least 2 rows and 2 columns. In the image's intensity units.
    """
    x = _as_image(img, "img")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"mean_gradient needs at least 2×2 pixels, got spatial shape {x.shape[:2]}")
    vals = []
    for c in _channels(x):
        dx = c[:-1, 1:] - c[:-1, :-1]
        dy = c[1:, :-1] - c[:-1, :-1]
        vals.append(float(np.mean(np.sqrt((dx * dx + dy * dy) / 2.0))))
    return float(np.mean(vals))


#: Immerkær's (1996) 3×3 mask, the difference of two Laplacians: zero response to constant and linear intensity.
IMMERKAER_MASK: tuple[tuple[float, ...], ...] = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
#: For white Gaussian noise of σ, ``mean|I ∗ IMMERKAER_MASK| · IMMERKAER_SCALE = σ``.
IMMERKAER_SCALE = math.sqrt(math.pi / 2.0) / 6.0


def noise_sigma(img: ArrayLike) -> float:
    """Gaussian noise σ by Immerkær's method: ``IMMERKAER_SCALE · mean|I ∗ M|`` over the (H−2)×(W−2) positions
    where the 3×3 mask fits (no padding). Texture and edges raise it. H×W×C: mean of per-channel σ. Requires at
    least 3×3 pixels. In the image's intensity units.
    """
    x = _as_image(img, "img")
    if x.shape[0] < 3 or x.shape[1] < 3:
        raise ValueError(f"noise_sigma needs at least 3×3 pixels, got spatial shape {x.shape[:2]}")
    from scipy import ndimage

    mask = np.array(IMMERKAER_MASK)
    responses = [np.abs(ndimage.correlate(c, mask))[1:-1, 1:-1].mean() for c in _channels(x)]
    return float(np.mean(responses)) * IMMERKAER_SCALE


# --------------------------------------------------------------------------- tissue and artefacts

#: :func:`tissue_mask` threshold: this fraction of the way from the image's 1st to its 99th percentile.
TISSUE_LEVEL = 0.1
#: :func:`tissue_mask` closing: a diamond (city-block ball) of this radius in pixels.
TISSUE_CLOSING_RADIUS = 2
#: :func:`tissue_mask` drops connected components smaller than this many pixels.
TISSUE_MIN_SIZE = 64


def tissue_mask(image: ArrayLike) -> NDArray[np.bool_]:
    """The body (tissue) pixels of one 2-D grayscale image, as a boolean H×W array.

    1. Threshold: pixels above ``p1 + TISSUE_LEVEL·(p99 − p1)`` of the image's own values (p1 ≈ the air or
       background level, p99 ≈ bright tissue), so the threshold follows the display mapping: air at 0 in a CT
       soft-tissue window and at 0.23 of the range in a lung window, MR background noise, all fall below it.
    2. Morphological closing with a diamond of radius :data:`TISSUE_CLOSING_RADIUS` (outside the image counts as
       background, so the border is not eroded): bridges one- and two-pixel gaps in the body outline.
    3. Hole filling: everything the body encloses counts as tissue (lungs, bowel gas, sinuses, CSF, fat).
    4. Connected components smaller than :data:`TISSUE_MIN_SIZE` pixels are dropped (specks in the air).

    Not eroded: pixels at the tissue/air edge are tissue. Anything outside the body as bright as tissue (a
    scanner table, a coil, text burnt into the image) counts as tissue too. An image without contrast
    (p99 = p1) has no tissue. Units do not matter (the threshold is relative).
    """
    x = _as_image(image, "image")
    if x.ndim != 2:
        raise ValueError(f"tissue_mask needs a 2-D (H×W) image, got shape {x.shape}")
    lo, hi = np.percentile(x, [1.0, 99.0])
    if hi <= lo:
        return np.zeros(x.shape, dtype=bool)
    above = x > lo + TISSUE_LEVEL * (hi - lo)
    from scipy import ndimage

    r = TISSUE_CLOSING_RADIUS
    ball = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), r)
    closed = ndimage.binary_closing(np.pad(above, r), structure=ball)[r:-r, r:-r]
    filled = ndimage.binary_fill_holes(closed)
    labels, n = ndimage.label(filled)
    if n == 0:
        return filled
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= TISSUE_MIN_SIZE
    keep[0] = False
    return keep[labels]


#: :func:`checkerboard_ratio`: half-width (cycles/pixel, Chebyshev) of the neighbourhood of each Nyquist point.
CHECKERBOARD_HALF_WIDTH = 1 / 32
#: :func:`checkerboard_ratio`: the high band it normalises by, ``max(|fx|, |fy|) >= CHECKERBOARD_HIGH_BAND``.
CHECKERBOARD_HIGH_BAND = 1 / 4


def checkerboard_ratio(output: ArrayLike, base: ArrayLike) -> float:
    """Share of the high-frequency energy of the residual ``output − base`` that sits at the Nyquist points.

    ``base`` is what the output refines (for a ×2 enhancer: the bicubic upsampling of its input). The residual,
    its mean removed, times a 2-D Hann window (no wrap-around edge), gives the power spectrum ``P(fy, fx)``
    (cycles/pixel, ±½ = Nyquist). The ratio is ``ΣP`` over the three neighbourhoods of half-width
    :data:`CHECKERBOARD_HALF_WIDTH` around (½, 0), (0, ½) and (½, ½) (with their mirror images) divided by ``ΣP``
    over the high band ``max(|fx|, |fy|) ≥`` :data:`CHECKERBOARD_HIGH_BAND`, which contains them. In [0, 1];
    a white-noise residual gives ≈ 0.016 (the neighbourhoods' share of the band's area), a smooth one ≈ 0, and a
    residual without energy in the band 0.

    Why it sees the transposed-convolution artefact: a stride-2 transposed conv computes each output pixel with
    one of four sub-pixel phase filters, and whatever differs between the phases is a period-2 pattern — the
    feature maps times (−1)^x, (−1)^y or (−1)^(x+y) — which moves the image-scale (low-frequency) content of the
    features to within its bandwidth of the three Nyquist points. Denoising and sharpening residuals spread over
    the whole band instead; normalising by the band, not by the residual's total energy, keeps large-scale
    corrections (contrast, deblurring) from diluting the figure. Both images 2-D, sides at least 32 pixels.
    """
    x, y = _pair(base, output, ("base", "output"))
    if x.ndim != 2:
        raise ValueError(f"checkerboard_ratio needs 2-D (H×W) images, got shape {x.shape}")
    if min(x.shape) < 32:
        raise ValueError(f"checkerboard_ratio needs sides of at least 32 pixels, got {x.shape}")
    residual = y - x
    residual = (residual - residual.mean()) * np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1]))
    power = np.abs(np.fft.fft2(residual)) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[1]))[None, :]
    w = CHECKERBOARD_HALF_WIDTH
    low_y, low_x, nyq_y, nyq_x = fy <= w, fx <= w, fy >= 0.5 - w, fx >= 0.5 - w
    peaks = (nyq_y & low_x) | (low_y & nyq_x) | (nyq_y & nyq_x)
    band = float(power[np.maximum(fy, fx) >= CHECKERBOARD_HIGH_BAND].sum())
    return 0.0 if band == 0.0 else float(power[peaks].sum() / band)


# --------------------------------------------------------------------------- registry

Metric = Callable[[ArrayLike, ArrayLike, float], float]


def _no_reference(fn: Callable[[ArrayLike], float]) -> Metric:
    def metric(reference: ArrayLike, test: ArrayLike, data_range: float) -> float:
        _pair(reference, test)
        return fn(test)

    metric.__doc__ = f"{fn.__name__} of the *test* image (no-reference metric)."
    return metric


METRICS: dict[str, Metric] = {
    "psnr": psnr,
    "ssim": ssim,
    "ncc": lambda r, t, _d: ncc(r, t),
    "mi": lambda r, t, _d: mutual_information(r, t),
    "nmi": lambda r, t, _d: normalized_mutual_information(r, t),
    "spatial_frequency": _no_reference(spatial_frequency),
    "mean_gradient": _no_reference(mean_gradient),
}
"""Uniform ``(reference, test, data_range) -> float`` callables by name. No-reference metrics
(``spatial_frequency``, ``mean_gradient``) are evaluated on ``test``; ``data_range`` is ignored by the
metrics that do not use it."""


def compute(names: Iterable[str], reference: ArrayLike, test: ArrayLike, data_range: float) -> dict[str, float]:
    """Evaluate the named metrics (keys of :data:`METRICS`) and return ``{name: value}`` in the given order.

    Unknown names raise ``ValueError`` before anything is computed; ``data_range`` is always validated.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; available: {sorted(METRICS)}")
    _check_range(data_range)
    return {n: float(METRICS[n](reference, test, data_range)) for n in names}
