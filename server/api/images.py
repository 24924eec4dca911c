"""Plain images in and out of the API: PNG (8/16-bit grey or RGB) and NPY (float or integer), validated.

Model space is float32 in [0, 1]. The mapping back to the caller's format is exact where it can be:

* PNG 8-bit / 16-bit and unsigned-integer NPY: value / dtype max (and back, rounded and clipped);
* float NPY already in [0, 1]: as is;
* signed-integer NPY and float NPY outside [0, 1] (e.g. HU): min–max to [0, 1] and the same line back.

An RGB PNG is enhanced channel by channel (three grey images, one batch). Every problem raises
:class:`ImageInputError` with an HTTP status and a short reason code.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
MIN_SIDE = 16
ENCODE_ROWS = 256  # rows mapped back to stored values at a time


class ImageInputError(ValueError):
    """An uploaded image cannot be used; ``status`` (HTTP) and ``reason`` (short code) say why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PlainImage:
    """A decoded upload: model-space planes (N×H×W; N = 3 for RGB) and how to go back."""

    format: str  # "png" or "npy"
    planes: np.ndarray  # float32 in [0, 1]
    dtype: np.dtype
    rgb: bool
    offset: float  # stored = offset + pixels · span
    span: float


def sniff(data: bytes) -> str | None:
    """``"png"``, ``"npy"``, or None from the first bytes."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(NPY_MAGIC):
        return "npy"
    return None


def _check_dims(h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ImageInputError(413, "absurd-dimensions", f"image is {h}×{w} pixels; the limit is {max_pixels}")
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(400, "too-small", f"image is {h}×{w}; each side must be at least {MIN_SIDE}")


def _decode_png(data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_dims(im.height, im.width, max_pixels)  # from the header, before decompressing
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.int64).astype(np.uint16)
            elif im.mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif im.mode in ("LA", "RGBA", "P", "1"):
                arr = np.asarray(im.convert("RGB" if im.mode in ("RGBA", "P") else "L"))
            else:
                raise ImageInputError(415, "unsupported-image-mode", f"PNG mode {im.mode} is not supported")
    except Image.DecompressionBombError as exc:
        raise ImageInputError(413, "absurd-dimensions", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageInputError):
            raise
        raise ImageInputError(400, "corrupt-image", f"PNG cannot be decoded: {exc}") from None
    return arr


def _decode_npy(data: bytes, max_pixels: int) -> np.ndarray:
    """The array of an NPY file, its header checked first: dtype, rank, size and length before any allocation."""
    from numpy.lib import format as npy

    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, …
        raise ImageInputError(400, "corrupt-image", f"NPY header cannot be read: {type(exc).__name__}") from None
    if dtype.hasobject or dtype.kind not in "uif":
        raise ImageInputError(415, "unsupported-dtype", f"NPY dtype {dtype} is not an integer or float image")
    if len(shape) != 2:
        raise ImageInputError(400, "bad-shape", f"NPY must hold one H×W image, got shape {shape}")
    _check_dims(*shape, max_pixels)
    count = shape[0] * shape[1]
    available = len(data) - stream.tell()
    if available != count * dtype.itemsize:
        raise ImageInputError(
            400, "corrupt-image", f"NPY header declares {count * dtype.itemsize} data bytes, the file holds {available}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    arr = arr.reshape(shape, order="F" if fortran_order else "C")
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageInputError(400, "non-finite", "NPY image contains NaN or infinite values")
    return arr


def decode(data: bytes, max_pixels: int) -> PlainImage:
    """Decode a PNG or NPY upload into model space."""
    kind = sniff(data)
    if kind is None:
        raise ImageInputError(415, "unsupported-format", "not a PNG or NPY file (magic bytes do not match)")
    arr = _decode_png(data, max_pixels) if kind == "png" else _decode_npy(data, max_pixels)
    h, w = arr.shape[:2]
    _check_dims(h, w, max_pixels)
    rgb = arr.ndim == 3
    if arr.dtype.kind == "u":
        offset, span = 0.0, float(np.iinfo(arr.dtype).max)
    elif arr.dtype.kind == "f" and arr.min() >= 0 and arr.max() <= 1:
        offset, span = 0.0, 1.0
    else:
        offset = float(arr.min())
        span = float(arr.max()) - offset or 1.0
    planes = arr.astype(np.float32)  # model space is float32: no float64 copies of a 4096² upload
    planes -= offset
    planes /= span
    planes = np.moveaxis(planes, -1, 0) if rgb else planes[None]
    return PlainImage(kind, np.ascontiguousarray(planes), arr.dtype, rgb, offset, span)


def encode(image: PlainImage, planes: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """Enhanced planes (N×H×W, model space) back into the upload's format and dtype.

    ``text``: PNG tEXt chunks (what was applied; ``synthetic``); for NPY they travel in the response headers.
    """
    arr = _stored_values(image, planes)
    buffer = io.BytesIO()
    if image.format == "npy":
        np.save(buffer, arr, allow_pickle=False)
        return buffer.getvalue()
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info_chunks = PngInfo()
    for key, value in (text or {}).items():
        info_chunks.add_text(key, value)
    Image.fromarray(arr).save(buffer, format="PNG", pnginfo=info_chunks)
    return buffer.getvalue()


def _stored_values(image: PlainImage, planes: np.ndarray) -> np.ndarray:
    """Model-space planes → values in the upload's dtype (H×W or H×W×3), a band of rows at a time: no float
    copy of the whole output (an 8192² output is 256 MB per float32 copy)."""
    n, height, width = planes.shape
    out = np.empty((n, height, width), image.dtype)
    work = np.float64 if image.dtype == np.float64 else np.float32
    for start in range(0, height, ENCODE_ROWS):
        band = np.clip(planes[:, start : start + ENCODE_ROWS], 0.0, 1.0, dtype=work)
        band *= image.span
        band += image.offset
        if image.dtype.kind in "ui":
            info = np.iinfo(image.dtype)
            np.clip(np.rint(band, out=band), info.min, info.max, out=band)
        out[:, start : start + ENCODE_ROWS] = band
    return np.moveaxis(out, 0, -1) if image.rgb else out[0]


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (how a client reads what was applied, or the synthetic mark)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return {k: v for k, v in im.text.items()}  # type: ignore[attr-defined]


def applied_header(applied: dict[str, object]) -> str:
    """Compact JSON for the ``X-Aegle-Applied`` header (ASCII only)."""
    return json.dumps(applied, separators=(",", ":"), ensure_ascii=True)
