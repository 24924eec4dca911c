"""Reading received DICOM (every refusal reason) and the pixel mapping to model space and back, on real files."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from server.study import (
    DicomInputError,
    acquisition_time,
    bicubic,
    from_model_space,
    read_instance,
    supported_syntaxes,
    to_model_space,
)
from server.study.pixels import planes, unplanes
from tests.dicom_support import pydicom_data_file, pydicom_file

MAX_PIXELS = 4096 * 4096
CT = pydicom_file("CT_small.dcm")  # 16-bit signed CT with RescaleIntercept −1024, window 40/400 absent
MR = pydicom_file("MR_small.dcm")
MR12 = pydicom_data_file("MR2_UNCR.dcm")  # 12-bit MR with RescaleSlope 3.77
CR_MONO1 = pydicom_file("dicomdirtests/77654033/CR1/6154")  # MONOCHROME1 CR, 12 bits, rescale
RG1 = pydicom_data_file("RG1_UNCR.dcm")  # MONOCHROME1 CR, 15 bits
RGB = pydicom_data_file("SC_rgb.dcm")
US_RGB = pydicom_data_file("US1_UNCR.dcm")
EMRI = pydicom_data_file("emri_small.dcm")  # Enhanced MR, 10 frames


def read(path: Path, **kwargs: int) -> Dataset:
    return read_instance(path.read_bytes(), max_pixels=kwargs.get("max_pixels", MAX_PIXELS))


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def refused(data: bytes, **kwargs: int) -> DicomInputError:
    with pytest.raises(DicomInputError) as caught:
        read_instance(data, max_pixels=kwargs.pop("max_pixels", MAX_PIXELS), **kwargs)
    return caught.value


def identity_output(image) -> np.ndarray:
    """What a model that changes nothing returns: the bicubic ×2 of its input (in model space)."""
    return unplanes(bicubic(image.frames, 2), image.mapping)


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(
    "path",
    [CT, MR, MR12, CR_MONO1, RG1, RGB, US_RGB, EMRI, pydicom_file("MR_small_RLE.dcm"),
     pydicom_file("MR_small_implicit.dcm"), pydicom_file("MR_small_bigendian.dcm"), pydicom_data_file("MR2_J2KR.dcm")],
    ids=lambda p: p.name,
)
def test_real_files_are_read_with_decodable_pixels(path: Path) -> None:
    ds = read(path)
    assert ds.pixel_array.shape[-2:] == (ds.Rows, ds.Columns) or ds.pixel_array.shape[-3:-1] == (ds.Rows, ds.Columns)


def test_non_dicom_bytes_are_refused() -> None:
    for data in (b"", b"hello" * 100, b"\x89PNG\r\n\x1a\n" + bytes(300)):
        error = refused(data)
        assert (error.status, error.reason) == (400, "not-dicom")


def test_truncated_files_are_refused() -> None:
    error = refused(pydicom_file("MR_truncated.dcm").read_bytes())  # pydicom's real truncated file
    assert (error.status, error.reason) == (400, "truncated")
    assert "8130" in error.detail and error.sop_instance_uid == pydicom.dcmread(MR).SOPInstanceUID
    data = CT.read_bytes()
    for cut in (len(data) // 2, len(data) - 300, 1000, 5):
        error = refused(data[:cut])
        assert error.status == 400
        assert error.reason in {"truncated", "not-dicom", "no-pixel-data"}, (cut, error)
    assert refused(data[: len(data) // 2]).reason == "truncated"


def test_missing_pixel_data_is_refused() -> None:
    ds = pydicom.dcmread(CT)
    del ds.PixelData
    error = refused(encode(ds))
    assert (error.status, error.reason) == (400, "no-pixel-data")


def test_unsupported_transfer_syntax_names_the_supported_ones() -> None:
    error = refused(pydicom_file("SC_rgb_jpeg_gdcm.dcm").read_bytes())  # JPEG Lossless: no decoder here
    assert (error.status, error.reason) == (415, "unsupported-transfer-syntax")
    assert "JPEG Lossless" in error.detail and "Explicit VR Little Endian" in error.detail
    assert pydicom.uid.RLELossless in supported_syntaxes()


def test_absurd_dimensions_are_refused_before_decoding() -> None:
    ds = pydicom.dcmread(CT)
    ds.Rows = ds.Columns = 60000
    error = refused(encode(ds))
    assert (error.status, error.reason) == (413, "absurd-dimensions")
    ds.Rows = 0
    assert (refused(encode(ds)).status, refused(encode(ds)).reason) == (400, "absurd-dimensions")
    error = refused(CT.read_bytes(), max_pixels=100 * 100)
    assert (error.status, error.reason) == (413, "absurd-dimensions")
    error = refused(pydicom_file("rtdose.dcm").read_bytes())  # real RT dose: 32 bits allocated
    assert (error.status, error.reason) == (415, "unsupported-bits-allocated")


def test_inconsistent_pixel_data_length_is_refused() -> None:
    ds = pydicom.dcmread(CT)
    ds.Rows = 64  # header says half the pixels the data holds
    error = refused(encode(ds))
    assert (error.status, error.reason) == (400, "inconsistent-pixel-data")


def test_huge_upload_and_palette_colour_are_refused() -> None:
    error = refused(CT.read_bytes(), max_bytes=10_000)
    assert (error.status, error.reason) == (413, "too-large")
    error = refused(pydicom_file("examples_palette.dcm").read_bytes())
    assert (error.status, error.reason) == (415, "unsupported-photometric")


def test_missing_uids_are_refused() -> None:
    ds = pydicom.dcmread(CT)
    del ds.SeriesInstanceUID
    error = refused(encode(ds))
    assert (error.status, error.reason) == (400, "missing-attribute")
    assert "SeriesInstanceUID" in error.detail


# ------------------------------------------------------------------------------------------- pixel mapping


def test_bicubic_is_torch_bicubic() -> None:
    import torch
    import torch.nn.functional as F

    stack = np.random.default_rng(0).uniform(size=(3, 17, 11))
    for scale in (2, 4):
        expected = F.interpolate(torch.from_numpy(stack)[:, None], scale_factor=float(scale), mode="bicubic",
                                 align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(bicubic(stack, scale), expected, atol=1e-10)


def test_ct_is_windowed_in_hounsfield_units_and_values_outside_the_window_survive() -> None:
    ds = read(CT)
    image = to_model_space(ds)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert image.mapping.window == (40.0, 400.0)  # CT_small has no window: the documented default
    np.testing.assert_array_equal(image.values[0], hu)
    np.testing.assert_allclose(image.pixels[0], np.clip((hu + 160) / 400, 0, 1), atol=1e-6)
    assert hu.min() < -160 and hu.max() > 240  # the image really has air/fat and bone outside the window

    stored = from_model_space(identity_output(image), image, scale=2)
    assert stored.dtype == np.int16 and stored.shape == (256, 256)
    expected = np.rint(bicubic(ds.pixel_array[None].astype(np.float64), 2)[0])
    np.testing.assert_array_equal(stored, expected)  # nothing clipped to the window

    brighter = from_model_space(identity_output(image) + 0.05, image, scale=2)  # +0.05 window = +20 HU
    np.testing.assert_allclose(brighter.astype(float) - stored, 20.0, atol=1.0)


def test_mr_normalisation_is_the_training_convention() -> None:
    from gan import data as gdata
    from gan import normalise_volume

    for path in (MR, MR12):
        ds = read(path)
        image = to_model_space(ds)
        volume = gdata.Volume(path.name, "s", "MR", ds.pixel_array, photometric="MONOCHROME2")
        np.testing.assert_allclose(image.pixels[0], normalise_volume(volume), atol=1e-5)


def test_twelve_bit_mr_round_trip_and_clipping_to_bits_stored() -> None:
    ds = read(MR12)
    image = to_model_space(ds)
    stored = from_model_space(identity_output(image), image, scale=2)
    assert stored.dtype == np.uint16 and stored.shape == (2048, 2048)
    expected = np.clip(np.rint(bicubic(ds.pixel_array[None].astype(np.float64), 2)[0]), 0, 4095)
    assert np.abs(stored.astype(np.int64) - expected).max() <= 1  # the rescale round trip is float64
    saturated = from_model_space(identity_output(image) + 10.0, image, scale=2)
    assert saturated.max() == 4095  # BitsStored 12: clipped to what it can represent, not to 65535


def test_monochrome1_is_inverted_for_the_model_and_polarity_is_kept() -> None:
    from gan import data as gdata
    from gan import normalise_volume

    for path in (CR_MONO1, RG1):
        ds = read(path)
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        image = to_model_space(ds)
        volume = gdata.Volume(path.name, "s", "CR", ds.pixel_array, photometric="MONOCHROME1")
        np.testing.assert_allclose(image.pixels[0], normalise_volume(volume), atol=1e-5)
        stored = from_model_space(identity_output(image), image, scale=2)
        expected = np.rint(bicubic(ds.pixel_array[None].astype(np.float64), 2)[0])
        assert np.abs(stored.astype(np.int64) - expected).max() <= 1
        brighter = from_model_space(identity_output(image) + 0.1, image, scale=2)  # brighter for the model
        assert (brighter.astype(np.int64) - stored).mean() < 0  # = lower stored values in MONOCHROME1


def test_rgb_round_trip() -> None:
    for path in (RGB, US_RGB):
        ds = read(path)
        image = to_model_space(ds)
        assert image.pixels.shape == (ds.Rows, ds.Columns, 3) and image.frames.shape == (3, ds.Rows, ds.Columns)
        stored = from_model_space(identity_output(image), image, scale=2)
        assert stored.dtype == np.uint8 and stored.shape == (2 * ds.Rows, 2 * ds.Columns, 3)
        expected = np.clip(np.rint(unplanes(bicubic(planes(ds.pixel_array, image.mapping), 2), image.mapping)),
                           0, 255)
        np.testing.assert_array_equal(stored, expected)


def test_multi_frame_round_trip() -> None:
    ds = read(EMRI)
    image = to_model_space(ds)
    assert image.pixels.shape == (10, 64, 64)
    stored = from_model_space(identity_output(image), image, scale=2)
    assert stored.shape == (10, 128, 128)
    with pytest.raises(ValueError, match="expected"):
        from_model_space(image.pixels, image, scale=2)


# ----------------------------------------------------------------------------------------- acquisition time


def test_acquisition_time_uses_the_header_offset_or_the_default_zone() -> None:
    ds = read(CT)  # AcquisitionDate/Time 19970430 112936, TimezoneOffsetFromUTC −0500
    assert acquisition_time(ds, UTC) == datetime(1997, 4, 30, 16, 29, 36, tzinfo=UTC)
    del ds.TimezoneOffsetFromUTC
    plus_two = timezone(timedelta(hours=2))
    assert acquisition_time(ds, plus_two) == datetime(1997, 4, 30, 9, 29, 36, tzinfo=UTC)
    ds.AcquisitionDateTime = "20240102030405.5+0100"
    assert acquisition_time(ds, plus_two) == datetime(2024, 1, 2, 2, 4, 5, 500000, tzinfo=UTC)
    mr = read(pydicom_file("dicomdirtests/98892003/MR700/4467"))  # no acquisition time: ContentDate/Time
    assert acquisition_time(mr, plus_two) == datetime(2003, 5, 5, 5, 6, 56, tzinfo=UTC)
    assert acquisition_time(read(MR), UTC) is None  # every date is empty


# ------------------------------------------------------------------------- values the modality cannot produce


def test_mr_output_stays_non_negative_with_the_shipped_model_and_with_bicubic_overshoot() -> None:
    import torch

    from gan.registry import load_model

    torch.set_num_threads(1)
    model, _ = load_model(None, "enhancer-x2")  # the shipped weights
    slices = [read(p) for p in sorted(pydicom_file("dicomdirtests/98892003/MR700").iterdir())]
    zero_background = [ds for ds in slices if ds.pixel_array.min() == 0]
    assert len(zero_background) == 2 and all(ds.PixelRepresentation == 1 for ds in slices)  # signed, yet ≥ 0
    for ds in zero_background:
        image = to_model_space(ds)
        assert image.mapping.floor == 0.0
        raw = np.rint(bicubic(ds.pixel_array[None].astype(np.float64), 2)[0])
        assert raw.min() < 0  # bicubic alone overshoots below the black background
        stored = from_model_space(identity_output(image), image, scale=2)
        np.testing.assert_array_equal(stored, np.maximum(raw, 0))  # only the overshoot is clipped
        with torch.inference_mode():
            output = model(torch.from_numpy(image.frames.astype(np.float32))[:, None], None)[:, 0].numpy()
        enhanced = from_model_space(unplanes(output, image.mapping), image, scale=2)
        assert enhanced.min() == 0 and (enhanced == 0).sum() > 0  # the model's negative overshoot stops at 0


def test_ct_output_keeps_hounsfield_units_above_air_and_keeps_padding() -> None:
    ds = read(CT)  # stored 128…2191 → −896…1167 HU
    image = to_model_space(ds)
    assert image.mapping.floor == -1024.0  # air is −1000 HU; the source itself goes no lower than −896
    hu = bicubic(image.values, 2)[0]
    darker = from_model_space(identity_output(image) - 1.0, image, scale=2)  # −1 window = −400 HU everywhere
    darker_hu = darker * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert darker_hu.min() == -1024  # clipped at the floor, in stored values with the source's rescale
    kept = hu - 400 > -1024
    np.testing.assert_allclose(darker_hu[kept], np.rint(hu[kept] - 400), atol=1)  # HU keep their meaning

    padded = read(pydicom_data_file("693_UNCR.dcm"))  # −3024 HU outside the reconstruction circle
    image = to_model_space(padded)
    assert image.values.min() == -3024 and image.mapping.floor == -3024
    stored = from_model_space(identity_output(image), image, scale=2)
    out_hu = stored * float(padded.RescaleSlope) + float(padded.RescaleIntercept)
    assert out_hu.min() == -3024 and (out_hu == -3024).mean() > 0.1  # padding stays padding, not air
    lo, hi = image.mapping.stored_range
    assert lo <= stored.min() and stored.max() <= hi
