"""Lesion / no-lesion patches on the real pyradiomics volumes (tumour masks): labels, splits, balance, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from gan import data
from gan.intensity import normalise_volume
from gan.lesions import MIN_BODY, SPLITS, LesionPatches, body_mask, lesion_patches


@pytest.fixture(scope="module")
def volumes() -> dict[str, data.Volume]:
    return {v.subject: v for v in data.load_pyradiomics()}


@pytest.fixture(scope="module")
def splits(volumes: dict[str, data.Volume]) -> dict[str, LesionPatches]:
    return {name: lesion_patches(name, per_subject=60, volumes=list(volumes.values())) for name in SPLITS}


def test_labels_agree_with_the_masks_and_images_are_the_normalised_crops(
    volumes: dict[str, data.Volume], splits: dict[str, LesionPatches]
) -> None:
    pad = ((0, 0), (32, 32), (32, 32))
    padded = {
        subject: (np.pad(v.mask, pad, mode="symmetric"), np.pad(body_mask(v), pad, mode="symmetric"),
                  np.pad(normalise_volume(v), pad, mode="symmetric"))
        for subject, v in volumes.items()
    }  # fmt: skip
    for patches in splits.values():
        assert patches.images.shape == (len(patches), 64, 64) and patches.images.dtype == np.float32
        assert patches.labels.dtype == np.int64 and 0.0 <= patches.images.min() <= patches.images.max() <= 1.0
        for i, (z, r, c) in enumerate(patches.centres):
            volume = volumes[patches.subjects[i]]
            mask, body, image = (a[z, r : r + 64, c : c + 64] for a in padded[volume.subject])
            assert patches.modalities[i] == volume.modality
            if patches.labels[i] == 1:
                assert volume.mask[z, r, c], "a lesion patch is centred on a tumour voxel"
            else:
                assert not mask.any(), "a no-lesion patch holds no tumour pixel (mirrored border included)"
                assert body.mean() >= MIN_BODY
            np.testing.assert_array_equal(patches.images[i], image)


def test_splits_are_disjoint_by_subject_and_follow_gan_data_split(
    volumes: dict[str, data.Volume], splits: dict[str, LesionPatches]
) -> None:
    expected = data.split(list(volumes.values()), seed=0)
    owners: dict[str, str] = {}
    for name, patches in splits.items():
        subjects = set(patches.subjects)
        assert subjects == {v.subject for v in expected[name]}
        for subject in subjects:
            assert owners.setdefault(subject, name) == name
    assert set(owners) == set(volumes)  # every subject is used, each in exactly one split
    assert set(splits["test"].subjects) <= data.HELD_OUT_TEST_SUBJECTS


def test_classes_are_balanced_per_subject(splits: dict[str, LesionPatches]) -> None:
    for patches in splits.values():
        for subject in set(patches.subjects):
            labels = patches.labels[[s == subject for s in patches.subjects]]
            assert np.bincount(labels, minlength=2).tolist() == [30, 30]


def test_deterministic_for_a_seed_and_different_across_seeds(volumes: dict[str, data.Volume]) -> None:
    vols = list(volumes.values())
    a = lesion_patches("val", size=32, per_subject=20, seed=3, volumes=vols)
    b = lesion_patches("val", size=32, per_subject=20, seed=3, volumes=vols)
    c = lesion_patches("val", size=32, per_subject=20, seed=4, volumes=vols)
    assert a.images.shape == (20, 32, 32)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.subjects == b.subjects
    assert not np.array_equal(a.centres, c.centres)


def test_bad_arguments_are_refused_with_a_reason(volumes: dict[str, data.Volume]) -> None:
    vols = list(volumes.values())
    with pytest.raises(ValueError, match="split must be one of"):
        lesion_patches("holdout", volumes=vols)
    with pytest.raises(ValueError, match="even number"):
        lesion_patches("train", size=63, volumes=vols)
    with pytest.raises(ValueError, match="per_subject"):
        lesion_patches("train", per_subject=1, volumes=vols)
    unmasked = [data.Volume(source="x", subject="x", modality="MR", pixels=np.zeros((2, 8, 8), np.int16))]
    with pytest.raises(ValueError, match="no masked volume"):
        lesion_patches("train", volumes=unmasked)
