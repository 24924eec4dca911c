"""The one intensity normalisation into model space [0, 1], shared by training, benchmarks and serving (numpy only).

Grey-level modality values (stored values after RescaleSlope/Intercept; Hounsfield units for CT) map to model space
by one affine map per **instance**, ``model = clip(gain · value + offset, 0, 1)`` (:class:`IntensityMap`):

* CT: the window ``(center, width)`` in HU, ``model = (HU − (center − width/2)) / width``;
* other grey images: ``(x − min) / (p99.5 − min)`` of the display-oriented values over the instance; MONOCHROME1 is
  inverted first (high values dark), so the model always sees "bright = high signal".

**The unit is one DICOM instance**, because that is what the server can always apply: an instance may arrive alone.
A single-frame instance is one slice; a multi-frame instance is normalised over all its frames. Training volumes
from other formats (NIfTI, NRRD: ``mni152``, ``pyradiomics``), whose slices would each be a single-frame instance
when sent as DICOM, are normalised per axial slice (axis 0) — :func:`normalise_volume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gan.data import Volume

__all__ = [
    "NORMALISATION",
    "SOFT_TISSUE_WINDOW",
    "IntensityMap",
    "intensity_map",
    "normalise_volume",
]

#: Default CT window (center, width) in HU when the source gives none.
SOFT_TISSUE_WINDOW = (40.0, 400.0)
#: The normalisation as model cards state it (``input.normalisation``).
NORMALISATION = (
    "CT: window (center, width) to [0, 1]; other grey images: (x - min) / (p99.5 - min) per instance (a DICOM "
    "instance with all its frames; one axial slice of a NIfTI/NRRD volume), MONOCHROME1 inverted; clipped to [0, 1]"
)
_UPPER_PERCENTILE = 99.5
_MIN_SPAN = 1e-6


@dataclass(frozen=True)
class IntensityMap:
    """``model = clip(gain · value + offset, 0, 1)`` for the modality values of one instance (negative ``gain`` for
    MONOCHROME1); the server keeps ``gain`` and ``offset`` to map the model's output back."""

    gain: float
    offset: float

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Model-space float32 pixels of ``values`` (computed in float64, then clipped to [0, 1])."""
        return np.clip(np.asarray(values, dtype=np.float64) * self.gain + self.offset, 0.0, 1.0).astype(np.float32)


def intensity_map(
    values: np.ndarray, *, window: tuple[float, float] | None = None, photometric: str = "MONOCHROME2"
) -> IntensityMap:
    """The map of one instance's modality ``values``: the CT ``window`` (center, width) when given, else
    ``(x − min) / (p99.5 − min)`` of the display-oriented values (``photometric`` MONOCHROME1: inverted)."""
    if window is not None:
        center, width = window
        return IntensityMap(1.0 / width, -(center - width / 2) / width)
    lo, hi = float(np.min(values)), float(np.max(values))
    if photometric == "MONOCHROME1":  # display = lo + hi − x, so its p99.5 − min is hi − p0.5 of x
        span = max(hi - float(np.percentile(values, 100.0 - _UPPER_PERCENTILE)), _MIN_SPAN)
        return IntensityMap(-1.0 / span, hi / span)
    span = max(float(np.percentile(values, _UPPER_PERCENTILE)) - lo, _MIN_SPAN)
    return IntensityMap(1.0 / span, -lo / span)


def normalise_volume(volume: Volume) -> np.ndarray:
    """A grey-level :class:`gan.data.Volume` in model space (float32, same shape), per instance (module docstring).

    Modality values are ``volume.pixels`` with the rescale :mod:`gan.data` keeps in ``meta["rescale"]`` (MR) applied,
    as the server applies it. CT uses ``volume.window`` (soft tissue when None). A DICOM volume
    (``volume.single_instance``) or a 2-D image is one instance; another 3-D volume is normalised slice by slice.
    """
    if volume.is_rgb:
        raise ValueError(f"{volume.source}: RGB images are not supported by the grey-level normalisation")
    values = volume.pixels.astype(np.float64)
    if "rescale" in volume.meta:
        slope, intercept = volume.meta["rescale"]
        values = values * slope + intercept
    window = (volume.window or SOFT_TISSUE_WINDOW) if volume.modality == "CT" else None

    def normalised(unit: np.ndarray) -> np.ndarray:
        return intensity_map(unit, window=window, photometric=volume.photometric)(unit)

    if volume.single_instance or values.ndim == 2:
        return normalised(values)
    return np.stack([normalised(plane) for plane in values])
