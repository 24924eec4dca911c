"""Reading DICOM instances received from outside: parse, validate, and refuse bad input with a reason.

Every refusal is a :class:`DicomInputError` carrying an HTTP status (400 malformed, 413 too large, 415
unsupported), a short machine-readable ``reason`` and a human ``detail``. An accepted dataset has decodable pixel
data (``ds.pixel_array`` works and is cached on the dataset).
"""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

#: Transfer syntaxes decoded without any optional plugin.
NATIVE_SYNTAXES: tuple[uid.UID, ...] = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
)
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_UNDEFINED_LENGTH = 0xFFFFFFFF


class DicomInputError(ValueError):
    """A DICOM instance that cannot be accepted: ``status`` (HTTP), ``reason`` (short code) and ``detail``.

    ``sop_instance_uid`` is set when the header could be read far enough to name the instance.
    """

    def __init__(self, status: int, reason: str, detail: str, sop_instance_uid: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.sop_instance_uid = sop_instance_uid


@cache
def supported_syntaxes() -> tuple[uid.UID, ...]:
    """Transfer syntaxes whose pixel data can be decoded here (native ones plus compressed ones with a decoder)."""
    from pydicom.pixels import get_decoder

    compressed = []
    for name in sorted(dir(uid)):
        value = getattr(uid, name)
        if isinstance(value, uid.UID) and value.is_transfer_syntax and value.is_compressed:
            try:
                if get_decoder(value).is_available:
                    compressed.append(value)
            except NotImplementedError:
                continue
    return NATIVE_SYNTAXES + tuple(sorted(set(compressed)))


def _check_complete(ds: Dataset, size: int) -> None:
    """Refuse a file cut short: an element shorter than its declared length, or a partial element at the end."""
    last_end = None
    for tag in list(ds.keys()):  # raw elements, not converted ones
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if length is None or length == _UNDEFINED_LENGTH:
            last_end = None
            continue
        if isinstance(value, bytes) and len(value) < length:
            raise DicomInputError(
                400, "truncated", f"element {tag} declares {length} bytes but only {len(value)} are present"
            )
        last_end = raw.value_tell + length
    if last_end is not None and 0 < size - last_end < 8:
        raise DicomInputError(400, "truncated", f"{size - last_end} stray bytes after the last complete element")


def _number_of_frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise DicomInputError(
            400, "bad-attribute", f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not a number"
        ) from None


def _check_geometry(ds: Dataset, max_pixels: int) -> None:
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise DicomInputError(400, "missing-attribute", f"{keyword} is missing or empty")
    rows, cols, frames = int(ds.Rows), int(ds.Columns), _number_of_frames(ds)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise DicomInputError(400, "absurd-dimensions", f"{frames} frame(s) of {rows}×{cols} pixels")
    if rows * cols * frames > max_pixels:
        raise DicomInputError(
            413, "absurd-dimensions", f"{frames}×{rows}×{cols} pixels exceed the limit of {max_pixels}"
        )
    bits, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if bits not in (8, 16):
        raise DicomInputError(415, "unsupported-bits-allocated", f"BitsAllocated {bits}; supported: 8, 16")
    if not 1 <= stored <= bits:
        raise DicomInputError(400, "bad-attribute", f"BitsStored {stored} with BitsAllocated {bits}")
    photometric = str(ds.PhotometricInterpretation).strip()
    samples = int(ds.SamplesPerPixel)
    if photometric not in PHOTOMETRICS:
        raise DicomInputError(
            415, "unsupported-photometric", f"{photometric}; supported: {', '.join(PHOTOMETRICS)}"
        )
    if samples != (1 if photometric.startswith("MONOCHROME") else 3):
        raise DicomInputError(400, "bad-attribute", f"SamplesPerPixel {samples} with {photometric}")
    if ds.get("PixelRepresentation") not in (0, 1):
        raise DicomInputError(400, "bad-attribute", f"PixelRepresentation {ds.get('PixelRepresentation')!r}")


def read_instance(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> Dataset:
    """Parse one DICOM Part 10 file and check that its pixel data decodes; :class:`DicomInputError` otherwise.

    ``max_pixels`` bounds rows × columns × frames (checked before decoding); ``max_bytes`` (optional) bounds the
    size of the file itself.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise DicomInputError(413, "too-large", f"{len(data)} bytes exceed the limit of {max_bytes}")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DicomInputError(
            400, "not-dicom", "no DICOM Part 10 header (128-byte preamble followed by 'DICM')"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise DicomInputError(400, "not-dicom", str(exc)) from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DicomInputError(400, "malformed", f"{type(exc).__name__}: {exc}") from exc
    if len(ds) == 0:
        raise DicomInputError(400, "truncated", "the file ends after its meta information")
    try:
        _validate(ds, len(data), max_pixels)
    except DicomInputError as exc:
        exc.sop_instance_uid = str(ds.get("SOPInstanceUID") or "") or None
        raise
    return ds


def _validate(ds: Dataset, size: int, max_pixels: int) -> None:
    """Every check after parsing (see :func:`read_instance`); decodes the pixel data (cached on ``ds``)."""
    _check_complete(ds, size)
    syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if syntax is None:
        raise DicomInputError(400, "malformed", "no TransferSyntaxUID in the file meta information")
    for keyword in REQUIRED_UIDS:
        if not ds.get(keyword):
            raise DicomInputError(400, "missing-attribute", f"{keyword} is missing or empty")
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if other:
            raise DicomInputError(415, "unsupported-pixel-data", f"{other[0]} (float pixels) is not supported")
        raise DicomInputError(400, "no-pixel-data", "the instance has no PixelData element")
    if syntax not in supported_syntaxes():
        names = ", ".join(s.name for s in supported_syntaxes())
        raise DicomInputError(
            415, "unsupported-transfer-syntax", f"{syntax.name if syntax.is_transfer_syntax else syntax}; "
            f"supported here: {names}"
        )
    _check_geometry(ds, max_pixels)
    if not syntax.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * _number_of_frames(ds) * int(ds.SamplesPerPixel)
        expected *= int(ds.BitsAllocated) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise DicomInputError(400, "truncated", f"PixelData holds {actual} bytes, the header implies {expected}")
        if actual > expected + 1:
            raise DicomInputError(
                400, "inconsistent-pixel-data", f"PixelData holds {actual} bytes, the header implies {expected}"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pixels = ds.pixel_array
    except Exception as exc:
        raise DicomInputError(400, "undecodable", f"{syntax.name}: {type(exc).__name__}: {exc}") from exc
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DicomInputError(415, "unsupported-pixel-data", f"decoded pixels have dtype {pixels.dtype}")
