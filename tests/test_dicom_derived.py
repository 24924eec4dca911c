"""The derived series (the rules of docs/dicom.md §3) on real CT, multi-slice MR, MONOCHROME1 CR and RGB, checked
with dciodvfy."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from core.context import SensorContext, context_from_series
from core.vitals import to_ms
from server.study import (
    bicubic,
    derived_series,
    encode,
    from_model_space,
    is_aegle_output,
    read_instance,
    to_model_space,
)
from server.study.derived import PRIVATE_CREATOR, PRIVATE_GROUP
from server.study.pixels import unplanes
from tests.dicom_support import assert_dciodvfy_clean, dciodvfy, pydicom_data_file, pydicom_file, random_enhancer

MR700 = sorted((pydicom_file("dicomdirtests/98892003/MR700")).iterdir())  # one real 7-slice MR series
ACQUIRED_MS = to_ms(datetime(1997, 4, 30, 16, 29, 36, tzinfo=UTC))
CONTEXT = context_from_series("enc-derived", {"heart_rate": [(ACQUIRED_MS - 3000, 72.0)],
                                              "motion": [(ACQUIRED_MS - 3000, 0.4)]}, ACQUIRED_MS)


def read(path: Path) -> Dataset:
    return read_instance(path.read_bytes(), max_pixels=4096 * 4096)


def enhance_all(sources: list[Dataset], enhance=None) -> list[np.ndarray]:
    """Stored values of each source after ×2 (``enhance`` an EnhanceFn; None: identity model = bicubic)."""
    out = []
    for ds in sources:
        image = to_model_space(ds)
        frames = image.frames
        model_out = bicubic(frames, 2) if enhance is None else enhance(frames, None).images
        out.append(from_model_space(unplanes(model_out, image.mapping), image, scale=2))
    return out


def derive(sources: list[Dataset], enhance=None, context: SensorContext | None = None) -> list[Dataset]:
    return derived_series(sources, enhance_all(sources, enhance), scale=2, model_name="enhancer-x2-random-init",
                          model_version="0.0.0-test", context=context, description="Test enhancement.")


def fov_centre(ds: Dataset) -> np.ndarray:
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp + (ds.Columns - 1) / 2 * col_spacing * iop[:3] + (ds.Rows - 1) / 2 * row_spacing * iop[3:]


def test_ct_derived_series_follows_the_derived_series_rules(tmp_path: Path) -> None:
    source = read(pydicom_file("CT_small.dcm"))
    (derived,) = derive([source], random_enhancer(), CONTEXT)
    warnings = assert_dciodvfy_clean([derived], tmp_path)
    print("dciodvfy warnings (CT):", *warnings, sep="\n  ")
    back = pydicom.dcmread(tmp_path / f"{derived.SOPInstanceUID}.dcm")

    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.SOPClassUID == source.SOPClassUID
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID and back.SOPInstanceUID != source.SOPInstanceUID
    assert back.SeriesNumber != source.SeriesNumber
    assert back.FrameOfReferenceUID == source.FrameOfReferenceUID
    patient = [e for e in source if e.tag.group == 0x0010]
    assert patient and all(back[e.tag].value == e.value for e in patient)  # patient module unchanged

    assert list(back.ImageType[:2]) == ["DERIVED", "SECONDARY"] and list(back.ImageType[2:]) == source.ImageType[2:]
    code = back.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113085", "DCM", "Spatial resampling")
    assert "not for diagnostic use" in back.DerivationDescription.lower()
    (ref,) = back.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    (series_ref,) = back.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == source.SeriesInstanceUID
    assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    equipment = back.ContributingEquipmentSequence[-1]
    assert (equipment.Manufacturer, equipment.ManufacturerModelName, equipment.SoftwareVersions) == (
        "Aegle", "enhancer-x2-random-init", "0.0.0-test")
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    description = back.SeriesDescription.lower()
    assert "enhanced" in description and "not for diagnostic use" in description

    assert (back.Rows, back.Columns) == (2 * source.Rows, 2 * source.Columns)
    assert [float(v) for v in back.PixelSpacing] == pytest.approx([float(v) / 2 for v in source.PixelSpacing])
    np.testing.assert_allclose(fov_centre(back), fov_centre(source), atol=1e-4)  # same field of view
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
                    "RescaleIntercept", "SliceThickness", "PhotometricInterpretation", "ImageOrientationPatient"):
        assert back[keyword].value == source[keyword].value, keyword

    # HU kept by the mapping to model space and back: with the identity model (bicubic) the flattest 8×8 block of
    # the source keeps its mean HU within 2 HU (random weights would add their own arbitrary offset)
    (identity,) = derive([source], None, CONTEXT)
    hu_src = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    hu_out = identity.pixel_array * float(identity.RescaleSlope) + float(identity.RescaleIntercept)
    blocks = hu_src.reshape(16, 8, 16, 8).transpose(0, 2, 1, 3).reshape(16, 16, 64)
    r, c = np.unravel_index(np.argmin(blocks.std(axis=-1)), (16, 16))
    flat_src = hu_src[r * 8 + 2:r * 8 + 6, c * 8 + 2:c * 8 + 6].mean()
    flat_out = hu_out[r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12].mean()
    assert abs(flat_out - flat_src) < 2, (flat_src, flat_out)
    assert hu_out.min() < -160 and hu_out.max() > 240  # outside the 40/400 window: not clipped away

    recorded = json.loads(back.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x03].value)
    assert recorded == CONTEXT.to_dict(patient=False) and "patient_id" not in recorded
    assert (recorded["at"], recorded["completeness"], len(recorded["vector"])) == ("1997-04-30T16:29:36Z", 0.2857, 22)
    assert "HR 72, motion 0.4" in back.DerivationDescription and "completeness 0.29" in back.DerivationDescription
    assert str(source.PatientID) not in back.DerivationDescription
    assert is_aegle_output(back) and not is_aegle_output(source)


def test_multi_slice_mr_series(tmp_path: Path) -> None:
    sources = [read(path) for path in MR700]
    assert len({ds.SeriesInstanceUID for ds in sources}) == 1 and len(sources) == 7
    derived = derive(sources, random_enhancer())
    # The source files already fail one sanity check in an attribute the derived series must keep unchanged:
    inherited = "Error - StudyInstanceUID has same value as FrameOfReferenceUID"
    source_errors, _ = dciodvfy(MR700[0])
    assert [e for e in source_errors if e.startswith(inherited)], source_errors
    warnings = assert_dciodvfy_clean(derived, tmp_path, inherited=[e for e in source_errors
                                                                  if e.startswith(inherited)])
    print("dciodvfy warnings (MR):", *warnings, sep="\n  ")
    assert len({ds.SeriesInstanceUID for ds in derived}) == 1
    assert derived[0].SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in derived}) == 7
    for src, out in zip(sources, derived, strict=True):
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert out.InstanceNumber == src.InstanceNumber and out.SliceLocation == src.SliceLocation
        assert (out.Rows, out.Columns) == (32, 32)
        np.testing.assert_allclose(fov_centre(out), fov_centre(src), atol=1e-4)


def test_monochrome1_cr_keeps_its_polarity(tmp_path: Path) -> None:
    small = read(pydicom_file("dicomdirtests/77654033/CR1/6154"))
    large = read(pydicom_data_file("RG1_UNCR.dcm"))  # identity model: 1955×1841 is slow for a random net on CPU
    derived = derive([small], random_enhancer()) + derive([large])
    warnings = assert_dciodvfy_clean(derived, tmp_path)
    print("dciodvfy warnings (CR):", *warnings, sep="\n  ")
    for src, out in zip((small, large), derived, strict=True):
        assert out.PhotometricInterpretation == "MONOCHROME1"
        upsampled = bicubic(src.pixel_array[None].astype(np.float64), 2)[0]
        assert np.corrcoef(upsampled.ravel(), out.pixel_array.ravel().astype(np.float64))[0, 1] > 0.9
    assert "PixelSpacing" not in derived[1]  # RG1 says 0\0 (unknown): not halved into another lie
    assert [float(v) for v in derived[0].ImagerPixelSpacing] == [0.05, 0.05]  # 0.1 mm at the source


def test_rgb_is_enhanced_per_channel(tmp_path: Path) -> None:
    source = read(pydicom_data_file("SC_rgb.dcm"))
    (derived,) = derive([source], random_enhancer())
    assert_dciodvfy_clean([derived], tmp_path)
    assert derived.PhotometricInterpretation == "RGB" and derived.SamplesPerPixel == 3
    assert derived.pixel_array.shape == (200, 200, 3)
    upsampled = bicubic(np.moveaxis(source.pixel_array, -1, 0).astype(np.float64), 2)
    for channel in range(3):
        corr = np.corrcoef(upsampled[channel].ravel(), derived.pixel_array[..., channel].ravel())[0, 1]
        assert corr > 0.9


def test_multi_frame_keeps_its_frames() -> None:
    source = read(pydicom_data_file("emri_small.dcm"))
    (derived,) = derive([source])
    assert derived.NumberOfFrames == 10 and derived.pixel_array.shape == (10, 128, 128)
    assert list(derived.ImageType[:2]) == ["DERIVED", "PRIMARY"]  # Enhanced MR: value 2 must stay PRIMARY


def test_derived_series_refuses_mismatched_input() -> None:
    ct = read(pydicom_file("CT_small.dcm"))
    mr = read(pydicom_file("MR_small.dcm"))
    with pytest.raises(ValueError, match="sources"):
        derived_series([ct], [], scale=2, model_name="m", model_version="1", context=None, description="d")
    with pytest.raises(ValueError, match="one series"):
        derived_series([ct, mr], enhance_all([ct, mr]), scale=2, model_name="m", model_version="1", context=None,
                       description="d")


def test_trailing_zero_bytes_do_not_sink_a_real_mr_slice() -> None:
    # Zero bytes after the pixel data read as a (0000,0000) element: command group, not part of a data set.
    source = read_instance(MR700[0].read_bytes() + bytes(16), max_pixels=4096 * 4096)
    assert (0x0000, 0x0000) in source
    also = read(pydicom_file("CT_small.dcm"))
    also.add_new(0x00000000, "UL", 0)  # the minimal repro: any source instance with (0000,0000) UL 0
    also.add_new(0x00020003, "UI", also.SOPInstanceUID)  # file meta inside the data set: not copied either
    for ds in (source, also):
        (derived,) = derive([ds])
        assert not [e.tag for e in derived if e.tag.group < 0x0008]
        assert pydicom.dcmread(io.BytesIO(encode(derived))).SOPInstanceUID == derived.SOPInstanceUID


def test_retired_geometry_is_not_copied_to_disagree_with_the_new_grid(tmp_path: Path) -> None:
    source = read(MR700[0])
    # ACR-NEMA style retired geometry, as converted archives carry it next to the current attributes
    source.ImagePosition = source.ImagePositionPatient
    source.ImageOrientation = source.ImageOrientationPatient
    source.Location = source.SliceLocation
    source.ImageDimensions = 2
    (derived,) = derive([source])
    assert [float(v) for v in derived.ImagePositionPatient] != [float(v) for v in source.ImagePositionPatient]
    for keyword in ("ImagePosition", "ImageOrientation", "Location", "ImageDimensions"):
        assert keyword not in derived, keyword
    assert derived.SliceLocation == source.SliceLocation  # current attributes are kept
    inherited = [e for e in dciodvfy(MR700[0])[0] if e.startswith("Error - StudyInstanceUID has same value")]
    assert_dciodvfy_clean([derived], tmp_path, inherited=inherited)


def test_ultrasound_regions_describe_the_new_grid(tmp_path: Path) -> None:
    source = read(pydicom_file("examples_ybr_color.dcm"))  # real US, 30 YBR frames, one calibrated region
    region = source.SequenceOfUltrasoundRegions[0]
    region.ReferencePixelX0, region.ReferencePixelPhysicalValueX = 100, 1.5  # a reference point, to check it too
    (derived,) = derive([source])
    out = derived.SequenceOfUltrasoundRegions[0]
    assert (out.RegionLocationMinX0, out.RegionLocationMaxX1) == (2 * 84, 2 * 595 + 1)
    assert (out.RegionLocationMinY0, out.RegionLocationMaxY1) == (2 * 31, 2 * 414 + 1)
    assert out.PhysicalDeltaX == pytest.approx(region.PhysicalDeltaX / 2)

    def physical_x(item: Dataset, column: float) -> float:  # column: absolute, in that image's pixels
        x0 = item.RegionLocationMinX0 + item.ReferencePixelX0
        return item.ReferencePixelPhysicalValueX + (column - x0) * item.PhysicalDeltaX

    for column in (0, 57, 300):  # output pixel centre ↔ source position, align_corners=False
        assert physical_x(out, column) == pytest.approx(physical_x(region, (column + 0.5) / 2 - 0.5))


def test_big_endian_and_enhanced_sources_give_clean_derived_objects(tmp_path: Path) -> None:
    big_endian = read(pydicom_file("MR_small_bigendian.dcm"))
    (derived,) = derive([big_endian])
    assert_dciodvfy_clean([derived], tmp_path)  # written as a plain Explicit VR Little Endian file
    np.testing.assert_array_equal(derived.pixel_array, derive([read(pydicom_file("MR_small.dcm"))])[0].pixel_array)

    path = pydicom_data_file("eCT_Supplemental.dcm")  # Enhanced CT: laterality is per frame (Frame Anatomy)
    (derived,) = derive([read(path)])
    assert "Laterality" not in derived
    assert_dciodvfy_clean([derived], tmp_path, inherited=dciodvfy(path)[0])


# ------------------------------------------------------------------------------- the dciodvfy wrapper itself


def test_dciodvfy_counts_every_error_form_it_prints(tmp_path: Path) -> None:
    import random

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(random.Random(13).randbytes(2000))
    errors, _ = dciodvfy(garbage)
    assert "Error - Information Object Not found" in errors

    text = tmp_path / "text.dcm"
    text.write_bytes(b"hello world, not dicom at all\n")
    errors, _ = dciodvfy(text)  # a tag-prefixed error: "(0x6568,0x6c6c)  ?  - Error - Bad Value Length - …"
    assert any(e.startswith("(0x6568,0x6c6c)") and " - Error - Bad Value Length" in e for e in errors), errors

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:30000])  # cut inside the pixel data
    errors, _ = dciodvfy(truncated)
    assert "Error - Seek failed - while reading unencapsulated Pixel Data" in errors
    assert "Error - Dicom dataset read failed" in errors

    errors, _ = dciodvfy(tmp_path / "missing.dcm")
    assert [e for e in errors if e.startswith("Abort - File open for read failed")], errors


def test_dciodvfy_tag_prefixed_errors_and_crashes_are_not_clean() -> None:
    # A real CT whose only error is tag-prefixed, and dciodvfy exits 0 for it: exit status alone is not enough.
    errors, warnings = dciodvfy(pydicom_file("dicomdirtests/77654033/CT2/17136"))
    assert errors == ["(0x3109,0x000d) LO PrivateCreator  - Error - Bad private owner value - element must be "
                      "greater than or equal to 0x0010"]
    assert "(0x3109,0x000d) LO PrivateCreator  - Warning - Bad private owner value - empty value" in warnings
    # A real 32-bit RT dose makes dciodvfy fail an assertion before it prints a single message.
    errors, _ = dciodvfy(pydicom_file("rtdose.dcm"))
    assert errors == ["Abort - dciodvfy was killed by signal 6"]
