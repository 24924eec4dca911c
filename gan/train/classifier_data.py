"""What the SE-CNN classifiers learn from: degraded real windows for triage, real (and synthetic) lesion patches.

* ``triage`` — real CT/MR slices of ``pydicom``, ``mni152`` and ``pyradiomics`` split BY SUBJECT with
  :func:`gan.train.data.training_splits` (train/val); each sample is a :data:`gan.triage.INPUT_SIDE`-pixel window
  degraded by :func:`sample_degradation` / :func:`apply_degradation` (the degradation is applied to the window plus
  an 8-pixel real margin, then the margin is cut). Training windows are random textured crops drawn fresh every
  step (subject uniform, then slice); val and test windows are the central window (:func:`gan.triage.center_window`,
  what :func:`gan.triage.preprocess` takes), a fixed set each.
* ``lesion`` — lesion vs no lesion on the real tumour-masked pyradiomics patches (:func:`gan.lesions.lesion_patches`:
  train brain1 + breast1 MR, val lung1 CT, test brain2 MR + lung2 CT); with ``augment`` the training pool also
  gets hybrid-GAN synthetic patches (:func:`synthetic_lesion_patches`, every one marked synthetic and never used
  for validation or test). Random flips and 90° rotations for real and synthetic training patches alike.

**The simulated triage degradations** (what the classes mean; severities in :data:`SEVERITY`):

- ``noisy``: Gaussian noise (Rician for MR) with σ uniform in ``noise_sigma`` (fraction of the [0, 1] range);
- ``motion-blurred``: :func:`gan.degrade.params_from_context` with a motion level uniform in ``motion`` (m/s²,
  3–9 pixel blur at a random angle), plus breathing and cardiac blur for chest images;
- ``low-resolution``: a ×2 or ×4 block-mean acquisition interpolated back to the matrix (cubic spline): an image
  whose *effective* resolution is below its pixel grid.

Every degradation is applied independently with probability :data:`DEGRADATION_PROB`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gan import data as gdata
from gan import triage
from gan.degrade import DegradationParams, degrade, params_from_context
from gan.lesions import SPLITS, lesion_patches
from gan.train.data import PATCH_MARGIN, PreparedSlice, crop_patch, prepare_slices, training_splits

if TYPE_CHECKING:
    from gan.train.classifier import ClassifierConfig

__all__ = [
    "DEGRADATION_PROB",
    "SEVERITY",
    "TaskData",
    "TriageDegradation",
    "apply_degradation",
    "lesion_data",
    "sample_degradation",
    "synthetic_lesion_patches",
    "triage_data",
    "triage_test_windows",
]

#: Ranges the simulated degradations are drawn from (uniform; ``scales`` uniform over the tuple).
SEVERITY: dict[str, tuple[float, ...]] = {
    "noise_sigma": (0.02, 0.10),
    "motion": (2.5, 8.0),
    "respiratory_rate": (16.0, 35.0),
    "heart_rate": (75.0, 150.0),
    "scales": (2, 4),
}
#: Probability of each degradation, independently (so P(diagnostic) = 0.6³ ≈ 0.22).
DEGRADATION_PROB = 0.4


@dataclass
class TaskData:
    """Training sampler, fixed val set and fixed test set (``test_groups``: subject of each test sample)."""

    sample: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    test_groups: list[str]
    description: dict[str, Any]


# ------------------------------------------------------------------------------------------- triage degradations


@dataclass(frozen=True)
class TriageDegradation:
    """What to apply: ``noise_sigma`` 0 = none, ``motion`` None = still patient, ``scale`` 1 = full resolution."""

    noise_sigma: float = 0.0
    motion: Mapping[str, float] | None = None
    scale: int = 1


def sample_degradation(rng: np.random.Generator, prob: float = DEGRADATION_PROB) -> TriageDegradation:
    """Each degradation independently with probability ``prob``, severity uniform in :data:`SEVERITY`."""
    noisy, moving, low_res = (bool(v) for v in rng.uniform(size=3) < prob)
    sigma = float(rng.uniform(*SEVERITY["noise_sigma"])) if noisy else 0.0
    motion = None
    if moving:
        motion = {k: float(rng.uniform(*SEVERITY[k])) for k in ("motion", "respiratory_rate", "heart_rate")}
    scale = int(rng.choice(SEVERITY["scales"])) if low_res else 1
    return TriageDegradation(sigma, motion, scale)


def apply_degradation(
    image: np.ndarray, degradation: TriageDegradation, modality: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(degraded image, 4 targets)``: blur → block mean → cubic interpolation back → noise, clipped to [0, 1].

    ``image`` is 2-D in [0, 1] with sides divisible by the scale; ``modality`` as for
    :func:`gan.degrade.params_from_context` ("CT:CHEST", "MR"). Targets follow :data:`gan.triage.TRIAGE_CLASSES`;
    ``motion-blurred`` is 1 when a blur of at least 3 pixels was actually applied.
    """
    from scipy.ndimage import zoom

    # The triage classes were defined and calibrated with Gaussian noise (Rician for MR): named, so not drawn.
    noise_model = "rician" if modality.strip().upper().startswith("MR") else "gaussian"
    blur = params_from_context(degradation.motion, modality, rng, scale=degradation.scale, noise_model=noise_model)
    out = degrade(image, blur, (0.0, 1.0), rng)
    if degradation.scale > 1:
        out = zoom(out, degradation.scale, order=3, mode="grid-mirror", grid_mode=True)
    if degradation.noise_sigma > 0:
        noise = DegradationParams(noise_sigma=degradation.noise_sigma, noise_model=blur.noise_model)
        out = degrade(out, noise, (0.0, 1.0), rng)
    blurred = max(blur.motion_blur_px, blur.resp_blur_px, blur.cardiac_blur_px) > 1
    targets = np.array([0.0, degradation.noise_sigma > 0, blurred, degradation.scale > 1], np.float32)
    targets[0] = float(not targets[1:].any())
    return np.clip(out, 0.0, 1.0).astype(np.float32), targets


# ------------------------------------------------------------------------------------------------- triage data


def _triage_window(sl: PreparedSlice, rng: np.random.Generator, random_crop: bool) -> tuple[np.ndarray, np.ndarray]:
    size = triage.INPUT_SIDE + 2 * PATCH_MARGIN
    region = crop_patch(sl.image, size, rng) if random_crop else triage.center_window(sl.image, size)
    modality = f"{sl.modality}:{sl.region}"
    degraded, target = apply_degradation(region, sample_degradation(rng), modality, rng)
    return triage.center_window(degraded), target


def _triage_batch(
    slices: Sequence[PreparedSlice], rng: np.random.Generator, n: int, random_crop: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` degraded windows (subject uniform, then slice): N×1×S×S images, N×4 targets, subjects."""
    by_subject: dict[str, list[PreparedSlice]] = {}
    for sl in slices:
        by_subject.setdefault(sl.subject, []).append(sl)
    subjects = sorted(by_subject)
    images, targets, chosen = [], [], []
    for _ in range(n):
        subject = subjects[int(rng.integers(len(subjects)))]
        candidates = by_subject[subject]
        image, target = _triage_window(candidates[int(rng.integers(len(candidates)))], rng, random_crop)
        images.append(image)
        targets.append(target)
        chosen.append(subject)
    return np.stack(images)[:, None], np.stack(targets), chosen


def triage_test_windows(
    slices: Sequence[PreparedSlice], per_subject: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_subject`` central windows per subject (slices cycled in a shuffled order), each freshly degraded."""
    rng = np.random.default_rng(seed)
    images, targets, groups = [], [], []
    for subject in sorted({s.subject for s in slices}):
        own = [s for s in slices if s.subject == subject]
        order = rng.permutation(len(own))
        for i in range(per_subject):
            image, target = _triage_window(own[order[i % len(own)]], rng, random_crop=False)
            images.append(image)
            targets.append(target)
            groups.append(subject)
    return np.stack(images)[:, None], np.stack(targets), groups


def triage_data(config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None = None) -> TaskData:
    """Train/val slices from :func:`gan.train.data.training_splits`, test slices of the held-out subjects only."""
    if volumes is None:
        volumes = [v for name in config.datasets for v in gdata.load(name)]
    volumes = [v for v in volumes if v.modality in ("CT", "MR") and not v.is_rgb]
    parts = training_splits(volumes, seed=config.split_seed)
    train = prepare_slices(parts["train"])
    val = prepare_slices(parts["val"])
    test = prepare_slices(gdata.held_out_test(volumes), allow_held_out=True)
    if not (train and val and test):
        raise ValueError("triage needs usable CT/MR slices in the train, val and held-out test subjects")
    val_x, val_y, _ = _triage_batch(val, np.random.default_rng([config.seed, 1]), config.val_samples, False)
    test_x, test_y, groups = triage_test_windows(test, config.test_per_subject, seed=config.seed)
    return TaskData(
        sample=lambda rng, n: _triage_batch(train, rng, n, True)[:2],
        val=(val_x, val_y),
        test=(test_x, test_y),
        test_groups=groups,
        description={
            "datasets": list(config.datasets),
            "split": f"gan.train.data.training_splits (gan.data.split by subject, seed {config.split_seed}); test = "
            "gan.data.HELD_OUT_TEST_SUBJECTS only",
            "train_subjects": sorted({s.subject for s in train}),
            "val_subjects": sorted({s.subject for s in val}),
            "test_subjects": sorted(set(groups)),
            "samples": f"train: fresh random textured {triage.INPUT_SIDE}px windows every step; val: "
            f"{config.val_samples} central windows; test: {config.test_per_subject} central windows per subject",
            "degradation": f"gan.train.classifier_data: each of noise {SEVERITY['noise_sigma']}, motion "
            f"{SEVERITY['motion']} m/s2, block mean x{SEVERITY['scales']} + cubic back, with "
            f"p={DEGRADATION_PROB} independently",
        },
    )


# ------------------------------------------------------------------------------------------------- lesion data


def synthetic_lesion_patches(
    n: int, seed: int, size: int = 64, root: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` hybrid-GAN patches (half lesion) as N×size×size in [0, 1] and their labels.

    :func:`gan.synthesis.generate` gives N×3×64×64 in [−1, 1], each marked synthetic; converted here by the
    mean over channels and ``(x + 1) / 2``, resized (area / bilinear) when ``size`` is not 64.
    """
    from gan.synthesis import generate

    labels = np.arange(n, dtype=np.int64) % 2
    batch = generate(root, n, labels, seed)
    if not bool(np.all(np.asarray(batch.synthetic))):
        raise ValueError("hybrid-GAN batch has images not marked synthetic")
    images = torch.as_tensor(batch.images).detach().float()
    if images.ndim != 4 or images.shape[0] != n:
        raise ValueError(f"expected {n}×C×H×W synthetic images, got shape {tuple(images.shape)}")
    grey = ((images.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)
    if grey.shape[-1] != size or grey.shape[-2] != size:
        mode = "area" if grey.shape[-1] > size else "bilinear"
        grey = torch.nn.functional.interpolate(grey, size=(size, size), mode=mode)
    return grey[:, 0].numpy(), np.asarray(batch.labels, dtype=np.int64).reshape(n)


def _flip_rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and k·90° rotation per image (N×1×S×S)."""
    out = images.copy()
    for i in range(len(out)):
        if rng.uniform() < 0.5:
            out[i] = out[i][..., ::-1]
        out[i] = np.rot90(out[i], int(rng.integers(4)), axes=(-2, -1))
    return out


def lesion_data(config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None = None) -> TaskData:
    """Real pyradiomics patches per split (+ synthetic ones in training with ``config.augment``)."""
    if volumes is None:
        volumes = gdata.load_pyradiomics()
    parts = {s: lesion_patches(s, config.patch, config.per_subject, config.patch_seed, volumes) for s in SPLITS}
    held = set(parts["train"].subjects + parts["val"].subjects) & gdata.HELD_OUT_TEST_SUBJECTS
    if held:
        raise AssertionError(f"held-out test subjects in lesion train/val: {sorted(held)}")
    train_x = parts["train"].images[:, None]
    train_y = parts["train"].labels.astype(np.float32)[:, None]
    synthetic = 0
    if config.augment:
        fake_x, fake_y = synthetic_lesion_patches(config.synthetic, config.seed, config.patch, config.hybrid_root)
        train_x = np.concatenate([train_x, fake_x[:, None]])
        train_y = np.concatenate([train_y, fake_y.astype(np.float32)[:, None]])
        synthetic = len(fake_y)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(train_y), n)
        return _flip_rotate(train_x[idx], rng), train_y[idx]

    def as_xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        return parts[split].images[:, None], parts[split].labels.astype(np.float32)[:, None]

    return TaskData(
        sample=sample,
        val=as_xy("val"),
        test=as_xy("test"),
        test_groups=list(parts["test"].subjects),
        description={
            "datasets": ["pyradiomics"],
            "split": "gan.lesions.lesion_patches (gan.data.split seed 0 over the 5 pyradiomics subjects)",
            "train_subjects": sorted(set(parts["train"].subjects)),
            "val_subjects": sorted(set(parts["val"].subjects)),
            "test_subjects": sorted(set(parts["test"].subjects)),
            "samples": f"{config.patch}px patches, {config.per_subject} per subject (half lesion), patch seed "
            f"{config.patch_seed}; random flips / 90-degree rotations in training",
            "synthetic_training_patches": synthetic,
            "synthetic_source": "gan.synthesis.generate (hybrid-gan-dcgan/cgan/srgan weights under "
            f"{config.hybrid_root or 'gan/weights'})"
            if synthetic
            else "none",
        },
    )
