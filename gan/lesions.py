"""Balanced lesion / no-lesion patches from the pyradiomics volumes with tumour masks (real MR and CT).

Subjects and split: the pyradiomics 3.0.1 archive holds only 5 subjects (brain1, brain2, breast1 MR; lung1, lung2
CT). :func:`gan.data.split` with seed 0 assigns them by subject as

- ``train``: pyradiomics:brain1 (MR), pyradiomics:breast1 (MR)
- ``val``:   pyradiomics:lung1 (CT)
- ``test``:  pyradiomics:brain2 (MR), pyradiomics:lung2 (CT) (the fixed held-out subjects of :mod:`gan.data`)

so every split holds lesions, but only 1–2 subjects: figures measured on one split say little about other
subjects or scanners (report them with confidence intervals, and remember the validation split is CT only while
training is MR only).

Patches (axial slices, axis 0): a **lesion** patch is centred on a tumour-mask voxel (drawn uniformly among the
subject's mask voxels, without replacement while there are enough: breast1 has only 143, so its 100 lesion
patches overlap heavily); a **no-lesion** patch holds no mask pixel at all and at least 50 % body
(:func:`body_mask`: :mod:`gan.data`'s per-volume foreground threshold with holes filled, so lung parenchyma
counts as body), its slice drawn uniformly among the slices that have such a position, then the centre
uniformly. No-lesion patches therefore sample the whole body (in lung CT mostly soft tissue and bone, brighter
than the lung around the tumours): a classifier can lean on intensity; that is the data, not hidden here.
Slices are padded symmetrically (mirror) by ``size // 2`` so patches may reach past the image border (breast1 is
only 45 pixels wide); the mask is mirrored the same way, so "no mask pixel in the patch" also covers mirrored
tumour. Intensities are :func:`gan.intensity.normalise_volume` (CT: the lung window of the volume; MR:
``(x − min) / (p99.5 − min)`` per axial slice, the unit a single-frame instance would have), in [0, 1].
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gan import data as gdata
from gan.intensity import normalise_volume

__all__ = ["MIN_BODY", "SPLITS", "LesionPatches", "body_mask", "lesion_patches"]

SPLITS = ("train", "val", "test")
#: Minimum fraction of body pixels (:func:`body_mask`) in a no-lesion patch (so it is the body, not background).
MIN_BODY = 0.5


@dataclass(frozen=True)
class LesionPatches:
    """Patches of one split. ``centres`` (N×3 int64: slice, row, column in the subject's volume) is extra."""

    images: np.ndarray  # N×size×size float32 in [0, 1]
    labels: np.ndarray  # N int64: 1 = lesion (patch centre inside the tumour mask), 0 = no mask pixel in the patch
    subjects: list[str]  # subject of each patch (pyradiomics:brain1, ...)
    modalities: list[str]  # "MR" | "CT"
    centres: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def lesion_patches(
    split: str,
    size: int = 64,
    per_subject: int = 200,
    seed: int = 0,
    volumes: Sequence[gdata.Volume] | None = None,
) -> LesionPatches:
    """Balanced lesion / no-lesion patches from the pyradiomics volumes (tumour masks) of one subject-level split
    ("train" | "val" | "test", gan.data.split(seed=0) over the pyradiomics subjects), from axial slices (axis 0).

    ``per_subject // 2`` lesion and as many no-lesion patches per subject, shuffled; the same ``seed`` gives the
    same patches (each subject draws from its own generator, so adding a subject changes no other's patches).
    ``volumes`` defaults to :func:`gan.data.load_pyradiomics`; volumes without a mask are ignored.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8, got {size}")
    if per_subject < 2:
        raise ValueError(f"per_subject must be >= 2 (half lesion, half no lesion), got {per_subject}")
    if volumes is None:
        volumes = gdata.load_pyradiomics()
    masked = [v for v in volumes if v.mask is not None and v.pixels.ndim == 3 and not v.is_rgb]
    chosen = sorted(gdata.split(masked, seed=0)[split], key=lambda v: v.subject)
    if not chosen:
        raise ValueError(f"no masked volume falls in the {split!r} split")
    half = per_subject // 2
    images, labels, subjects, modalities, centres = [], [], [], [], []
    for volume in chosen:
        rng = np.random.default_rng([seed, zlib.crc32(volume.subject.encode())])
        patches, sites = _subject_patches(volume, size, half, rng)
        images.append(patches)
        centres.append(sites)
        labels.append(np.repeat(np.array([1, 0], np.int64), half))
        subjects += [volume.subject] * (2 * half)
        modalities += [volume.modality] * (2 * half)
    order = np.random.default_rng(seed).permutation(len(subjects))
    return LesionPatches(
        images=np.concatenate(images)[order],
        labels=np.concatenate(labels)[order],
        subjects=[subjects[i] for i in order],
        modalities=[modalities[i] for i in order],
        centres=np.concatenate(centres)[order],
    )


def _subject_patches(
    volume: gdata.Volume, size: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` lesion then ``n`` no-lesion patches of one volume, and their (slice, row, column) centres."""
    assert volume.mask is not None
    half = size // 2
    pad = ((0, 0), (half, half), (half, half))
    image = np.pad(normalise_volume(volume), pad, mode="symmetric")
    mask = np.pad(volume.mask, pad, mode="symmetric")
    body = np.pad(body_mask(volume), pad, mode="symmetric")

    lesion = np.argwhere(volume.mask)
    if len(lesion) == 0:
        raise ValueError(f"{volume.subject}: the tumour mask is empty")
    pick = rng.choice(len(lesion), n, replace=len(lesion) < n)
    sites = [tuple(int(x) for x in lesion[i]) for i in pick]

    rows, cols = volume.mask.shape[1:]
    valid = {}
    for z in range(volume.mask.shape[0]):
        ok = _window_sums(mask[z], size)[:rows, :cols] == 0
        ok &= _window_sums(body[z], size)[:rows, :cols] >= MIN_BODY * size * size
        if ok.any():
            valid[z] = np.argwhere(ok)
    if not valid:
        raise ValueError(f"{volume.subject}: no {size}×{size} patch without tumour and at least {MIN_BODY:.0%} body")
    slice_ids = sorted(valid)
    for z in rng.choice(slice_ids, n):
        r, c = valid[int(z)][rng.integers(len(valid[int(z)]))]
        sites.append((int(z), int(r), int(c)))

    # In padded coordinates the window of the original pixel (r, c) starts at (r, c): it is centred on it.
    patches = np.stack([image[z, r : r + size, c : c + size] for z, r, c in sites]).astype(np.float32)
    return patches, np.array(sites, np.int64)


def body_mask(volume: gdata.Volume) -> np.ndarray:
    """Per-slice body mask: :mod:`gan.data`'s foreground threshold, holes filled (so lungs count as body)."""
    from scipy.ndimage import binary_fill_holes

    above = gdata.display_pixels(volume) > gdata.foreground_threshold(volume)  # the loaders' own definition
    return np.stack([binary_fill_holes(s) for s in above])


def _window_sums(array: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``array`` over every ``size``×``size`` window, indexed by the window's top-left corner."""
    integral = np.zeros((array.shape[0] + 1, array.shape[1] + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(array, axis=0, dtype=np.int64), axis=1)
    return integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
