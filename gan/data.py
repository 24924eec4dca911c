"""Real medical images shipped in packages, as volumes with subject ids, and leakage-free splits by subject.

Datasets (see :data:`DATASETS`; nothing downloads at run time):

- ``pydicom``: grayscale CT, MR, CR and US files from pydicom's test files and pydicom-data that decode here.
  What is left out, and why, comes from :func:`scan_dicom`.
- ``mni152``: nilearn's MNI152 T1 template at 1 mm (one subject).
- ``pyradiomics``: brain MR, breast MR and chest CT volumes with tumour masks, read from the pyradiomics 3.0.1
  source archive that ``scripts/fetch-data`` puts in ``var/data/`` (set-up time).
- ``retina``: scikit-image's RGB fundus photograph (one subject).

Conventions of :class:`Volume`:

- ``pixels`` is 2-D ``(rows, cols)``, 3-D ``(slices, rows, cols)`` (frames for multi-frame DICOM, axial slices for
  NRRD and NIfTI), or ``(rows, cols, 3)`` for RGB.
- CT is always **float32 Hounsfield units** (RescaleSlope/Intercept applied). Everything else keeps its native
  dtype: 12/16-bit MR and CR stay integers (an MR rescale, when present, is kept in ``meta``, not applied).
- ``spacing`` is millimetres per spatial axis of ``pixels`` (NaN where unknown), or None when unknown.
- ``photometric`` is stored as acquired; :func:`display_pixels` gives display-oriented data (MONOCHROME1 inverted).
- ``single_instance`` is True for DICOM: ``pixels`` are one instance (all its frames), the unit of the intensity
  normalisation (:mod:`gan.intensity`); the slices of a NIfTI or NRRD volume are normalised one by one.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tarfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from gan.intensity import SOFT_TISSUE_WINDOW

__all__ = [
    "DATASETS",
    "HELD_OUT_TEST_SUBJECTS",
    "PYRADIOMICS_ARCHIVE",
    "ImageRecord",
    "Skipped",
    "Slice",
    "Volume",
    "check_disjoint",
    "display_pixels",
    "held_out_test",
    "load",
    "load_mni152",
    "load_pydicom",
    "load_pyradiomics",
    "load_retina",
    "read_nrrd",
    "scan_dicom",
    "slices",
    "split",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where ``scripts/fetch-data`` puts the pyradiomics source archive (``AEGLE_DATA_DIR`` overrides ``var/data``).
PYRADIOMICS_ARCHIVE = Path(os.environ.get("AEGLE_DATA_DIR", REPO_ROOT / "var" / "data")) / "pyradiomics-3.0.1.tar.gz"

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

_MODALITIES = {"CT", "MR", "CR", "US"}
_MIN_SIDE = 32  # dicomdirtests holds 16 × 16 thumbnails: useless as images


def _dicom_roots() -> list[tuple[str, Path]]:
    import data_store  # pydicom-data, a dependency of the data extra
    import pydicom

    return [
        ("pydicom", Path(pydicom.__file__).parent / "data" / "test_files"),
        ("pydicom-data", Path(data_store.__file__).parent / "data"),
    ]


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
    """Every decodable grayscale CT/MR/CR/US image in pydicom's test files and pydicom-data, and the skipped files.

    Subject is ``dicom:<PatientID>``, else ``dicom:study:<StudyInstanceUID>``, else ``dicom:file:<path>``. Copies
    of one SOPInstanceUID (other transfer syntaxes of the same image) are kept once, uncompressed first. Lossy
    copies, thumbnails under 32 pixels and files whose transfer syntax has no decoder here are skipped.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the test files are malformed on purpose
        return _scan_dicom()


def _scan_dicom() -> tuple[list[Volume], list[Skipped]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    lossy = lossy_syntaxes()
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
        if decoder is not None and not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            skipped.append(Skipped(name, f"no decoder for {syntax.name} installed ({missing})"))
            continue
        try:
            arr = ds.pixel_array
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
        volumes.append(_dicom_volume(name, path, ds, arr))
    return volumes, skipped


def _dicom_volume(name: str, path: Path, ds: Any, arr: np.ndarray) -> Volume:
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    modality = ds.Modality
    meta: dict[str, Any] = {"path": str(path), "transfer_syntax": ds.file_meta.TransferSyntaxUID.name}
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
    """Grayscale CT (HU), MR, CR and US images packaged with pydicom and pydicom-data (see :func:`scan_dicom`)."""
    return scan_dicom()[0]


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


# --------------------------------------------------------------------------------------------------- pyradiomics

_PYRADIOMICS_CASES = {"brain1": "MR", "brain2": "MR", "breast1": "MR", "lung1": "CT", "lung2": "CT"}


def load_pyradiomics(archive: Path | None = None) -> list[Volume]:
    """pyradiomics 3.0.1 test cases (brain MR, breast MR, lung CT) with tumour masks, straight from the sdist."""
    archive = Path(archive or PYRADIOMICS_ARCHIVE)
    if not archive.is_file():
        raise FileNotFoundError(f"pyradiomics archive {archive} is missing: run scripts/fetch-data (set-up step)")
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


# ------------------------------------------------------------------------------------------- nilearn, skimage


def load_mni152() -> list[Volume]:
    """nilearn's MNI152 T1 template, 1 mm, as ``(z, y, x)`` float32 in [0, 1]: axial slices, anterior at the top."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, :])
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])[::-1]
    return [Volume(source="mni152", subject="mni152", modality="MR", pixels=pixels, spacing=spacing)]


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

#: The fixed held-out test subjects: always test, never train or validation, whatever the seed.
#: One DICOM CT, one DICOM MR, and one masked CT and MR each from pyradiomics.
HELD_OUT_TEST_SUBJECTS: frozenset[str] = frozenset(
    {"dicom:PANCREAS_0001", "dicom:021234567", "pyradiomics:lung2", "pyradiomics:brain2"}
)


class _HasSubject(Protocol):
    subject: str


T = TypeVar("T", bound=_HasSubject)


def held_out_test(records: Iterable[T]) -> list[T]:
    """The records of :data:`HELD_OUT_TEST_SUBJECTS` (no seed: the same subjects every time)."""
    return [r for r in records if r.subject in HELD_OUT_TEST_SUBJECTS]


def split(
    records: Iterable[T], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[T]]:
    """Split by subject (never by slice) into ``train``/``val``/``test``, deterministically for ``seed``.

    ``test`` always holds the :func:`held_out_test` subjects, topped up from the shuffled others to reach its
    fraction of subjects; ``val`` and ``train`` share the rest. Fractions are of subjects, not records.
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
    assignment = {s: "test" for s in fixed + rest[:n_test]}
    assignment.update({s: "val" for s in rest[n_test : n_test + n_val]})
    assignment.update({s: "train" for s in rest[n_test + n_val :]})
    out: dict[str, list[T]] = {"train": [], "val": [], "test": []}
    for record in records:
        out[assignment[record.subject]].append(record)
    check_disjoint(out)
    return out


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
    "mni152": load_mni152,
    "pyradiomics": load_pyradiomics,
    "retina": load_retina,
}


def load(name: str) -> list[Volume]:
    """Load a dataset of :data:`DATASETS` by name."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
    return loader()
