"""DICOM for Aegle: reading received instances, pixel mapping to and from model space, derived series.

See docs/dicom.md for what is read, how pixels are mapped, and every attribute the derived series carries.
"""

from __future__ import annotations

from server.study.derived import (
    DicomEncodingError,
    acquisition_time,
    context_summary,
    derived_series,
    encode,
    is_aegle_output,
)
from server.study.pixels import ModelImage, PixelMapping, bicubic, from_model_space, to_model_space
from server.study.reading import DicomInputError, read_instance, supported_syntaxes

__all__ = [
    "DicomEncodingError",
    "DicomInputError",
    "ModelImage",
    "PixelMapping",
    "acquisition_time",
    "bicubic",
    "context_summary",
    "derived_series",
    "encode",
    "from_model_space",
    "is_aegle_output",
    "read_instance",
    "supported_syntaxes",
    "to_model_space",
]
