"""Real medical images shipped in packages, as volumes with subject ids, and leakage-free splits by subject.

Datasets (see :data:`DATASETS`; nothing downloads at run time; the inventory with licences and each subject's own
noise is in docs/training.md):

- ``pydicom``: grayscale CT, MR, CR, DX and US files from pydicom's test files, pydicom-data and deid-data that
  pydicom decodes here (what the server can read too). What is left out, and why, comes from :func:`scan_dicom`.
- ``dicom-jpeg-lossless``: the JPEG Lossless files of the same packages, decoded with imagecodecs because pydicom
  has no decoder for them here (a neck CT and an ultrasound image). Training only: the server refuses this
  transfer syntax.
- ``mni152``: nilearn's MNI152 T1 template at 1 mm (one subject: an average of 152 brains).
- ``pyradiomics``: brain MR, breast MR and chest CT volumes with tumour masks, read from the pyradiomics 3.0.1
  source archive that ``scripts/fetch-data`` puts in ``var/data/`` (set-up time).
- ``nibabel``: nibabel's packaged fMRI volume (EPI, one subject), from its installed test data.
- ``dipy``: dipy 1.12.1's packaged brain MR (a diffusion b=0 volume and a T1 coronal slice), read from the wheel
  that ``scripts/fetch-data`` puts in ``var/data/``.
- ``pydeface``: pydeface 2.1.0's T1 head template (a mean of registered heads), read from its wheel in ``var/data/``.
- ``retina``: scikit-image's RGB fundus photograph (one subject).

:func:`load` caches each dataset per process (its arrays are read-only; every call returns new :class:`Volume`
objects around them).

Conventions of :class:`Volume`:

- ``pixels`` is 2-D ``(rows, cols)``, 3-D ``(slices, rows, cols)`` (frames for multi-frame DICOM, axial slices for
  NRRD and NIfTI), or ``(rows, cols, 3)`` for RGB.
- CT is always **float32 Hounsfield units** (RescaleSlope/Intercept applied). Other DICOM keeps its native dtype:
  12/16-bit MR and CR stay integers (an MR rescale, when present, is kept in ``meta``, not applied). NIfTI volumes
  are float32 with the file's scaling applied.
- ``spacing`` is millimetres per spatial axis of ``pixels`` (NaN where unknown), or None when unknown.
- ``photometric`` is stored as acquired; :func:`display_pixels` gives display-oriented data (MONOCHROME1 inverted).
- ``single_instance`` is True for DICOM: ``pixels`` are one instance (all its frames), the unit of the intensity
  normalisation (:mod:`gan.intensity`); the slices of a NIfTI or NRRD volume are normalised one by one.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import math
import os
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from gan.intensity import SOFT_TISSUE_WINDOW

__all__ = [
    "DATASETS",
    "DEFAULT_DATASETS",
    "DIPY_WHEEL",
    "HELD_OUT_TEST_SUBJECTS",
    "PYDEFACE_WHEEL",
    "PYRADIOMICS_ARCHIVE",
    "ImageRecord",
    "Skipped",
    "Slice",
    "Volume",
    "check_disjoint",
    "display_pixels",
    "held_out_test",
    "load",
    "load_dicom_jpeg_lossless",
    "load_dipy",
    "load_mni152",
    "load_nibabel",
    "load_pydeface",
    "load_pydicom",
    "load_pyradiomics",
    "load_retina",
    "read_nrrd",
    "scan_dicom",
    "slices",
    "split",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where ``scripts/fetch-data`` puts the archives read here (``AEGLE_DATA_DIR`` overrides ``var/data``).
DATA_DIR = Path(os.environ.get("AEGLE_DATA_DIR", REPO_ROOT / "var" / "data"))
PYRADIOMICS_ARCHIVE = DATA_DIR / "pyradiomics-3.0.1.tar.gz"
#: dipy's wheel (only its data files are read; any platform's wheel holds the same ones).
DIPY_WHEEL = DATA_DIR / "dipy-1.12.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
PYDEFACE_WHEEL = DATA_DIR / "pydeface-2.1.0-py3-none-any.whl"

#: CT window (center, width) in HU of the pyradiomics lung volumes (the DICOM default is SOFT_TISSUE_WINDOW).
LUNG_WINDOW = (-600.0, 1500.0)


@dataclass
class Volume:
    """One image or volume of one subject (the unit of splitting)."""

    source: str
    subject: str
    modality: str
    pixels: np.ndarray
    photometric: str = "MONOCHROME2"
    spacing: tuple[float, ...] | None = None
    mask: np.ndarray | None = None
    window: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    single_instance: bool = False  # pixels are one DICOM instance (all its frames): normalised as one

    @property
    def is_rgb(self) -> bool:
        """True for colour images ``(rows, cols, 3)``."""
        return self.photometric == "RGB"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the colour channel."""
        return self.pixels.shape[:-1] if self.is_rgb else self.pixels.shape


ImageRecord = Volume


@dataclass
class Slice:
    """A 2-D image cut from a :class:`Volume` (``image`` is ``(rows, cols)`` or ``(rows, cols, 3)``)."""

    source: str
    subject: str
    modality: str
    index: int
    axis: int
    image: np.ndarray
    photometric: str = "MONOCHROME2"
    mask: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    window: tuple[float, float] | None = None


@dataclass(frozen=True)
class Skipped:
    """A file the DICOM scan left out, and why."""

    path: str
    reason: str


def display_pixels(volume: Volume | Slice) -> np.ndarray:
    """Pixels oriented for display: MONOCHROME1 inverted within the data range (dtype kept), others unchanged."""
    data = volume.pixels if isinstance(volume, Volume) else volume.image
    if volume.photometric != "MONOCHROME1":
        return data
    lo, hi = data.min(), data.max()
    wide = np.float64 if data.dtype.kind == "f" else np.int64
    return (wide(lo) + wide(hi) - data.astype(wide)).astype(data.dtype)


# --------------------------------------------------------------------------------------------------------- DICOM

_MODALITIES = {"CT", "MR", "CR", "DX", "US"}
_MIN_SIDE = 32  # dicomdirtests holds 16 × 16 thumbnails: useless as images


def _dicom_roots() -> list[tuple[str, Path]]:
    import data_store  # pydicom-data, a dependency of the data extra
    import deid_data  # deid-data, likewise
    import pydicom

    return [
        ("pydicom", Path(pydicom.__file__).parent / "data" / "test_files"),
        ("pydicom-data", Path(data_store.__file__).parent / "data"),
        ("deid-data", Path(deid_data.__file__).parent / "data"),
    ]


def _lossless_jpeg_syntaxes() -> set[str]:
    """JPEG Lossless (process 14) UIDs: decoded with imagecodecs when pydicom has no decoder for them here."""
    from pydicom import uid

    return {uid.JPEGLossless, uid.JPEGLosslessSV1}


def _decode_lossless_jpeg(ds: Any) -> np.ndarray:
    """The frames of an unsigned JPEG Lossless dataset, decoded with imagecodecs (pydicom's layout: frames first)."""
    import imagecodecs
    from pydicom.encaps import generate_frames

    if ds.get("PixelRepresentation", 0) != 0:
        raise ValueError("signed JPEG Lossless data is not decoded here")
    count = int(ds.get("NumberOfFrames") or 1)
    frames = [imagecodecs.ljpeg_decode(frame) for frame in generate_frames(ds.PixelData, number_of_frames=count)]
    return np.stack(frames) if count > 1 else frames[0]


def lossy_syntaxes() -> set[str]:
    """UIDs of the lossy-compression transfer syntaxes this pydicom knows."""
    from pydicom import uid

    names = ["JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEG2000", "JPEGLSNearLossless", "HTJ2K", "JPEGXL"]
    return {getattr(uid, name) for name in names if hasattr(uid, name)}


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DICOM number."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)


def _functional(ds: Any, sequence: str, keyword: str) -> Any:
    """``keyword`` from the top level, else from the shared functional groups of an enhanced image."""
    if keyword in ds:
        return ds.get(keyword)
    for group in ds.get("SharedFunctionalGroupsSequence", []):
        for item in group.get(sequence, []):
            if keyword in item:
                return item.get(keyword)
    return None


def _reject(ds: Any, lossy: set[str]) -> str | None:
    """Why a dataset is not a grayscale CT/MR/CR/US image we want, or None."""
    if "PixelData" not in ds:
        return "no pixel data"
    modality = ds.get("Modality")
    if modality not in _MODALITIES:
        return f"modality {modality!r} is not one of {sorted(_MODALITIES)}"
    photometric = ds.get("PhotometricInterpretation")
    if ds.get("SamplesPerPixel", 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"not grayscale (PhotometricInterpretation {photometric})"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return "no TransferSyntaxUID in the file meta"
    if ds.get("LossyImageCompression") == "01" or syntax in lossy:
        return f"lossy-compressed ({syntax.name}; LossyImageCompression={ds.get('LossyImageCompression')})"
    if modality == "CT":
        rescale_type = _functional(ds, "PixelValueTransformationSequence", "RescaleType")
        if rescale_type not in (None, "", "HU"):
            return f"CT values are not Hounsfield units (RescaleType {rescale_type}, e.g. a perfusion map)"
    return None


def _spacing(ds: Any, ndim: int) -> tuple[float, ...] | None:
    candidates = (_functional(ds, "PixelMeasuresSequence", "PixelSpacing"), ds.get("ImagerPixelSpacing"))
    pixel = next((c for c in candidates if c and min(float(v) for v in c) > 0), None)  # RG1 says 0.000
    if pixel is None:
        return None
    rows_cols = (float(pixel[0]), float(pixel[1]))
    if ndim == 2:
        return rows_cols
    between = ds.get("SpacingBetweenSlices") or _functional(ds, "PixelMeasuresSequence", "SliceThickness")
    return (float(between) if between else math.nan, *rows_cols)


def scan_dicom() -> tuple[list[Volume], list[Skipped]]:
    """Every decodable grayscale CT/MR/CR/DX/US image in pydicom's test files, pydicom-data and deid-data, and the
    skipped files (scanned once per process, see :func:`load`).

    Subject is ``dicom:<PatientID>``, else ``dicom:study:<StudyInstanceUID>``, else ``dicom:file:<path>``. Copies
    of one SOPInstanceUID (other transfer syntaxes of the same image) are kept once, uncompressed first. Lossy
    copies, thumbnails under 32 pixels and files whose transfer syntax has no decoder here are skipped.
    ``meta["decoder"]`` is ``"pydicom"``, or ``"imagecodecs"`` for JPEG Lossless files pydicom cannot decode here.
    """
    volumes, skipped = _scan_dicom_once()
    return _copies(volumes), list(skipped)


@functools.cache
def _scan_dicom_once() -> tuple[tuple[Volume, ...], tuple[Skipped, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the test files are malformed on purpose
        volumes, skipped = _scan_dicom()
    return _frozen(volumes), tuple(skipped)


def _scan_dicom() -> tuple[list[Volume], list[Skipped]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    lossy = lossy_syntaxes()
    lossless_jpeg = _lossless_jpeg_syntaxes()
    skipped: list[Skipped] = []
    candidates: list[tuple[str, Path, Any]] = []
    for prefix, root in _dicom_roots():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            name = f"{prefix}:{relative.removesuffix('.dcm')}"
            try:
                ds = pydicom.dcmread(path, defer_size="64 KB")
            except InvalidDicomError:
                skipped.append(Skipped(name, "not a DICOM file"))
                continue
            except Exception as exc:
                skipped.append(Skipped(name, f"unreadable: {type(exc).__name__}: {exc}"))
                continue
            reason = _reject(ds, lossy)
            if reason:
                skipped.append(Skipped(name, reason))
            else:
                candidates.append((name, path, ds))

    candidates.sort(key=lambda c: (c[2].file_meta.TransferSyntaxUID.is_compressed, c[0]))
    volumes: list[Volume] = []
    kept: dict[str, str] = {}  # SOPInstanceUID or pixel digest -> source kept
    for name, path, ds in candidates:
        uid = str(ds.get("SOPInstanceUID", path))
        if uid in kept:
            skipped.append(Skipped(name, f"duplicate of {kept[uid]} (same SOPInstanceUID)"))
            continue
        syntax = ds.file_meta.TransferSyntaxUID
        decoder = get_decoder(syntax) if syntax.is_compressed else None
        via = "pydicom" if decoder is None or decoder.is_available else "imagecodecs"
        if via == "imagecodecs" and syntax not in lossless_jpeg:
            missing = "; ".join(decoder.missing_dependencies)
            skipped.append(Skipped(name, f"no decoder for {syntax.name} installed ({missing})"))
            continue
        try:
            arr = ds.pixel_array if via == "pydicom" else _decode_lossless_jpeg(ds)
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            skipped.append(Skipped(name, f"decoding failed ({syntax.name}): {type(exc).__name__}: {first_line}"))
            continue
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()
        if digest in kept:
            skipped.append(Skipped(name, f"duplicate of {kept[digest]} (identical pixels)"))
            continue
        kept[uid] = kept[digest] = name
        if min(arr.shape[-2:]) < _MIN_SIDE:
            skipped.append(Skipped(name, f"thumbnail {arr.shape[-2]}×{arr.shape[-1]} (< {_MIN_SIDE} pixels a side)"))
            continue
        volumes.append(_dicom_volume(name, path, ds, arr, via))
    return volumes, skipped


def _dicom_volume(name: str, path: Path, ds: Any, arr: np.ndarray, decoder: str) -> Volume:
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    modality = ds.Modality
    meta: dict[str, Any] = {
        "path": str(path),
        "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
        "decoder": decoder,
    }
    slope = _functional(ds, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(ds, "PixelValueTransformationSequence", "RescaleIntercept")
    window = None
    if modality == "CT":
        arr = arr.astype(np.float32) * np.float32(slope if slope is not None else 1.0)
        arr += np.float32(intercept if intercept is not None else 0.0)
        center = _functional(ds, "FrameVOILUTSequence", "WindowCenter")
        width = _functional(ds, "FrameVOILUTSequence", "WindowWidth")
        window = (_first(center), _first(width)) if center is not None and width is not None else SOFT_TISSUE_WINDOW
    elif slope is not None or intercept is not None:
        meta["rescale"] = (float(slope if slope is not None else 1.0), float(intercept or 0.0))
    if ds.get("PatientID"):
        subject = f"dicom:{ds.PatientID}"
    elif ds.get("StudyInstanceUID"):
        subject = f"dicom:study:{ds.StudyInstanceUID}"
    else:
        subject = f"dicom:file:{name}"
    return Volume(
        source=name,
        subject=subject,
        modality=modality,
        pixels=arr,
        photometric=ds.PhotometricInterpretation,
        spacing=_spacing(ds, arr.ndim),
        window=window,
        meta=meta,
        single_instance=True,
    )


def load_pydicom() -> list[Volume]:
    """Grayscale CT (HU), MR, CR, DX and US images packaged with pydicom, pydicom-data and deid-data that pydicom
    decodes here (:func:`scan_dicom`)."""
    return [v for v in scan_dicom()[0] if v.meta["decoder"] == "pydicom"]


def load_dicom_jpeg_lossless() -> list[Volume]:
    """The JPEG Lossless images of the same packages, decoded with imagecodecs (no pydicom decoder here)."""
    return [v for v in scan_dicom()[0] if v.meta["decoder"] == "imagecodecs"]


# ---------------------------------------------------------------------------------------------------------- NRRD

_NRRD_TYPES = {
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int16): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int32): ("int", "signed int", "int32", "int32_t"),
    np.dtype(np.uint32): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype(np.int64): ("longlong", "long long", "long long int", "signed long long", "int64", "int64_t"),
    np.dtype(np.uint64): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype(np.float32): ("float",),
    np.dtype(np.float64): ("double",),
}
_NRRD_DTYPE = {name: dtype for dtype, names in _NRRD_TYPES.items() for name in names}


def read_nrrd(data: bytes | str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """Read an attached-data NRRD (raw or gzip encoding) into ``(array, header)``.

    The array has the header's ``sizes`` reversed (NRRD's fastest axis last), e.g. ``(z, y, x)`` for a volume.
    Detached data, other encodings and skips raise ValueError.
    """
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    if not data.startswith(b"NRRD000"):
        raise ValueError("not an NRRD file (no NRRD000x magic)")
    end = data.find(b"\n\n")
    if end < 0:
        raise ValueError("NRRD header has no terminating blank line")
    header: dict[str, str] = {}
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        if not line or line.startswith("#") or ":=" in line:
            continue  # comments and key/value pairs carry no geometry
        key, sep, value = line.partition(": ")
        if not sep:
            raise ValueError(f"malformed NRRD header line {line!r}")
        header[key.strip()] = value.strip()
    for key in ("data file", "datafile"):
        if key in header:
            raise ValueError("detached NRRD data files are not supported")
    for key in ("line skip", "lineskip", "byte skip", "byteskip"):
        if header.get(key, "0") != "0":
            raise ValueError(f"NRRD {key} is not supported")
    kind = header.get("type")
    if kind not in _NRRD_DTYPE:
        raise ValueError(f"unsupported NRRD type {kind!r}")
    encoding = header.get("encoding")
    payload = data[end + 2 :]
    if encoding in ("gzip", "gz"):
        payload = gzip.decompress(payload)
    elif encoding != "raw":
        raise ValueError(f"unsupported NRRD encoding {encoding!r} (raw and gzip are)")
    dtype = _NRRD_DTYPE[kind]
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if header.get("endian", "little") == "little" else ">")
    sizes = [int(s) for s in header["sizes"].split()]
    if len(sizes) != int(header.get("dimension", len(sizes))):
        raise ValueError("NRRD sizes do not match its dimension")
    count = math.prod(sizes)
    if len(payload) != count * dtype.itemsize:
        raise ValueError(f"NRRD data holds {len(payload)} bytes, header sizes {sizes} need {count * dtype.itemsize}")
    array = np.frombuffer(payload, dtype=dtype).reshape(sizes[::-1])
    return array.astype(dtype.newbyteorder("="), copy=True), header


def nrrd_spacing(header: dict[str, str]) -> tuple[float, ...] | None:
    """Spacing (mm) per array axis of :func:`read_nrrd`'s array, from ``space directions`` or ``spacings``."""
    if "space directions" in header:
        vectors = [v for v in header["space directions"].split() if v != "none"]
        lengths = [math.hypot(*(float(x) for x in v.strip("()").split(","))) for v in vectors]
        return tuple(lengths[::-1])
    if "spacings" in header:
        return tuple(float(s) for s in header["spacings"].split()[::-1])
    return None


# ------------------------------------------------------------------------------------ archives of scripts/fetch-data


def _fetched(path: Path | str, what: str) -> Path:
    """``path`` if it is a file, else FileNotFoundError naming the set-up step that fetches it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing: run scripts/fetch-data (set-up step)")
    return path


# --------------------------------------------------------------------------------------------------- pyradiomics

_PYRADIOMICS_CASES = {"brain1": "MR", "brain2": "MR", "breast1": "MR", "lung1": "CT", "lung2": "CT"}


def load_pyradiomics(archive: Path | None = None) -> list[Volume]:
    """pyradiomics 3.0.1 test cases (brain MR, breast MR, lung CT) with tumour masks, straight from the sdist."""
    archive = _fetched(archive or PYRADIOMICS_ARCHIVE, "pyradiomics archive")
    volumes = []
    with tarfile.open(archive, "r:gz") as tar:

        def member(name: str) -> tuple[np.ndarray, dict[str, str]]:
            handle = tar.extractfile(f"pyradiomics-3.0.1/data/{name}.nrrd")
            if handle is None:
                raise ValueError(f"{name}.nrrd is not a regular file in {archive}")
            return read_nrrd(handle.read())

        for case, modality in _PYRADIOMICS_CASES.items():
            image, header = member(f"{case}_image")
            label, label_header = member(f"{case}_label")
            for key in ("sizes", "space directions", "space origin"):
                if header.get(key) != label_header.get(key):
                    raise ValueError(f"pyradiomics {case}: image and label disagree on {key!r}")
            ct = modality == "CT"
            volumes.append(
                Volume(
                    source=f"pyradiomics:{case}",
                    subject=f"pyradiomics:{case}",
                    modality=modality,
                    pixels=image.astype(np.float32) if ct else image,
                    spacing=nrrd_spacing(header),
                    mask=label != 0,
                    window=LUNG_WINDOW if ct else None,
                    meta={"space": header.get("space"), "origin": header.get("space origin")},
                )
            )
    return volumes


# ---------------------------------------------------------------------------------- NIfTI: nilearn, nibabel, dipy


def _nifti_volume(image: Any, source: str, subject: str, *, frame: int = 0) -> Volume:
    """An MR NIfTI image as ``(z, y, x)`` float32 axial slices of its closest RAS+ orientation, anterior at the top
    (scaling applied; ``frame`` of a 4-D image)."""
    import nibabel as nib

    if len(image.shape) == 4:
        image = image.slicer[..., frame]
    image = nib.as_closest_canonical(image)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, :])
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])[::-1]
    return Volume(source=source, subject=subject, modality="MR", pixels=pixels, spacing=spacing)


def _nifti_member(archive: zipfile.ZipFile, name: str) -> Any:
    """A gzipped NIfTI file inside a wheel, as a nibabel image (read in memory)."""
    import nibabel as nib

    return nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(name)))


def load_mni152() -> list[Volume]:
    """nilearn's MNI152 T1 template, 1 mm, as ``(z, y, x)`` float32 in [0, 1]: axial slices, anterior at the top."""
    from nilearn.datasets import load_mni152_template

    return [_nifti_volume(load_mni152_template(resolution=1), "mni152", "mni152")]


def load_nibabel() -> list[Volume]:
    """nibabel's packaged real fMRI volume (``tests/data/example4d.nii.gz``: EPI, 2 × 2 × 2.2 mm; its first frame)."""
    import nibabel as nib

    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    return [_nifti_volume(nib.load(path), "nibabel:example4d", "nibabel:example4d")]


def load_dipy(wheel: Path | str | None = None) -> list[Volume]:
    """dipy 1.12.1's packaged brain MR, from its wheel: a 10-slice diffusion b=0 volume (2 mm) and a T1 coronal slice.

    One subject, ``dipy``: dipy does not say whom the two come from, so they are never split apart.
    """
    path = _fetched(wheel or DIPY_WHEEL, "dipy wheel")
    with zipfile.ZipFile(path) as archive:
        b0 = _nifti_member(archive, "dipy/data/files/S0_10slices.nii.gz")
        t1 = np.load(io.BytesIO(archive.read("dipy/data/files/t1_coronal_slice.npy")))
    return [
        _nifti_volume(b0, "dipy:S0_10slices", "dipy"),
        Volume(source="dipy:t1_coronal_slice", subject="dipy", modality="MR", pixels=t1.astype(np.float32)),
    ]


def load_pydeface(wheel: Path | str | None = None) -> list[Volume]:
    """pydeface 2.1.0's T1-weighted head template ``mean_reg2mean`` (a mean of registered heads, so little noise)."""
    path = _fetched(wheel or PYDEFACE_WHEEL, "pydeface wheel")
    with zipfile.ZipFile(path) as archive:
        image = _nifti_member(archive, "pydeface/data/mean_reg2mean.nii.gz")
    return [_nifti_volume(image, "pydeface:mean_reg2mean", "pydeface:mean_reg2mean")]


# -------------------------------------------------------------------------------------------------------- skimage


def load_retina() -> list[Volume]:
    """scikit-image's RGB fundus photograph (uint8)."""
    from skimage import data

    return [
        Volume(
            source="skimage:retina",
            subject="skimage:retina",
            modality="fundus",
            pixels=data.retina(),
            photometric="RGB",
        )
    ]


# -------------------------------------------------------------------------------------------------------- slices


def foreground_threshold(volume: Volume) -> float:
    """The display value above which a pixel counts as body (foreground) for :func:`slices`."""
    if volume.modality == "CT":
        return -500.0  # HU: soft tissue and bone, not air or lung
    data = display_pixels(volume)
    if volume.is_rgb:
        data = data.mean(axis=-1)
    lo, hi = float(data.min()), float(np.percentile(data, 99))
    return lo + 0.1 * (hi - lo)


def slices(volume: Volume, axis: int = 0, min_foreground: float = 0.1) -> list[Slice]:
    """2-D slices along ``axis`` whose foreground fraction is at least ``min_foreground``.

    Foreground is above -500 HU for CT, else above 10 % of the way from the minimum to the 99th percentile of the
    display-oriented volume. A 2-D image (or RGB image) is one slice (``axis`` ignored).
    """
    threshold = foreground_threshold(volume)
    display = display_pixels(volume)
    if volume.is_rgb:
        display = display.mean(axis=-1)
    planar = len(volume.spatial_shape) == 2
    count = 1 if planar else volume.pixels.shape[axis]
    spacing = volume.spacing
    if spacing is not None and not planar:
        spacing = tuple(s for i, s in enumerate(spacing) if i != axis)

    def take(array: np.ndarray, index: int) -> np.ndarray:
        return array if planar else np.take(array, index, axis=axis)

    out = []
    for index in range(count):
        if float(np.mean(take(display, index) > threshold)) < min_foreground:
            continue
        mask = None if volume.mask is None else take(volume.mask, index)
        out.append(
            Slice(
                source=volume.source,
                subject=volume.subject,
                modality=volume.modality,
                index=index,
                axis=axis,
                image=take(volume.pixels, index),
                photometric=volume.photometric,
                mask=mask,
                spacing=spacing,
                window=volume.window,
            )
        )
    return out


# -------------------------------------------------------------------------------------------------------- splits

#: The fixed held-out test subjects: always test, never train or validation, whatever the seed (docs/training.md).
#: Since 2026-11: one DICOM CT (pancreas) and MR (abdomen, very clean), a masked CT (lung) and MR (brain) from
#: pyradiomics. Added 2026-12: two low-noise references from sources not used before, so that PSNR there measures
#: the model rather than the reference's own noise: a high-dose neck CT (442 mAs, JPEG Lossless, decoded with
#: imagecodecs) and pydeface's averaged T1 head template.
HELD_OUT_TEST_SUBJECTS: frozenset[str] = frozenset(
    {
        "dicom:PANCREAS_0001",
        "dicom:021234567",
        "pyradiomics:lung2",
        "pyradiomics:brain2",
        "dicom:b2cbe507f250",
        "pydeface:mean_reg2mean",
    }
)


class _HasSubject(Protocol):
    subject: str


T = TypeVar("T", bound=_HasSubject)


def held_out_test(records: Iterable[T]) -> list[T]:
    """The records of :data:`HELD_OUT_TEST_SUBJECTS` (no seed: the same subjects every time)."""
    return [r for r in records if r.subject in HELD_OUT_TEST_SUBJECTS]


def split(
    records: Iterable[T],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    *,
    cover: Callable[[T], str] | None = None,
) -> dict[str, list[T]]:
    """Split by subject (never by slice) into ``train``/``val``/``test``, deterministically for ``seed``.

    ``test`` always holds the :func:`held_out_test` subjects, topped up from the shuffled others to reach its
    fraction of subjects; ``val`` and ``train`` share the rest. Fractions are of subjects, not records.
    ``cover`` (e.g. ``lambda v: v.modality``) makes ``val`` hold every key that has two or more subjects outside
    ``test``: where the seeded draw gave ``val`` none of a key, the first ``train`` subject of that key (in the
    seeded order) moves to ``val`` and, if ``val`` holds two or more of another key, the last of those moves to
    ``train``. A split that already covers every key is left as it is. A subject's key is its records' keys joined
    by "+".
    """
    records = list(records)
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    subjects = sorted({r.subject for r in records})
    fixed = [s for s in subjects if s in HELD_OUT_TEST_SUBJECTS]
    rest = [s for s in subjects if s not in HELD_OUT_TEST_SUBJECTS]
    rest = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    n = len(subjects)
    n_test = min(len(rest), max(0, round(fractions[2] * n) - len(fixed)))
    n_val = min(len(rest) - n_test, round(fractions[1] * n))
    if fractions[1] > 0 and n_val == 0 and len(rest) - n_test >= 2:
        n_val = 1
    val, train = rest[n_test : n_test + n_val], rest[n_test + n_val :]
    if cover is not None and val:
        keys: dict[str, set[str]] = {}
        for record in records:
            keys.setdefault(record.subject, set()).add(cover(record))
        _cover({s: "+".join(sorted(k)) for s, k in keys.items()}, val, train)
    assignment = {s: "test" for s in fixed + rest[:n_test]}
    assignment.update({s: "val" for s in val})
    assignment.update({s: "train" for s in train})
    out: dict[str, list[T]] = {"train": [], "val": [], "test": []}
    for record in records:
        out[assignment[record.subject]].append(record)
    check_disjoint(out)
    return out


def _cover(key: dict[str, str], val: list[str], train: list[str]) -> None:
    """Move subjects between ``val`` and ``train`` (in place) so that ``val`` holds every key of :func:`split`'s
    ``cover`` rule."""
    for wanted in sorted({key[s] for s in val + train}):
        candidates = [s for s in train if key[s] == wanted]
        if any(key[s] == wanted for s in val) or len(candidates) < 2:
            continue
        counts = {k: sum(key[s] == k for s in val) for k in {key[s] for s in val}}
        spare = [s for s in val if counts[key[s]] >= 2]
        val.append(candidates[0])
        train.remove(candidates[0])
        if spare:
            val.remove(spare[-1])
            train.append(spare[-1])


def check_disjoint(splits: dict[str, list[Any]]) -> None:
    """Raise ValueError if any subject appears in two splits."""
    owner: dict[str, str] = {}
    for name, items in splits.items():
        for item in items:
            previous = owner.setdefault(item.subject, name)
            if previous != name:
                raise ValueError(f"subject {item.subject!r} is in both {previous!r} and {name!r}")


# ------------------------------------------------------------------------------------------------------ registry

DATASETS: dict[str, Callable[[], list[Volume]]] = {
    "pydicom": load_pydicom,
    "dicom-jpeg-lossless": load_dicom_jpeg_lossless,
    "mni152": load_mni152,
    "pyradiomics": load_pyradiomics,
    "nibabel": load_nibabel,
    "dipy": load_dipy,
    "pydeface": load_pydeface,
    "retina": load_retina,
}
#: Every real CT / MR / X-ray dataset: what training and the benchmarks should load (all but the RGB photograph).
DEFAULT_DATASETS: tuple[str, ...] = tuple(name for name in DATASETS if name != "retina")


def load(name: str) -> list[Volume]:
    """Load a dataset of :data:`DATASETS` by name, once per process: each call returns new :class:`Volume` objects
    (own ``meta``) around the same read-only arrays."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return _copies(_load_once(name))


@functools.cache
def _load_once(name: str) -> tuple[Volume, ...]:
    return _frozen(DATASETS[name]())


def _frozen(volumes: Iterable[Volume]) -> tuple[Volume, ...]:
    """The volumes with their arrays made read-only (they are shared by every caller of the cache)."""
    volumes = tuple(volumes)
    for volume in volumes:
        volume.pixels.flags.writeable = False
        if volume.mask is not None:
            volume.mask.flags.writeable = False
    return volumes


def _copies(volumes: Iterable[Volume]) -> list[Volume]:
    return [dataclasses.replace(v, meta=dict(v.meta)) for v in volumes]
