"""Malformed input never escapes the reader as anything but DicomInputError.

Real pydicom test files, corrupted the way the outside probe did (an empty or garbage TransferSyntaxUID, an invalid
VR on Rows) and by a seeded batch of random byte, VR, length and truncation mutations. Every outcome must be a
refusal with a documented reason, or a dataset the rest of the chain (pixel mapping, derived series, encoding)
handles without a lazy-parse error.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from server.study import (
    DicomInputError,
    bicubic,
    derived_series,
    encode,
    from_model_space,
    read_instance,
    to_model_space,
)
from server.study.pixels import unplanes
from tests.dicom_support import pydicom_data_file, pydicom_file

MAX_PIXELS = 4096 * 4096
CT = pydicom_file("CT_small.dcm")  # Explicit VR Little Endian
REASONS = {"too-large", "not-dicom", "malformed", "truncated", "missing-attribute", "no-pixel-data",
           "unsupported-pixel-data", "unsupported-transfer-syntax", "absurd-dimensions", "unsupported-bits-allocated",
           "unsupported-photometric", "bad-attribute", "inconsistent-pixel-data", "undecodable"}  # docs/dicom.md §1
SOURCES = [CT, pydicom_file("MR_small.dcm"), pydicom_file("dicomdirtests/98892003/MR700/4467"),  # implicit VR
           pydicom_file("MR_small_bigendian.dcm"), pydicom_file("MR_small_RLE.dcm"), pydicom_data_file("SC_rgb.dcm"),
           pydicom_data_file("emri_small.dcm"), pydicom_file("dicomdirtests/77654033/CR1/6154"),
           pydicom_file("JPEG2000.dcm")]
VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OW", b"PN",
       b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT"]
INVALID_VRS = [b"QQ", b"us", b"\x00\x00", b"\xff\xff"]


def with_meta(path: Path, **changes: str) -> bytes:
    """A real file with file-meta elements changed (written without pydicom's checks, as a sender could)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds.file_meta, keyword, value)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    return buffer.getvalue()


def refused(data: bytes) -> DicomInputError:
    with pytest.raises(DicomInputError) as caught:
        read_instance(data, max_pixels=MAX_PIXELS)
    return caught.value


def test_an_empty_transfer_syntax_is_malformed_not_a_crash() -> None:
    error = refused(with_meta(CT, TransferSyntaxUID=""))
    assert (error.status, error.reason) == (400, "malformed")
    assert "TransferSyntaxUID" in error.detail
    assert error.sop_instance_uid == pydicom.dcmread(CT).SOPInstanceUID


def test_a_garbage_transfer_syntax_is_refused_without_quoting_it() -> None:
    error = refused(with_meta(CT, TransferSyntaxUID="Doe^John"))
    assert (error.status, error.reason) == (400, "malformed") and "Doe" not in error.detail
    error = refused(with_meta(CT, TransferSyntaxUID="1.2.3.4.5"))  # a UID, but no transfer syntax anyone knows
    assert (error.status, error.reason) == (415, "unsupported-transfer-syntax")


def test_an_invalid_vr_on_rows_is_malformed_and_names_the_element() -> None:
    raw = CT.read_bytes()
    rows = raw.index(b"\x28\x00\x10\x00US")  # (0028,0010) US, explicit VR little endian
    for vr in (b"QQ", b"XY", b"ZZ"):  # upper-case letters where a VR belongs, but no VR defined by DICOM
        error = refused(raw[: rows + 4] + vr + raw[rows + 6:])
        assert (error.status, error.reason) == (400, "malformed"), vr
        assert "(0028,0010)" in error.detail, error.detail


def test_values_that_fail_a_check_are_not_quoted() -> None:
    ds = pydicom.dcmread(CT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = "Doe^John^Jr"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        error = refused(buffer.getvalue())
        assert error.reason == "bad-attribute" and error.sop_instance_uid is None  # not a UID: not reported as one
        assert "Doe" not in error.detail
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.PhotometricInterpretation = "DOE^JOHN"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    error = refused(buffer.getvalue())
    assert error.reason == "unsupported-photometric" and "DOE" not in error.detail
    assert error.sop_instance_uid == ds.SOPInstanceUID


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One random corruption of a real file: bytes, an FF FF pair, a VR, a truncation or trailing zero bytes."""
    data = bytearray(raw)
    header = min(len(data), 4000)
    kind = rng.choice(["bytes", "ffff", "vr", "truncate", "zeros"])
    if kind == "bytes":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(132, header)] = rng.randrange(256)
    elif kind == "ffff":
        at = rng.randrange(132, header - 2)
        data[at:at + 2] = b"\xff\xff"
    elif kind == "vr":
        places = [i for i in range(132, header - 2) if bytes(data[i:i + 2]) in VRS]
        if places:
            at = rng.choice(places)
            data[at:at + 2] = rng.choice(VRS + INVALID_VRS)
    elif kind == "truncate":
        del data[rng.randrange(132, len(data)):]
    else:
        data += bytes(rng.randrange(1, 64))
    return bytes(data)


def check_downstream(ds: Dataset) -> None:
    """The rest of the chain on an accepted dataset: model space, back, derived series, encoded file."""
    image = to_model_space(ds)
    stored = from_model_space(unplanes(bicubic(image.frames, 2), image.mapping), image, scale=2)
    lo, hi = image.mapping.stored_range
    assert lo <= stored.min() and stored.max() <= hi
    (derived,) = derived_series([ds], [stored], scale=2, model_name="m", model_version="1", context=None,
                                description="Malformed-input check.")
    assert pydicom.dcmread(io.BytesIO(encode(derived))).SOPInstanceUID == derived.SOPInstanceUID


def test_random_mutations_of_real_files_are_accepted_whole_or_refused_with_a_reason() -> None:
    rng = random.Random(13)
    outcomes: Counter[str] = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about most of these files; the outcome is what counts
        for n in range(600):
            source = rng.choice(SOURCES)
            data = mutate(source.read_bytes(), rng)
            try:
                ds = read_instance(data, max_pixels=MAX_PIXELS)
            except DicomInputError as exc:
                assert exc.status in (400, 413, 415) and exc.reason in REASONS, (n, source.name, exc)
                uid = exc.sop_instance_uid
                assert uid is None or re.fullmatch(r"[0-9.]{1,64}", uid), (n, source.name, uid)
                outcomes[exc.reason] += 1
                continue
            check_downstream(ds)
            outcomes["accepted"] += 1
    print(dict(outcomes))
    # not vacuous: the batch reaches both sides and several refusal paths
    assert outcomes["accepted"] >= 100 and outcomes["malformed"] >= 10 and len(outcomes) >= 5, outcomes
