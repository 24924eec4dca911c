"""Training pairs on every real CT/MR source (gan.train.data): the split training uses, the noise model of each
modality with its nominal level, and blur both present and absent."""

from __future__ import annotations

import numpy as np
import pytest

from gan import data as gdata
from gan.degrade import POISSON_REFERENCE
from gan.train.data import blur_px, make_pairs, prepare_slices, training_splits


@pytest.fixture(scope="module")
def volumes() -> list[gdata.Volume]:
    """The CT and MR volumes of every default dataset, as training loads them."""
    loaded = [v for name in gdata.DEFAULT_DATASETS for v in gdata.load(name)]
    return [v for v in loaded if v.modality in ("CT", "MR") and not v.is_rgb]


@pytest.fixture(scope="module")
def pairs(volumes):
    train = prepare_slices(training_splits(volumes, seed=0)["train"])
    return make_pairs(train, 2, np.random.default_rng(0), 800, textured_fraction=0.5)


def test_training_split_of_seed_0(volumes) -> None:
    """The split docs/training.md documents: val covers CT and MR."""
    parts = training_splits(volumes, seed=0)
    assert set(parts) == {"train", "val"}
    assert sorted({v.subject for v in parts["val"]}) == ["dicom:5MR2", "dicom:JXD191021006", "pyradiomics:brain1"]
    assert sorted({v.subject for v in parts["train"]}) == [
        "dicom:1CT1", "dicom:4MR1", "dicom:CQ500-CT-310",
        "dicom:study:1.2.826.0.1.3680043.2.1143.3365540476747857567072393009509418480", "dipy", "mni152",
        "nibabel:example4d", "pyradiomics:breast1", "pyradiomics:lung1",
    ]  # fmt: skip
    test = {v.subject for v in volumes} - {v.subject for part in parts.values() for v in part}
    assert test == gdata.HELD_OUT_TEST_SUBJECTS


def test_blur_is_present_and_absent(pairs) -> None:
    """Blur follows the sampled vitals: most pairs are sharp, a good share strongly blurred."""
    lengths = np.array([blur_px(p) for p in pairs.params])
    assert 0.5 < np.mean(lengths == 0) < 0.8
    assert np.mean(lengths >= 5) > 0.15


def test_each_modality_gets_its_noise_models_at_the_nominal_level(volumes, pairs) -> None:
    """On the sharp pairs the LR image is the block mean of the HR patch plus noise: standardised by each pair's
    level (and, Poisson-like, by √(t / 0.5)), the residual has unit spread for every model."""
    modality = {v.subject: v.modality for v in volumes}
    models: dict[str, set[str]] = {}
    standardised: dict[str, list[np.ndarray]] = {"gaussian": [], "rician": [], "poisson": []}
    for i, p in enumerate(pairs.params):
        models.setdefault(modality[pairs.subjects[i]], set()).add(p.noise_model)
        if blur_px(p):
            continue
        hr = pairs.hr[i, 0].double().numpy()
        mean = hr.reshape(hr.shape[0] // 2, 2, hr.shape[1] // 2, 2).mean(axis=(1, 3))
        inside = (mean > max(0.15, 5 * p.noise_sigma)) & (mean < 1 - 5 * p.noise_sigma)
        residual = pairs.lr[i, 0].double().numpy()[inside] - mean[inside]
        scale = p.noise_sigma * (np.sqrt(mean[inside] / POISSON_REFERENCE) if p.noise_model == "poisson" else 1.0)
        standardised[p.noise_model].append(residual / scale)
    assert models == {"CT": {"gaussian", "poisson"}, "MR": {"rician"}}
    for model, parts in standardised.items():
        values = np.concatenate(parts)
        assert values.size > 5000, model
        assert float(values.std()) == pytest.approx(1.0, abs=0.02), model


def test_mismatched_contexts_show_other_vitals_than_the_ones_that_degraded_the_image(volumes) -> None:
    """``mismatch``: that fraction of contexts shows independently drawn vitals (agitated on sharp images, calm on
    blurred ones); at 0 every present channel shows the true level."""
    train = prepare_slices(training_splits(volumes, seed=0)["train"])

    def disagreeing(batch) -> float:
        differs = [any(o is not None and abs(o - batch.true_levels[i][c]) > 1e-3 for c, o in obs.items())
                   for i, obs in enumerate(batch.observed)]  # fmt: skip
        return float(np.mean(differs))

    assert disagreeing(make_pairs(train, 2, np.random.default_rng(1), 300)) == 0.0
    mixed = make_pairs(train, 2, np.random.default_rng(1), 300, mismatch=0.5)
    assert 0.35 < disagreeing(mixed) < 0.55  # half redrawn, minus redraws with every channel missing
    sharp = [i for i, p in enumerate(mixed.params) if blur_px(p) == 0]
    agitated_on_sharp = [i for i in sharp if (mixed.observed[i]["motion"] or 0) > 2.0]
    assert agitated_on_sharp  # the case a wrong bed's vitals produce
