"""Quality triage: preprocess / interpret contracts, the simulated degradations, and the shipped weights on real
held-out slices (pyradiomics lung2 CT and brain2 MR)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from gan import data, triage
from gan.intensity import normalise_volume
from gan.registry import CARD_FILE, DEFAULT_ROOT, WEIGHTS_FILE, load_card, load_model, sha256_file
from gan.train.classifier_data import DEGRADATION_PROB, TriageDegradation, apply_degradation, sample_degradation

if TYPE_CHECKING:
    from torch import nn


@pytest.fixture(scope="module")
def pyradiomics() -> dict[str, np.ndarray]:
    """Normalised pyradiomics volumes (lung window for CT, p99.5 per axial slice for MR: gan.intensity) by case."""
    return {v.subject.split(":")[1]: normalise_volume(v) for v in data.load_pyradiomics()}


def _held_out_slices(pyradiomics: dict[str, np.ndarray], per_subject: int = 6) -> list[tuple[str, np.ndarray]]:
    out = []
    for case, modality in (("lung2", "CT:CHEST"), ("brain2", "MR:HEAD")):
        volume = pyradiomics[case]
        for z in np.linspace(volume.shape[0] * 0.25, volume.shape[0] * 0.75, per_subject).astype(int):
            out.append((modality, volume[z]))
    return out


# -------------------------------------------------------------------------------------------------- preprocess


def test_preprocess_takes_the_central_native_resolution_window(pyradiomics: dict[str, np.ndarray]) -> None:
    ct = pyradiomics["lung2"][30]  # 512 × 512
    x = triage.preprocess(ct)
    assert x.shape == (1, 1, triage.INPUT_SIDE, triage.INPUT_SIDE) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 0], ct[192:320, 192:320])

    breast = pyradiomics["breast1"][10]  # 120 × 45: mirror-padded on both axes
    assert breast.shape == (120, 45)
    y = triage.preprocess(breast)[0, 0]
    top, left = (128 - 120) // 2, (128 - 45) // 2
    np.testing.assert_array_equal(y[top : top + 120, left : left + 45], breast)
    np.testing.assert_array_equal(y[top - 1, left : left + 45], breast[0])  # symmetric padding repeats the edge
    # integers in [0, 1] and float64 are accepted; tiny excursions from rounding are clipped
    assert triage.preprocess(np.clip(ct.astype(np.float64) + 1e-4, 0, 1.0005)).max() <= 1.0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((2, 64, 64)), "2-D"),
        (np.zeros((64, 64, 3)), "2-D"),
        (np.zeros((16, 200)), ">= 32"),
        (np.full((64, 64), np.nan), "NaN"),
        (np.full((64, 64), 400.0), r"\[0, 1\]"),
        (np.full((64, 64), -0.2), r"\[0, 1\]"),
        (np.array([["a"] * 40] * 40), "numeric"),
    ],
)
def test_preprocess_rejects_bad_input_with_a_reason(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        triage.preprocess(image)


# --------------------------------------------------------------------------------------------------- interpret


def test_interpret_decides_and_explains() -> None:
    assert triage.TRIAGE_CLASSES == ("diagnostic", "noisy", "motion-blurred", "low-resolution")
    clean = triage.interpret(np.array([4.0, -3.0, -5.0, -2.0]))
    assert not clean.enhance and clean.degradations == ()
    assert clean.reason.startswith("diagnostic quality") and "0.98" in clean.reason
    assert clean.probabilities["diagnostic"] == pytest.approx(1 / (1 + math.exp(-4.0)))

    both = triage.interpret(np.array([[-3.0, 2.0, -1.0, 0.5]]))  # 1×4 accepted
    assert both.enhance and both.degradations == ("noisy", "low-resolution")
    assert both.reason == "degraded: noisy (p=0.88), low-resolution (p=0.62)"

    unsure = triage.interpret(np.array([-1.0, -1.0, -1.0, -1.0]))
    assert unsure.enhance and unsure.degradations == () and unsure.reason.startswith("uncertain")
    strict = triage.interpret(np.array([-3.0, 1.0, -1.0, -1.0]), thresholds=0.8)
    assert strict.degradations == () and strict.enhance  # p(noisy)=0.73 < 0.8, but diagnostic is unlikely

    huge = triage.interpret(np.array([1e4, -1e4, -1e4, -1e4]))  # no overflow
    assert huge.probabilities["diagnostic"] == 1.0 and huge.probabilities["noisy"] == 0.0
    for bad in (np.zeros(3), np.zeros((2, 4)), np.array([0.0, np.inf, 0.0, 0.0])):
        with pytest.raises(ValueError):
            triage.interpret(bad)


def test_enhance_score_is_the_decision_score() -> None:
    p = np.array([[0.9, 0.1, 0.2, 0.3], [0.6, 0.1, 0.7, 0.0], [0.3, 0.1, 0.1, 0.1]])
    np.testing.assert_allclose(triage.enhance_score(p), [0.3, 0.7, 0.7])
    t = {"diagnostic": 0.2, "noisy": 0.15, "motion-blurred": 0.8, "low-resolution": 0.25}
    np.testing.assert_allclose(triage.enhance_score(p, t), [0.55, 0.45, 0.45])
    q = np.clip(p, 1e-6, 1 - 1e-6)
    logits = np.log(q / (1 - q))
    for row, score in zip(logits, triage.enhance_score(p, t), strict=True):
        assert triage.interpret(row, t).enhance == (score >= 0.5)


def test_interpret_honours_per_class_thresholds() -> None:
    logits = np.array([-1.0, 1.0, -1.0, 0.2])  # p = 0.27, 0.73, 0.27, 0.55
    assert triage.interpret(logits).degradations == ("noisy", "low-resolution")
    lenient = {"diagnostic": 0.2, "noisy": 0.8, "motion-blurred": 0.5, "low-resolution": 0.6}
    kept = triage.interpret(logits, lenient)
    assert not kept.enhance and kept.degradations == ()
    assert kept.reason == "diagnostic quality (p=0.27); no degradation reached its threshold"
    doubt = triage.interpret(logits, lenient | {"diagnostic": 0.3})
    assert doubt.enhance and doubt.reason.startswith("uncertain") and "(p=0.27 < 0.30)" in doubt.reason
    assert triage.interpret(logits, lenient | {"low-resolution": 0.54}).degradations == ("low-resolution",)
    for bad in ({"noisy": 0.5}, lenient | {"blurry": 0.5}, lenient | {"noisy": 1.0}, 0.0, float("nan")):
        with pytest.raises(ValueError, match="thresholds"):
            triage.interpret(logits, bad)


# ------------------------------------------------------------------------------------------------ degradations


def test_degradations_on_a_real_slice_and_their_targets(pyradiomics: dict[str, np.ndarray]) -> None:
    ct = triage.center_window(pyradiomics["lung1"][24], 256).astype(np.float64)
    rng = np.random.default_rng(0)

    def laplacian_energy(image: np.ndarray) -> float:
        return float(np.mean((4 * image[1:-1, 1:-1] - image[:-2, 1:-1] - image[2:, 1:-1] - image[1:-1, :-2]
                              - image[1:-1, 2:]) ** 2))  # fmt: skip

    same, target = apply_degradation(ct, TriageDegradation(), "CT:CHEST", rng)
    np.testing.assert_allclose(same, ct, atol=1e-6)
    assert target.tolist() == [1, 0, 0, 0]

    noisy, target = apply_degradation(ct, TriageDegradation(noise_sigma=0.05), "CT:CHEST", rng)
    assert target.tolist() == [0, 1, 0, 0]
    assert 0.03 < float(np.std(noisy - ct)) < 0.06

    motion = {"motion": 6.0, "respiratory_rate": 30.0, "heart_rate": 120.0}
    blurred, target = apply_degradation(ct, TriageDegradation(motion=motion), "CT:CHEST", rng)
    assert target.tolist() == [0, 0, 1, 0]
    assert laplacian_energy(blurred) < 0.3 * laplacian_energy(ct)

    low, target = apply_degradation(ct, TriageDegradation(scale=4), "CT:CHEST", rng)
    assert target.tolist() == [0, 0, 0, 1] and low.shape == ct.shape
    assert laplacian_energy(low) < 0.3 * laplacian_energy(ct)

    all_three = TriageDegradation(0.05, motion, 2)
    _, target = apply_degradation(ct, all_three, "MR", rng)
    assert target.tolist() == [0, 1, 1, 1]

    draws = [sample_degradation(np.random.default_rng(s)) for s in range(400)]
    clean = sum(d == TriageDegradation() for d in draws) / len(draws)
    assert abs(clean - (1 - DEGRADATION_PROB) ** 3) < 0.07
    assert {d.scale for d in draws} == {1, 2, 4}


# ----------------------------------------------------------------------------------------------- shipped weights


def test_shipped_triage_weights_load_with_matching_sha256() -> None:
    """Provenance only; the card's figures are recomputed from the weights in
    ``tests/test_train_classifier.py::test_shipped_triage_card_figures_are_recomputed_from_its_weights``."""
    directory = DEFAULT_ROOT / triage.MODEL_NAME
    card = load_card(directory / "card.json")
    assert card.sha256 == sha256_file(directory / "model.safetensors")
    assert (directory / "model.safetensors").stat().st_size < 3_000_000
    model, loaded = load_model(None, triage.MODEL_NAME)
    assert loaded == card and not model.training
    assert card.input.model_dump()["classes"] == list(triage.TRIAGE_CLASSES)
    assert "python -m gan.train_classifier triage" in str(card.training.command)
    model2, _ = triage.load_triage()
    assert type(model2) is type(model)


#: Seeds of the random-init control of the quality claim below.
RANDOM_SEEDS = range(5)
HEAVY = TriageDegradation(0.08, {"motion": 8.0, "respiratory_rate": 30.0, "heart_rate": 130.0}, 4)


@dataclass(frozen=True)
class Separation:
    """How one model's triage treats clean held-out slices and their heavily degraded versions."""

    clean_scores: list[float]  # enhance scores (card thresholds; "enhance" when >= 0.5)
    degraded_scores: list[float]
    degraded_flagged: int
    clean_kept: int

    @property
    def separated(self) -> bool:
        """Every degraded slice scores above every clean one (an AUC of 1, whatever the thresholds)."""
        return min(self.degraded_scores) > max(self.clean_scores)

    def claim_holds(self) -> bool:
        """The README's claim: separated, every degraded slice flagged, at least half of the clean ones kept."""
        n = len(self.clean_scores)
        return self.separated and self.degraded_flagged == n and self.clean_kept >= n // 2


def _separation(
    model: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], thresholds: dict[str, float]
) -> Separation:
    """Triage, with ``model`` at ``thresholds``, of each clean slice and of its degraded version."""
    clean = [triage.classify(model, image, thresholds) for image, _ in pairs]
    degraded = [triage.classify(model, image, thresholds) for _, image in pairs]

    def scores(results: list[triage.TriageResult]) -> list[float]:
        return triage.enhance_score(np.array([list(r.probabilities.values()) for r in results]), thresholds).tolist()

    return Separation(scores(clean), scores(degraded), sum(r.enhance for r in degraded),
                      sum(not r.enhance for r in clean))  # fmt: skip


def test_shipped_triage_tells_clean_from_heavily_degraded_held_out_slices(
    pyradiomics: dict[str, np.ndarray],
) -> None:
    """12 held-out slices and the same slices with noise, motion blur and ×4 low resolution all at once: the shipped
    weights pass the claim; the same architecture with random weights fails it, and fails its threshold-free part
    (separation) too, for every seed tried (random nets may rank each slice's own pair right, as 2 of 10 seeds do)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from gan.models import build

    model, card = triage.load_triage()
    thresholds = triage.card_thresholds(card)
    rng = np.random.default_rng(0)
    pairs = []
    for modality, image in _held_out_slices(pyradiomics):
        image = image[: image.shape[0] - image.shape[0] % 4, : image.shape[1] - image.shape[1] % 4]
        pairs.append((image, apply_degradation(image, HEAVY, modality, rng)[0]))  # whole slice, then window
    shipped = _separation(model, pairs, thresholds)
    assert shipped.claim_holds(), shipped
    for seed in RANDOM_SEEDS:
        torch.manual_seed(seed)
        random_init = _separation(build(card.architecture, **card.config).eval(), pairs, thresholds)
        assert not random_init.claim_holds() and not random_init.separated, (seed, random_init)


def test_shipped_card_thresholds_are_used_and_a_card_without_them_means_0_5(
    pyradiomics: dict[str, np.ndarray], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    card = load_card(DEFAULT_ROOT / triage.MODEL_NAME / CARD_FILE)
    stored = card.input.model_dump()["thresholds"]
    assert set(stored) == set(triage.TRIAGE_CLASSES) and all(0 < v < 1 for v in stored.values())
    assert stored != dict.fromkeys(triage.TRIAGE_CLASSES, 0.5)
    assert "val split only" in card.input.model_dump()["threshold_rule"]
    assert triage.card_thresholds(card) == stored
    model, _ = triage.load_triage()
    assert model.triage_thresholds == stored

    # the same weights with a card that has no thresholds: every class at 0.5
    bare = tmp_path / triage.MODEL_NAME
    bare.mkdir()
    shutil.copy(DEFAULT_ROOT / triage.MODEL_NAME / WEIGHTS_FILE, bare / WEIGHTS_FILE)
    spec = {k: v for k, v in card.input.model_dump().items() if k not in ("thresholds", "threshold_rule")}
    (bare / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json") | {"input": spec}))
    plain, plain_card = triage.load_triage(tmp_path)
    assert triage.card_thresholds(plain_card) == dict.fromkeys(triage.TRIAGE_CLASSES, 0.5)

    image = pyradiomics["lung2"][30]
    calibrated, default = triage.classify(model, image), triage.classify(plain, image)
    assert calibrated == triage.classify(model, image, stored)
    assert default == triage.classify(model, image, 0.5)
    assert calibrated.probabilities == default.probabilities
