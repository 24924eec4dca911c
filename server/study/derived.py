"""Step 7, the derived series: the enhanced DICOM series Aegle writes, following the rules of docs/dicom.md §3.

Codes used (DICOM PS3.16, also in ``pydicom.sr.codedict``):

* Derivation Code Sequence, CID 7203 "Image Derivation": (113085, DCM, "Spatial resampling") when the matrix
  grows (×2/×4 super-resolution), (113087, DCM, "Smoothing") for ×1 (denoising only);
* Source Image Sequence purpose, CID 7202: (121322, DCM, "Source image for image processing operation");
* Contributing Equipment purpose, CID 7005: (109102, DCM, "Processing Equipment").

The sensor context used is recorded twice, without patient identifiers: readable in DerivationDescription, and
as JSON in Aegle's private block (creator ``AEGLE 1``, group 0x0071: xx01 model name, xx02 model version,
xx03 context JSON).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from gan import lossy_syntaxes

if TYPE_CHECKING:
    from core import SensorContext

MANUFACTURER = "Aegle"
PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "AEGLE 1"
SERIES_NUMBER_OFFSET = 1000
NOT_FOR_DIAGNOSIS = "not for diagnostic use"
_CODE_RESAMPLING = ("113085", "DCM", "Spatial resampling")
_CODE_SMOOTHING = ("113087", "DCM", "Smoothing")
_CODE_SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")
_CODE_PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")
_SHORT = {"heart_rate": "HR", "spo2": "SpO2", "temperature": "T", "respiratory_rate": "RR",
          "systolic_bp": "SBP", "diastolic_bp": "DBP", "motion": "motion"}
# Attributes that describe the source's encoding or pixels and are wrong for the new matrix; signatures that sign
# the source's content.
_DROP = ("IconImageSequence", "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
         "LargestPixelValueInSeries", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "DataSetTrailingPadding",
         "DigitalSignaturesSequence", "MACParametersSequence")
# Attributes this builder writes itself: removed from the copy first, so each is written with its dictionary VR
# (a corrupt source may carry one with another VR, which the new value cannot be encoded in).
_REWRITTEN = ("SOPInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
              "InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ImageType",
              "DerivationDescription", "DerivationCodeSequence", "SourceImageSequence", "ReferencedSeriesSequence",
              "ContributingEquipmentSequence", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
              "PlanarConfiguration", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames")
# Retired pixel-geometry attributes outside groups 0020/0028 (whose retired attributes are all dropped): the
# ACR-NEMA image transformation and ultrasound pixel positions.
_RETIRED_GEOMETRY = ("ImageTransformationMatrix", "ImageTranslationVector", "DopplerSampleVolumeXPositionRetired",
                     "DopplerSampleVolumeYPositionRetired", "TMLinePositionX0Retired", "TMLinePositionY0Retired",
                     "TMLinePositionX1Retired", "TMLinePositionY1Retired")
_PIXEL_DATA = BaseTag(0x7FE00010)
_ELEMENT_IN_MESSAGE = re.compile(r"(\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\))")


class DicomEncodingError(ValueError):
    """A dataset pydicom cannot write as a DICOM Part 10 file."""


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (its file meta information is used as is); :class:`DicomEncodingError`
    when it cannot be written. The message names the element when pydicom does, never its value (it may be
    patient data, and the message goes into result events)."""
    buffer = BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except Exception as exc:  # pydicom raises many types for values it cannot encode
        found = _ELEMENT_IN_MESSAGE.search(str(exc))
        where = f" in element {found.group(1)}" if found else ""
        raise DicomEncodingError(f"cannot encode the instance as a DICOM file: {type(exc).__name__}{where}") from exc
    return buffer.getvalue()


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    """Set ``keyword`` with its dictionary VR (the copy of a corrupt source may hold it with another VR)."""
    if keyword in ds:
        del ds[keyword]
    setattr(ds, keyword, value)


def _not_in_a_data_set(tag: BaseTag) -> bool:
    """Command (0000), file meta (0002), directory (0004) and the other groups below 0008, item delimiters: never
    part of an image data set (trailing zero bytes after the pixel data read as (0000,0000), for one)."""
    return tag.group < 0x0008 or tag.group in (0xFFFE, 0xFFFF)


def _remove(ds: Dataset, unwanted: Callable[[BaseTag], bool]) -> None:
    """Delete the elements whose tag satisfies ``unwanted``, at every depth of ``ds``."""
    for element in list(ds):
        if unwanted(element.tag):
            del ds[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _remove(item, unwanted)


def _retired_geometry(tag: BaseTag) -> bool:
    """Retired attributes of the image plane and pixel groups (ImagePosition, ImageOrientation, Location,
    ImageDimensions, …) and the other retired pixel-geometry ones: they describe the source matrix."""
    entry = DicomDictionary.get(tag)
    if entry is None or not entry[3]:  # (VR, VM, name, retired, keyword)
        return False
    return tag.group in (0x0020, 0x0028) or entry[4] in _RETIRED_GEOMETRY


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _context_text(record: Mapping[str, Any] | None) -> str:
    """DerivationDescription's readable form of a context record (``SensorContext.to_dict``)."""
    if record is None:
        return "no sensor context (enhanced without vitals)"
    levels = record["levels"]
    shown = ", ".join(f"{_SHORT.get(k, k)} {v:g}" for k, v in levels.items() if v is not None) or "no vitals"
    return f"sensor context at {record['at']}: completeness {record['completeness']:.2f}; {shown}"


def _now() -> tuple[str, str]:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _scaled_spacing(value: Any, scale: int) -> list[str] | None:
    """PixelSpacing-like pair divided by ``scale``; None when the source's spacing is missing or not positive."""
    try:
        spacing = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(spacing) != 2 or min(spacing) <= 0:
        return None
    return [f"{v / scale:.10g}" for v in spacing]


def _rescale_spacing(item: Dataset, scale: int) -> None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in item:
            spacing = _scaled_spacing(item.get(keyword), scale)
            if spacing is None:
                del item[keyword]  # zero/empty spacing means "unknown" (e.g. RG1); halving it would still lie
            else:
                _set(item, keyword, spacing)


def _shift_position(position: Any, orientation: Any, spacing: Any, scale: int) -> list[str] | None:
    """ImagePositionPatient of the first pixel of the ×``scale`` grid (same field of view, centres move)."""
    try:
        ipp = np.array([float(v) for v in position])
        iop = np.array([float(v) for v in orientation])
        row_spacing, col_spacing = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,):
        return None
    shift = 0.5 / scale - 0.5  # in source pixels, along both in-plane axes (align_corners=False)
    moved = ipp + shift * (iop[:3] * col_spacing + iop[3:] * row_spacing)
    return [f"{v:.6f}" for v in moved]


def _functional_items(ds: Dataset, sequence: str) -> list[Dataset]:
    items = []
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups, []):
            items += list(group.get(sequence, []))
    return items


def _update_geometry(ds: Dataset, scale: int) -> None:
    """Pixel spacing ÷ scale and first-pixel positions moved, at the top level and in functional groups."""
    source_spacing = ds.get("PixelSpacing")
    if source_spacing is not None and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        moved = _shift_position(ds.ImagePositionPatient, ds.ImageOrientationPatient, source_spacing, scale)
        if moved is not None:
            _set(ds, "ImagePositionPatient", moved)
    measures = _functional_items(ds, "PixelMeasuresSequence")
    orientation = next((i.ImageOrientationPatient for i in _functional_items(ds, "PlaneOrientationSequence")
                        if "ImageOrientationPatient" in i), None)
    spacing = next((i.PixelSpacing for i in measures if "PixelSpacing" in i), None)
    if orientation is not None and spacing is not None:
        for item in _functional_items(ds, "PlanePositionSequence"):
            moved = _shift_position(item.get("ImagePositionPatient"), orientation, spacing, scale)
            if moved is not None:
                _set(item, "ImagePositionPatient", moved)
    _rescale_spacing(ds, scale)
    for item in measures:
        _rescale_spacing(item, scale)
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        _rescale_region(region, scale)


def _rescale_region(region: Dataset, scale: int) -> None:
    """An ultrasound region on the ×``scale`` grid: source pixel x covers output pixels scale·x … scale·x + scale − 1,
    so the bounds scale with that, a pixel's physical size shrinks, and the reference pixel stays on the grid (its
    physical value moved by the half-pixel shift of ``align_corners=False``). Non-numeric values are left alone."""

    def change(keyword: str, factor: float, add: float = 0.0) -> None:
        value = region.get(keyword)
        if isinstance(value, (int, float)):
            region[keyword].value = type(value)(value * factor + add)

    for axis in ("X", "Y"):
        delta = region.get(f"PhysicalDelta{axis}")
        change(f"RegionLocationMin{axis}0", scale)
        change(f"RegionLocationMax{axis}1", scale, scale - 1)
        change(f"PhysicalDelta{axis}", 1 / scale)
        if isinstance(delta, float) and isinstance(region.get(f"ReferencePixel{axis}0"), int):
            change(f"ReferencePixel{axis}0", scale)
            change(f"ReferencePixelPhysicalValue{axis}", 1, -(scale - 1) / 2 * delta / scale)


def _derived_image_type(value: Any, enhanced: bool) -> list[str]:
    """DERIVED\\SECONDARY\\<source values 3…>; enhanced (functional-group) IODs keep value 2, which must be PRIMARY."""
    values = [str(v) for v in value] if value is not None and not isinstance(value, str) else (
        [value] if value else [])
    second = values[1] if enhanced and len(values) > 1 else "SECONDARY"
    return ["DERIVED", second, *values[2:]]


def _is_enhanced(ds: Dataset) -> bool:
    """True for multi-frame functional-group IODs (Enhanced CT/MR/…, Legacy Converted Enhanced)."""
    return "PerFrameFunctionalGroupsSequence" in ds or "Enhanced" in getattr(ds.SOPClassUID, "name", "")


def _mark_frame_types(ds: Dataset) -> None:
    """Enhanced images: FrameType value 1/2 must agree with ImageType."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups, []):
            for element in group:
                if element.VR == "SQ" and element.keyword.endswith("FrameTypeSequence"):
                    for item in element.value:
                        if "FrameType" in item:
                            item.FrameType = _derived_image_type(item.FrameType, enhanced=True)


def _reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _equipment(model_name: str, model_version: str, description: str, when: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code(_CODE_PROCESSING_EQUIPMENT)])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = model_name[:64]
    item.SoftwareVersions = model_version[:64]
    item.ContributionDateTime = when[0] + when[1]
    item.ContributionDescription = description[:64]
    return item


def _fix_laterality(ds: Dataset) -> None:
    """Series Laterality (Type 2C) of the new series: empty when the body part is unknown (it may be paired);
    an empty value is dropped when the body part is named (an unpaired part must not carry it). Left alone when
    the images say it themselves (ImageLaterality, or FrameLaterality in the Frame Anatomy functional group)."""
    frame_laterality = any("FrameLaterality" in item for item in _functional_items(ds, "FrameAnatomySequence"))
    if "ImageLaterality" in ds or frame_laterality or ds.get("Laterality") not in (None, ""):
        return
    if ds.get("BodyPartExamined"):
        if "Laterality" in ds:
            del ds.Laterality
    else:
        _set(ds, "Laterality", "")


def _series_number(source: Dataset) -> int:
    try:
        number = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return (number + SERIES_NUMBER_OFFSET) % (2**31 - 1)


def derived_series(
    sources: Sequence[Dataset],
    enhanced: Sequence[np.ndarray],
    *,
    scale: int,
    model_name: str,
    model_version: str,
    context: SensorContext | None,
    description: str,
    strength: float | None = None,
) -> list[Dataset]:
    """One derived instance per source (docs/dicom.md §3): new series, same study, references, equipment, geometry.

    ``enhanced[i]`` are the stored values for ``sources[i]`` (from :func:`server.study.from_model_space`),
    ``context`` the sensor context the enhancer was given (None: no vitals), recorded without the patient id;
    ``description`` what was done (goes into DerivationDescription and the Contributing Equipment item).
    """
    if len(sources) != len(enhanced):
        raise ValueError(f"{len(sources)} sources but {len(enhanced)} enhanced images")
    if not sources:
        return []
    if len({str(s.SeriesInstanceUID) for s in sources}) != 1:
        raise ValueError("sources of one derived series must come from one series")
    series_uid = uid.generate_uid()
    when = _now()
    code = _CODE_RESAMPLING if scale > 1 else _CODE_SMOOTHING
    strength_text = "" if strength is None else f", strength {strength:.3g}"
    record = None if context is None else context.to_dict(patient=False)
    derivation = (f"{description} Aegle {model_name} {model_version}, x{scale}{strength_text}; "
                  f"{_context_text(record)}. {NOT_FOR_DIAGNOSIS.capitalize()}.")[:1024]
    context_json = json.dumps(record, sort_keys=True, separators=(",", ":"))
    lossy = lossy_syntaxes()
    out = []
    for source, pixels in zip(sources, enhanced, strict=True):
        # A plain Dataset: nothing of the source file (its encoding, its pixel cache) carries over, nor its pixel
        # data (written anew below).
        ds = Dataset({e.tag: copy.deepcopy(e) for e in source if e.tag != _PIXEL_DATA})
        for keyword in (*_DROP, *_REWRITTEN):
            if keyword in ds:
                del ds[keyword]
        _remove(ds, lambda tag: _not_in_a_data_set(tag) or _retired_geometry(tag))
        for tag in [e.tag for e in ds if 0x6000 <= e.tag.group <= 0x60FF and e.tag.group % 2 == 0]:
            del ds[tag]  # overlays are drawn on the source matrix
        sop_uid = uid.generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = source.SOPClassUID
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "AEGLE_1"
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = _series_number(source)
        ds.SeriesDescription = f"Aegle enhanced x{scale} - {NOT_FOR_DIAGNOSIS}"
        ds.SeriesDate, ds.SeriesTime = when
        ds.InstanceCreationDate, ds.InstanceCreationTime = when
        ds.ContentDate, ds.ContentTime = when
        _fix_laterality(ds)
        if "PixelAspectRatio" in ds and not ds.PixelAspectRatio:
            del ds.PixelAspectRatio  # Type 1C: empty is invalid, absent means square pixels
        ds.ImageType = _derived_image_type(source.get("ImageType"), _is_enhanced(source))
        _mark_frame_types(ds)
        ds.DerivationDescription = derivation
        ds.DerivationCodeSequence = DicomSequence([_code(code)])
        reference = _reference(source)
        reference.PurposeOfReferenceCodeSequence = DicomSequence([_code(_CODE_SOURCE_IMAGE)])
        ds.SourceImageSequence = DicomSequence([reference])
        series_ref = Dataset()
        series_ref.SeriesInstanceUID = source.SeriesInstanceUID
        series_ref.ReferencedInstanceSequence = DicomSequence([_reference(source)])
        ds.ReferencedSeriesSequence = DicomSequence([series_ref])
        equipment = list(source.get("ContributingEquipmentSequence", []))
        ds.ContributingEquipmentSequence = DicomSequence(
            [*copy.deepcopy(equipment), _equipment(model_name, model_version, description, when)]
        )
        if source.file_meta.TransferSyntaxUID in lossy:
            _set(ds, "LossyImageCompression", "01")  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
        _update_geometry(ds, scale)
        photometric = "RGB" if int(source.SamplesPerPixel) == 3 else str(source.PhotometricInterpretation)
        ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, int(source.BitsStored),
                          generate_instance_uid=False)
        if "NumberOfFrames" in source and "NumberOfFrames" not in ds:
            ds.NumberOfFrames = 1
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", model_name[:64])
        block.add_new(0x02, "LO", model_version[:64])
        block.add_new(0x03, "UT", context_json)
        out.append(ds)
    return out


def is_aegle_output(ds: Dataset) -> bool:
    """True for objects Aegle derived (Contributing Equipment names Aegle, or Aegle's private block is present)."""
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("Manufacturer") == MANUFACTURER:
            return True
    try:
        ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return False
    return True

