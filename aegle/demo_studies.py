"""The demo's two real studies: DICOM series built from the pyradiomics 3.0.1 volumes (``scripts/fetch-data``).

Each volume (NRRD, LPS space) is cut to ``slices`` axial slices around its tumour, averaged down to a ``size``²
matrix, and written as one DICOM series with the geometry of the source: ImagePositionPatient per slice,
ImageOrientationPatient, PixelSpacing, SliceThickness and SpacingBetweenSlices in millimetres. CT pixels are
stored unsigned with RescaleIntercept −1024 (Hounsfield units); MR pixels keep their values. Patient, study and
acquisition time are the demo's synthetic ones.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset


@dataclass(frozen=True)
class DemoStudy:
    """Which pyradiomics case becomes which study, how it reaches the service and when it was acquired."""

    label: str
    case: str
    modality: str
    route: str  # "edge" (C-STORE to the edge node, MQTT to the service) or "stow" (STOW-RS)
    patient_index: int
    at_fraction: float  # acquisition time as a fraction of the monitoring window
    description: str


STUDIES = (
    DemoStudy("CT", "lung1", "CT", "edge", 0, 0.4, "Chest CT (pyradiomics lung1)"),
    DemoStudy("MR", "brain1", "MR", "stow", 1, 0.8, "Brain MR (pyradiomics brain1)"),
)


@dataclass(frozen=True)
class Volume:
    """An axial stack (z, y, x) in LPS with its geometry: origin of voxel (0, 0, 0) and one direction per axis
    (mm per index step, in x, y, z array order)."""

    pixels: np.ndarray
    origin: np.ndarray
    directions: np.ndarray  # rows: step of x (column index), y (row index), z (slice index)
    tumour: tuple[int, int]  # first and last slice with tumour mask


def _vector(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.strip("()").split(",")])


def read_case(case: str, archive: Path | None = None) -> Volume:
    """One pyradiomics case (image and label) from the archive, with its geometry."""
    from gan import PYRADIOMICS_ARCHIVE, read_nrrd

    path = archive or PYRADIOMICS_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run scripts/fetch-data (scripts/setup does)")
    with tarfile.open(path, "r:gz") as tar:

        def member(name: str) -> tuple[np.ndarray, dict[str, str]]:
            handle = tar.extractfile(f"pyradiomics-3.0.1/data/{name}.nrrd")
            if handle is None:
                raise ValueError(f"{name}.nrrd is not a regular file in {path}")
            return read_nrrd(handle.read())

        pixels, header = member(f"{case}_image")
        label, _ = member(f"{case}_label")
    if header.get("space") != "left-posterior-superior":
        raise ValueError(f"pyradiomics {case}: space {header.get('space')!r}, expected LPS")
    directions = np.array([_vector(v) for v in header["space directions"].split()])
    origin = _vector(header["space origin"])
    if directions[1][1] < 0:  # rows run anterior: flip them so the image shows anterior at the top
        pixels, label = pixels[:, ::-1], label[:, ::-1]
        origin = origin + (pixels.shape[1] - 1) * directions[1]
        directions[1] = -directions[1]
    found = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))
    return Volume(np.ascontiguousarray(pixels), origin, directions, (int(found[0]), int(found[-1])))


def resample(volume: Volume, slices: int, size: int) -> Volume:
    """``slices`` slices centred on the tumour, each averaged down to ``size``² (the source side must be a multiple
    of it); the origin moves to the centre of the first averaged block."""
    depth, rows, cols = volume.pixels.shape
    if rows % size or cols % size:
        raise ValueError(f"a {rows}×{cols} slice cannot be averaged down to {size}×{size}")
    slices = min(slices, depth)
    centre = (volume.tumour[0] + volume.tumour[1]) // 2
    first = min(max(centre - slices // 2, 0), depth - slices)
    fy, fx = rows // size, cols // size
    part = volume.pixels[first:first + slices].astype(np.float64)
    small = part.reshape(slices, size, fy, size, fx).mean(axis=(2, 4))
    origin = volume.origin + first * volume.directions[2] + (fx - 1) / 2 * volume.directions[0] \
        + (fy - 1) / 2 * volume.directions[1]
    directions = volume.directions * np.array([[fx], [fy], [1]])
    return Volume(small, origin, directions, (volume.tumour[0] - first, volume.tumour[1] - first))


def _ds(text: float) -> str:
    """A decimal string (DS, at most 16 characters)."""
    return f"{text:.6g}"


def build_series(study: DemoStudy, patient_id: str, acquired: datetime, *, slices: int = 20, size: int = 128,
                 archive: Path | None = None) -> list[Dataset]:
    """The study as one DICOM series of ``slices`` instances of ``size``², for ``patient_id``, acquired at
    ``acquired`` (see the module doc)."""
    volume = resample(read_case(study.case, archive), slices, size)
    stamp = acquired.astimezone(UTC)
    date, time = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S.%f")
    study_uid, series_uid, frame_uid = uid.generate_uid(), uid.generate_uid(), uid.generate_uid()
    ct = study.modality == "CT"
    sop_class = uid.CTImageStorage if ct else uid.MRImageStorage
    row_dir, col_dir, slice_dir = volume.directions
    spacing = (float(np.linalg.norm(col_dir)), float(np.linalg.norm(row_dir)))  # row spacing, column spacing
    thickness = float(np.linalg.norm(slice_dir))
    orientation = [*(row_dir / np.linalg.norm(row_dir)), *(col_dir / np.linalg.norm(col_dir))]
    orientation = [v + 0.0 for v in orientation]  # no "-0"
    out = []
    for k, plane in enumerate(volume.pixels):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientID, ds.PatientName = patient_id, f"Demo^{patient_id}"
        ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "DEMO", 1, k + 1
        ds.StudyDescription = f"Aegle demo: {study.description}"
        ds.SeriesDescription = f"{study.label} {size}x{size}, {len(volume.pixels)} slices"
        ds.Modality = study.modality
        ds.Manufacturer = "Aegle demo (from pyradiomics 3.0.1 test data)"
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST" if ct else "BRAIN"
        ds.TimezoneOffsetFromUTC = "+0000"
        for date_kw, time_kw in (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                                 ("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
            setattr(ds, date_kw, date)
            setattr(ds, time_kw, time)
        ds.AcquisitionDateTime = stamp.strftime("%Y%m%d%H%M%S.%f+0000")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if ct else ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [_ds(v) for v in volume.origin + k * slice_dir]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(v) for v in spacing]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(thickness)
        ds.SliceLocation = _ds(float((volume.origin + k * slice_dir)[2]))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16 if ct else 12, 15 if ct else 11
        ds.PixelRepresentation = 0
        if ct:
            stored = np.clip(np.rint(plane + 1024), 0, 65535).astype(np.uint16)
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
            ds.WindowCenter, ds.WindowWidth = "-600", "1500"  # lung window
            ds.KVP = ""
            ds.AcquisitionNumber = 1
        else:
            stored = np.clip(np.rint(plane), 0, 4095).astype(np.uint16)
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = ""
        ds.PixelData = stored.tobytes()
        out.append(ds)
    return out
