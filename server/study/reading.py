"""Reading DICOM instances received from outside: parse, validate, and refuse bad input with a reason.

Every refusal is a :class:`DicomInputError` carrying an HTTP status (400 malformed, 413 too large, 415
unsupported), a short machine-readable ``reason`` and a human ``detail``. An accepted dataset is fully parsed
(every element converted, also inside sequences) and has decodable pixel data (``ds.pixel_array`` works and is
cached on the dataset), so code reading it later never meets a lazy-parse error.

:func:`read_instance` is the one place where an unexpected exception while reading becomes a refusal (400
``malformed``). Details never quote header values that failed a check (a corrupt file can put any bytes, patient
names included, into any element): they name the element and the kind of problem.
"""

from __future__ import annotations

import io
import re
from functools import cache

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from server.study.pixels import rescale

#: Transfer syntaxes decoded without any optional plugin.
NATIVE_SYNTAXES: tuple[uid.UID, ...] = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
)
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
# Defined terms a refusal may name (PS3.3 C.7.6.3.1.2, retired ones included); anything else is not quoted.
_KNOWN_PHOTOMETRICS = (*PHOTOMETRICS, "PALETTE COLOR", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK",
                       "XYB")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# UI values: digits and dots, at most 64 characters (components with leading zeros, seen in the wild, pass).
_UID_TEXT = re.compile(r"[0-9.]{1,64}")
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
        raise DicomInputError(400, "bad-attribute", "NumberOfFrames is not a number") from None


def _uid_text(value: object) -> str | None:
    """``value`` as text when it looks like a UID (digits and dots, ≤ 64 characters), else None."""
    text = str(value or "").strip()
    return text if _UID_TEXT.fullmatch(text) else None


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
        shown = photometric if photometric in _KNOWN_PHOTOMETRICS else "a value that is no defined term"
        raise DicomInputError(
            415, "unsupported-photometric", f"PhotometricInterpretation {shown}; supported: {', '.join(PHOTOMETRICS)}"
        )
    if samples != (1 if photometric.startswith("MONOCHROME") else 3):
        raise DicomInputError(400, "bad-attribute", f"SamplesPerPixel {samples} with {photometric}")
    if ds.get("PixelRepresentation") not in (0, 1):
        raise DicomInputError(400, "bad-attribute", "PixelRepresentation is neither 0 nor 1")


def _parse_all(ds: Dataset) -> None:
    """Convert every element now, recursing into sequence items: pydicom parses lazily, and an element that cannot
    be converted (an invalid VR, a bad length) must fail here, not in whoever reads it later."""
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            items = element.value if element.VR == "SQ" else ()
            for item in items:
                _parse_all(item)
        except Exception as exc:
            exc.add_note(f"element {tag}")  # innermost first: read_instance names the path
            raise


def read_instance(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> Dataset:
    """Parse one DICOM Part 10 file, convert every element and check that its pixel data decodes.

    ``max_pixels`` bounds rows × columns × frames (checked before decoding); ``max_bytes`` (optional) bounds the
    size of the file itself. Raises :class:`DicomInputError` for anything that cannot be accepted: this is the one
    place where unexpected exceptions from parsing and checking become a refusal (400 ``malformed``).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise DicomInputError(413, "too-large", f"{len(data)} bytes exceed the limit of {max_bytes}")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DicomInputError(
            400, "not-dicom", "no DICOM Part 10 header (128-byte preamble followed by 'DICM')"
        )
    ds: Dataset | None = None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if len(ds) == 0:
            raise DicomInputError(400, "truncated", "the file ends after its meta information")
        _check_complete(ds, len(data))  # on the raw elements, before they are converted
        _parse_all(ds.file_meta)
        _parse_all(ds)
        _validate(ds, max_pixels)
    except DicomInputError as exc:
        exc.sop_instance_uid = exc.sop_instance_uid or _sop_instance_uid(ds)
        raise
    except InvalidDicomError as exc:
        raise DicomInputError(400, "not-dicom", str(exc)) from exc
    except Exception as exc:  # pydicom raises many types on malformed input; none may escape as a server error
        path = " > ".join(reversed(getattr(exc, "__notes__", [])))  # sequence first, then the element in its item
        where = f" in {path}" if path else ""
        raise DicomInputError(400, "malformed", f"{type(exc).__name__} while reading the file{where}",
                              _sop_instance_uid(ds)) from exc  # fmt: skip
    return ds


def _sop_instance_uid(ds: Dataset | None) -> str | None:
    """The instance's SOP Instance UID for a refusal, when it can be read and looks like a UID."""
    try:
        return _uid_text(ds.get("SOPInstanceUID")) if ds is not None else None
    except Exception:  # the element itself is what is broken
        return None


def _check_mapping(ds: Dataset) -> None:
    """The attributes the pixel mapping reads (rescale slope/intercept, per frame) must be finite numbers."""
    if int(ds.SamplesPerPixel) != 1:
        return
    try:
        rescale(ds, _number_of_frames(ds))
    except (TypeError, ValueError, IndexError):
        raise DicomInputError(400, "bad-attribute", "RescaleSlope or RescaleIntercept is not a finite number") from None


def _validate(ds: Dataset, max_pixels: int) -> None:
    """Every check after parsing (see :func:`read_instance`); decodes the pixel data (cached on ``ds``)."""
    value = ds.file_meta.get("TransferSyntaxUID")
    if not value:
        raise DicomInputError(400, "malformed", "no TransferSyntaxUID in the file meta information")
    text = _uid_text(value)
    if text is None:
        raise DicomInputError(400, "malformed", "the TransferSyntaxUID in the file meta information is not a UID")
    syntax = uid.UID(text)
    for keyword in REQUIRED_UIDS:
        if not ds.get(keyword):
            raise DicomInputError(400, "missing-attribute", f"{keyword} is missing or empty")
        if _uid_text(ds.get(keyword)) is None:
            raise DicomInputError(400, "bad-attribute", f"{keyword} is not a UID (digits and dots, at most 64)")
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
    _check_mapping(ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise DicomInputError(400, "undecodable", f"{syntax.name}: {type(exc).__name__}: {exc}") from exc
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DicomInputError(415, "unsupported-pixel-data", f"decoded pixels have dtype {pixels.dtype}")
