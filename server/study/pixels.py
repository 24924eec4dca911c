"""Pixel mapping: stored values → modality values → model space [0, 1], and back without losing range.

Forward (:func:`to_model_space`):

* stored → modality values with RescaleSlope/Intercept (Hounsfield units for CT);
* grey-level → model space by one affine map ``model = gain · value + offset`` per instance, then clipped to
  [0, 1] for the model:

  - CT: the window ``(center, width)`` of the instance (WindowCenter/WindowWidth, first value), else
    :data:`gan.SOFT_TISSUE_WINDOW` (40, 400) HU: ``model = (HU − (center − width/2)) / width``;
  - others: ``(x − min) / (p99.5 − min)`` of the display-oriented values; MONOCHROME1 is inverted first (high
    values dark), so the model always sees "bright = high signal". Both are :func:`gan.intensity_map`, the one
    normalisation training and benchmarks use too (per instance);
  - RGB (and YBR, decoded to RGB): ``stored / (2^BitsStored − 1)`` per channel.

Backward (:func:`from_model_space`): the model's *correction* (its output minus the bicubic upsampling of its
clipped input, in model units) is divided by ``gain`` and added to the bicubic upsampling of the *unclipped*
modality values. Values outside the window therefore survive (bone and air in a soft-tissue window keep their HU).
Bicubic and the enhancer overshoot at edges, so the result is then clipped to what the modality can produce: not
below ``PixelMapping.floor`` (the physical floor, 0 for grey images not in HU and −1024 HU for CT, or the source's own
minimum when that is lower, e.g. CT padding or MR phase), and, back in stored values (source slope/intercept and
photometric interpretation), to what BitsStored/PixelRepresentation can represent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gan import SOFT_TISSUE_WINDOW, bicubic, intensity_map  # bicubic is re-exported by server.study

#: Lowest Hounsfield unit a CT can produce: air is −1000 HU (lower values in a source, e.g. −3024 padding outside
#: the reconstruction circle, lower the floor to the source's own minimum).
HU_FLOOR = -1024.0


@dataclass(frozen=True)
class PixelMapping:
    """How model-space values of one instance map back to its stored values."""

    photometric: str  # of the source; RGB for decoded YBR
    modality: str
    slope: np.ndarray  # per frame (frames,), float64
    intercept: np.ndarray  # per frame (frames,), float64
    gain: float  # model units per modality unit (negative for MONOCHROME1)
    offset: float
    window: tuple[float, float] | None  # CT window (center, width) in HU, when one was used
    bits_allocated: int
    bits_stored: int
    signed: bool
    multi_frame: bool
    floor: float  # lowest modality value the output may hold (see the module docstring)

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest value BitsStored/PixelRepresentation can hold."""
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the stored values (BitsAllocated 8 or 16, signed or not)."""
        return np.dtype(f"{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def is_rgb(self) -> bool:
        return self.photometric == "RGB"


@dataclass(frozen=True)
class ModelImage:
    """An instance in model space: ``pixels`` float32 in [0, 1], (frames, H, W) grey or (H, W, 3) /
    (frames, H, W, 3) RGB; ``values`` the unclipped modality values (frames first, float64); ``mapping`` the way
    back."""

    pixels: np.ndarray
    values: np.ndarray
    mapping: PixelMapping

    @property
    def frames(self) -> np.ndarray:
        """The model-space planes as (N, H, W): grey frames, or each RGB channel of each frame as one plane."""
        return planes(self.pixels, self.mapping)


def planes(array: np.ndarray, mapping: PixelMapping) -> np.ndarray:
    """(N, H, W) view of a grey (frames, H, W) or RGB (…, H, W, 3) array, RGB channels as separate planes."""
    if not mapping.is_rgb:
        return array
    framed = array if array.ndim == 4 else array[None]
    return np.moveaxis(framed, -1, 1).reshape(-1, *framed.shape[1:3])


def unplanes(stack: np.ndarray, mapping: PixelMapping) -> np.ndarray:
    """Inverse of :func:`planes` (shape of the model-space pixels, at any resolution)."""
    if not mapping.is_rgb:
        return stack
    framed = np.moveaxis(stack.reshape(-1, 3, *stack.shape[1:]), 1, -1)
    return framed if mapping.multi_frame else framed[0]


def _item_value(ds: Dataset, sequence: str, keyword: str, frame: int | None) -> object:
    """``keyword`` from the top level, the frame's per-frame group or the shared functional group."""
    if keyword in ds:
        return ds.get(keyword)
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    groups += list(ds.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        for item in group.get(sequence, []):
            if keyword in item:
                return item.get(keyword)
    return None


def _first_number(value: object) -> float | None:
    """The (first) value as a finite float; None when absent or empty; ValueError/TypeError when not a number."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    number = float(value)  # type: ignore[arg-type]
    if not np.isfinite(number):
        raise ValueError("not a finite number")
    return number


def rescale(ds: Dataset, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame RescaleSlope and RescaleIntercept (top level or functional groups; a missing or zero slope is 1).

    Raises ValueError or TypeError when a value is not a finite number.
    """
    slopes, intercepts = [], []
    for frame in range(frames):
        slope = _first_number(_item_value(ds, "PixelValueTransformationSequence", "RescaleSlope", frame))
        intercept = _first_number(_item_value(ds, "PixelValueTransformationSequence", "RescaleIntercept", frame))
        slopes.append(1.0 if slope is None or slope == 0 else slope)
        intercepts.append(0.0 if intercept is None else intercept)
    return np.asarray(slopes), np.asarray(intercepts)


def ct_window(ds: Dataset) -> tuple[float, float]:
    """The CT window (center, width) in HU: the instance's first WindowCenter/Width, else soft tissue (40, 400)
    (also when the values are not numbers: a window only says how to display)."""
    try:
        center = _first_number(_item_value(ds, "FrameVOILUTSequence", "WindowCenter", 0))
        width = _first_number(_item_value(ds, "FrameVOILUTSequence", "WindowWidth", 0))
    except (TypeError, ValueError):
        return SOFT_TISSUE_WINDOW
    if center is None or width is None or width <= 1:
        return SOFT_TISSUE_WINDOW
    return center, width


def is_hounsfield(ds: Dataset) -> bool:
    """True for CT whose modality values are Hounsfield units (RescaleType absent or HU)."""
    rescale_type = _item_value(ds, "PixelValueTransformationSequence", "RescaleType", 0)
    return ds.get("Modality") == "CT" and rescale_type in (None, "", "HU")


def to_model_space(ds: Dataset) -> ModelImage:
    """Map an instance read by :func:`server.study.read_instance` to model space (see the module docstring)."""
    stored = np.asarray(ds.pixel_array)
    rgb = int(ds.SamplesPerPixel) == 3
    multi_frame = stored.ndim == (4 if rgb else 3)
    frames = stored.shape[0] if multi_frame else 1
    photometric = str(ds.PhotometricInterpretation).strip()
    bits = (int(ds.BitsAllocated), int(ds.BitsStored))
    signed = int(ds.PixelRepresentation) == 1
    if rgb:
        full = float((1 << bits[1]) - 1)
        values = stored.astype(np.float64)
        mapping = PixelMapping("RGB", str(ds.get("Modality", "")), np.ones(frames), np.zeros(frames), 1.0 / full,
                               0.0, None, *bits, signed, multi_frame, floor=0.0)
        pixels = np.clip(values / full, 0.0, 1.0).astype(np.float32)
        return ModelImage(pixels, values, mapping)
    grey = stored.reshape(-1, *stored.shape[-2:]).astype(np.float64)
    slope, intercept = rescale(ds, grey.shape[0])
    values = grey * slope[:, None, None] + intercept[:, None, None]
    hounsfield = is_hounsfield(ds)
    floor = min(float(values.min()), HU_FLOOR if hounsfield else 0.0)
    window = ct_window(ds) if hounsfield else None
    model = intensity_map(values, window=window, photometric=photometric)
    mapping = PixelMapping(photometric, str(ds.get("Modality", "")), slope, intercept, model.gain, model.offset,
                           window, *bits, signed, multi_frame, floor)
    return ModelImage(model(values), values, mapping)


def from_model_space(pixels: np.ndarray, image: ModelImage, *, scale: int) -> np.ndarray:
    """Stored values (source dtype, shape ×``scale``) from the model's output for ``image``.

    ``pixels`` has the shape of ``image.pixels`` times ``scale`` in H and W (grey (frames, sH, sW); RGB
    (sH, sW, 3) or (frames, sH, sW, 3)). Only the model's correction is taken from it (see the module docstring);
    HU and out-of-window values are kept. The result is clipped to what the modality can produce: modality values
    not below ``mapping.floor``, stored values within the BitsStored/PixelRepresentation range.
    """
    mapping = image.mapping
    source = image.frames
    output = planes(np.asarray(pixels, dtype=np.float64), mapping)
    expected = (source.shape[0], source.shape[1] * scale, source.shape[2] * scale)
    if output.shape != expected:
        raise ValueError(f"model output has shape {output.shape}, expected {expected} for ×{scale}")
    correction = output - bicubic(source, scale)
    values = np.maximum(bicubic(planes(image.values, mapping), scale) + correction / mapping.gain, mapping.floor)
    stored = values if mapping.is_rgb else (values - mapping.intercept[:, None, None]) / mapping.slope[:, None, None]
    lo, hi = mapping.stored_range
    stored = np.clip(np.rint(stored), lo, hi)
    result = unplanes(stored.astype(mapping.dtype), mapping)
    if not mapping.is_rgb and not mapping.multi_frame:
        result = result[0]
    return result
