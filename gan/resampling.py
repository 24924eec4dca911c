"""PyTorch's bicubic upsampling (``F.interpolate(mode="bicubic", align_corners=False)``) as per-phase 5-tap filters.

For an integer ``scale``, output ``o = scale·i + r`` samples input ``(o + 0.5)/scale − 0.5 = i + d`` with
``d = (r + 0.5)/scale − 0.5`` ∈ (−½, ½): its four cubic taps (Keys, ``a = −0.75``) sit at offsets ``⌊d⌋ − 1 …
⌊d⌋ + 2``, all within −2…+2. Borders replicate the edge sample, like PyTorch's clamped indices. numpy only: the
enhancer (:class:`gan.models.enhancer.BicubicUpsample`) and the DICOM map-back (:mod:`server.study.pixels`) share it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

CUBIC_A = -0.75  # torch / OpenCV bicubic convolution coefficient
#: Input offsets −PAD…+PAD that a phase filter spans.
PAD = 2


def _cubic(x: float, a: float = CUBIC_A) -> float:
    """Keys' cubic convolution kernel."""
    x = abs(x)
    if x <= 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


@lru_cache(maxsize=8)
def phase_taps(scale: int) -> np.ndarray:
    """``scale × 5`` float64 weights: row ``r`` weights input offsets −2…+2 for output phase ``r``; rows sum to 1."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    taps = np.zeros((scale, 2 * PAD + 1))
    for r in range(scale):
        d = (r + 0.5) / scale - 0.5
        f = math.floor(d)
        t = d - f
        for k, w in enumerate((_cubic(t + 1.0), _cubic(t), _cubic(1.0 - t), _cubic(2.0 - t))):
            taps[r, f - 1 + k + PAD] = w
    taps.setflags(write=False)
    return taps


def _upsample(x: np.ndarray, scale: int, axis: int) -> np.ndarray:
    """Bicubic ×``scale`` along ``axis`` (−1 or −2) of float64 ``x``: per phase, a weighted sum of shifted slices."""
    taps = phase_taps(scale)
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (PAD, PAD)
    padded = np.pad(x, pad, mode="edge")

    def shifted(k: int) -> np.ndarray:
        return padded[..., k : k + n] if axis == -1 else padded[..., k : k + n, :]

    phases = []
    for r in range(scale):
        used = np.flatnonzero(taps[r])
        acc = taps[r, used[0]] * shifted(used[0])
        for k in used[1:]:
            acc += taps[r, k] * shifted(k)
        phases.append(acc)
    shape = list(x.shape)
    shape[axis] = n * scale
    return np.stack(phases, axis=axis).reshape(shape)  # phase axis right after `axis`: interleaved


def bicubic(stack: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic ×``scale`` of the last two axes (float64), equal to torch's ``F.interpolate`` to float rounding.

    Elementwise numpy (no BLAS, no threads): O(taps) work per output sample.
    """
    x = np.asarray(stack, dtype=np.float64)
    if scale == 1:
        return x
    return _upsample(_upsample(x, scale, -2), scale, -1)
