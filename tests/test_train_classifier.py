"""Classification metrics against scikit-learn / Mann–Whitney U, the classifier training runs on real images, and the
shipped classifiers: their cards' figures recomputed from the weights, the triage thresholds against random weights."""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from gan import classification_metrics as cm
from gan import data, triage
from gan.registry import load_card, load_model, sha256_file
from gan.train.classifier import ClassifierConfig, calibrate_triage, main, train_classifier
from gan.train.classifier_data import lesion_data, triage_data, triage_test_windows
from gan.train.data import prepare_slices
from gan.train.evaluation import choose_thresholds, evaluate_lesion, evaluate_triage, flat_metrics, predict

# ------------------------------------------------------------------------------------------------------ metrics


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for n, p in ((50, 0.5), (200, 0.2), (31, 0.8)):
        y = (rng.uniform(size=n) < p).astype(np.int64)
        score = np.round(0.3 * y + rng.uniform(size=n), 1)  # rounded: many ties
        cases.append((y, score))
    return cases


def test_threshold_metrics_match_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    for y, score in _cases():
        for threshold in (0.2, 0.6, 1.25):  # 1.25: no positive prediction at all (zero division)
            pred = (score >= threshold).astype(np.int64)
            assert cm.accuracy(y, pred) == pytest.approx(sk.accuracy_score(y, pred))
            assert cm.precision(y, pred) == pytest.approx(sk.precision_score(y, pred, zero_division=0))
            assert cm.recall(y, pred) == pytest.approx(sk.recall_score(y, pred, zero_division=0))
            assert cm.f1(y, pred) == pytest.approx(sk.f1_score(y, pred, zero_division=0))
            specificity = sk.recall_score(1 - y, 1 - pred, zero_division=0)
            assert cm.specificity(y, pred) == pytest.approx(specificity)
            assert cm.confusion(y, pred) == (
                int(((y == 1) & (pred == 1)).sum()),
                int(((y == 0) & (pred == 1)).sum()),
                int(((y == 0) & (pred == 0)).sum()),
                int(((y == 1) & (pred == 0)).sum()),
            )


def test_auc_matches_scikit_learn_and_mann_whitney_u() -> None:
    from scipy.stats import mannwhitneyu

    sk = pytest.importorskip("sklearn.metrics")
    for y, score in _cases():
        auc = cm.roc_auc(y, score)
        assert auc == pytest.approx(sk.roc_auc_score(y, score))
        u = mannwhitneyu(score[y == 1], score[y == 0]).statistic
        assert auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


def test_auc_hand_computed_small_cases() -> None:
    # pairs (pos, neg): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, *) right: 3 of 4
    assert cm.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert cm.roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts one half
    assert cm.roc_auc(np.array([1, 0, 1]), np.array([3.0, -1.0, 2.0])) == 1.0
    with pytest.raises(ValueError, match="one class"):
        cm.roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="0 or 1"):
        cm.accuracy(np.array([0, 2]), np.array([0, 1]))


def test_bootstrap_interval_width_and_cluster_resampling() -> None:
    rng = np.random.default_rng(1)
    correct = (rng.uniform(size=400) < 0.7).astype(np.float64)
    plain = cm.bootstrap_ci(lambda i: float(correct[i].mean()), 400, resamples=2000, seed=0)
    assert plain.low < plain.value == correct.mean() < plain.high
    # the normal approximation gives ±1.96·sqrt(p(1−p)/n) ≈ ±0.045
    assert 0.07 < plain.high - plain.low < 0.11
    assert plain == cm.bootstrap_ci(lambda i: float(correct[i].mean()), 400, resamples=2000, seed=0)

    # two subjects, one always right, one at chance: resampling subjects widens the interval
    two = np.concatenate([np.ones(200), (rng.uniform(size=200) < 0.5).astype(np.float64)])
    groups = ["a"] * 200 + ["b"] * 200
    flat = cm.bootstrap_ci(lambda i: float(two[i].mean()), 400, resamples=1000)
    clustered = cm.bootstrap_ci(lambda i: float(two[i].mean()), 400, groups, resamples=1000)
    assert clustered.value == flat.value
    assert clustered.high - clustered.low > 3 * (flat.high - flat.low)
    assert clustered.low < 0.6 and clustered.high > 0.95

    # AUC is undefined on resamples holding one subject whose samples are all one class: skipped and counted
    y = np.array([1] * 10 + [0] * 10)
    report = cm.binary_report(y, np.linspace(0, 1, 20), groups=["p"] * 10 + ["n"] * 10, resamples=200)
    assert report["auc"].skipped > 0 and report["accuracy"].skipped == 0
    assert set(report) == {"accuracy", "precision", "recall", "f1", "specificity", "auc"}


# ----------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def volumes() -> list[data.Volume]:
    return [v for name in ("pydicom", "mni152", "pyradiomics") for v in data.load(name)]


@pytest.fixture(scope="module")
def as_measured(volumes: list[data.Volume]) -> list[data.Volume]:
    """The volumes as the shipped cards' figures were measured: before the one per-instance normalisation
    (gan.intensity), MR volumes were normalised per volume; a NIfTI/NRRD volume normalised as one instance
    (``single_instance``) reproduces that (DICOM and CT are the same either way)."""
    return [dataclasses.replace(v, single_instance=True) for v in volumes]


def test_triage_data_split_by_subject_and_targets(volumes: list[data.Volume]) -> None:
    config = ClassifierConfig(val_samples=48, test_per_subject=6)
    task = triage_data(config, volumes)
    train, val, test = (set(task.description[f"{s}_subjects"]) for s in ("train", "val", "test"))
    assert test == {v.subject for v in data.held_out_test(volumes)}  # the held-out subjects these datasets hold
    assert not (train & val) and not (train & test) and not (val & test)
    x, y = task.sample(np.random.default_rng(0), 64)
    assert x.shape == (64, 1, triage.INPUT_SIDE, triage.INPUT_SIDE) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # diagnostic is exactly "no degradation"; every class occurs
    assert np.array_equal(y[:, 0], 1.0 - y[:, 1:].max(axis=1))
    assert (y.sum(axis=0) > 0).all()
    assert task.test[0].shape[0] == len(task.test_groups) == 6 * len(test)


def test_short_triage_run_lowers_loss_and_writes_checkpoint_card_png(
    volumes: list[data.Volume], tmp_path: Path
) -> None:
    config = ClassifierConfig(
        out=str(tmp_path), name="triage-tiny", widths=(8, 16), steps=40, batch_size=16, val_every=20,
        val_samples=32, test_per_subject=8, log_every=20, resamples=100, threads=1, lr=3e-3,
    )  # fmt: skip
    result = train_classifier(config, volumes)
    first, last = np.mean(result.train_loss[:8]), np.mean(result.train_loss[-8:])
    assert last < first - 0.03, (first, last)
    model, card = load_model(tmp_path, "triage-tiny")
    assert not model.training
    assert card.architecture == "se-classifier" and card.config["num_classes"] == 4
    assert card.input.model_dump()["classes"] == list(triage.TRIAGE_CLASSES)
    assert card.sha256 == sha256_file(tmp_path / "triage-tiny" / "model.safetensors")
    # the card's test figures are those of the saved (best) weights on the run's fixed test windows, recomputed
    task = triage_data(config, volumes)
    probabilities = predict(model, task.test[0])
    report = evaluate_triage(probabilities, task.test[1], task.test_groups, config.resamples, config.seed)
    written = {k: v for k, v in card.metrics.items() if k.startswith("test_")}
    assert written == pytest.approx(flat_metrics(report), abs=1e-6)
    assert card.metrics["n_test"] == 8 * len({v.subject for v in data.held_out_test(volumes)})
    png = result.loss_curve.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and zlib.crc32(png) != 0
    history = json.loads(result.history_file.read_text())
    assert len(history["train_loss"]) == 40 and [v["step"] for v in history["val"]] == [20.0, 40.0]


def test_lesion_run_with_hybrid_gan_augmentation(tmp_path: Path) -> None:
    """The augmentation path end to end, with hybrid-GAN weights trained here for a couple of steps."""
    from gan.train.hybrid import main as train_hybrid

    hybrid = tmp_path / "hybrid"
    assert train_hybrid(["--out", str(hybrid), "--dcgan-steps", "2", "--cgan-steps", "2", "--srgan-steps", "2",
                         "--per-subject", "8", "--threads", "1"]) == 0  # fmt: skip
    out = tmp_path / "out"
    argv = ["lesion", "--augment", "--hybrid-root", str(hybrid), "--synthetic", "16", "--per-subject", "40",
            "--out", str(out), "--steps", "6", "--val-every", "3", "--batch-size", "8", "--resamples", "50",
            "--widths", "8,16", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    card = load_card(out / "lesion-classifier-augmented" / "card.json")
    described = card.training.data
    assert isinstance(described, dict) and described["synthetic_training_patches"] == 16
    assert set(described["test_subjects"]) == {"pyradiomics:brain2", "pyradiomics:lung2"}
    assert "pyradiomics:brain2" not in described["train_subjects"]
    assert card.training.command == "python -m gan.train_classifier " + " ".join(argv)
    for key in ("auc", "f1", "accuracy", "precision", "recall", "specificity"):
        assert f"test_lesion_{key}_ci_high" in card.metrics
    assert card.metrics["n_test"] == 80


def test_lesion_data_keeps_synthetic_out_of_val_and_test() -> None:
    config = ClassifierConfig(task="lesion", per_subject=20)
    task = lesion_data(config)
    assert len(task.val[1]) == 20 and len(task.test[1]) == 40
    assert set(task.test_groups) == {"pyradiomics:brain2", "pyradiomics:lung2"}
    assert task.description["synthetic_training_patches"] == 0
    x, y = task.sample(np.random.default_rng(0), 10)
    assert x.shape == (10, 1, 64, 64) and set(np.unique(y)) <= {0.0, 1.0}


def test_cli_rejects_augment_for_triage() -> None:
    with pytest.raises(SystemExit, match="lesion task only"):
        main(["triage", "--augment"])


def test_shipped_lesion_card_figures_are_recomputed_from_its_weights(as_measured: list[data.Volume]) -> None:
    """Every test figure of the lesion card (value and cluster-bootstrap CI) is what its weights give on the held-out
    test patches. No quality claim: the model is at chance level and shipped for the plumbing (docs/classifier.md);
    random-init weights of the same architecture score test AUCs from 0.16 to 0.71 (seeds 0–4), shipped 0.60."""
    from gan.registry import DEFAULT_ROOT

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    model, card = load_model(None, "lesion-classifier")
    assert card.sha256 == sha256_file(DEFAULT_ROOT / "lesion-classifier" / "model.safetensors")
    assert card.config["num_classes"] == 1 and not model.training
    assert str(card.training.command).startswith("python -m gan.train_classifier lesion")
    config = ClassifierConfig(task="lesion")  # the card's command sets no data option: the default patches
    task = lesion_data(config, as_measured)
    probabilities = predict(model, task.test[0])
    report = evaluate_lesion(probabilities, task.test[1], task.test_groups, config.resamples, config.seed)
    recomputed = flat_metrics(report) | {"n_test": float(len(task.test_groups))}
    assert {k: v for k, v in card.metrics.items() if k in recomputed} == pytest.approx(recomputed, abs=1e-6)


# -------------------------------------------------------------------------------------------------- calibration


def test_choose_thresholds_youden_midpoints_and_recall_floor() -> None:
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(200, 4)) < 0.4).astype(np.float32)
    y[:, 0] = 1.0 - y[:, 1:].max(axis=1)
    p = np.where(y == 1, rng.uniform(0.6, 0.9, y.shape), rng.uniform(0.05, 0.3, y.shape))
    t = choose_thresholds(p, y)
    for k, name in enumerate(triage.TRIAGE_CLASSES[1:], start=1):  # separable: the middle of the gap
        gap = p[y[:, k] == 0, k].max(), p[y[:, k] == 1, k].min()
        assert t[name] == pytest.approx(sum(gap) / 2)
    assert (triage.enhance_score(p, t) >= 0.5).astype(int).tolist() == (1 - y[:, 0]).astype(int).tolist()

    # uninformative degradation outputs, overlapping diagnostic p: the recall floor decides the diagnostic cut
    p[:, 1:] = 0.1
    p[:, 0] = np.where(y[:, 0] == 1, rng.uniform(0.4, 1.0, 200), rng.uniform(0.0, 0.6, 200))
    strict = choose_thresholds(p, y, min_recall=1.0)
    assert (triage.enhance_score(p, strict)[y[:, 0] == 0] >= 0.5).all()
    assert strict["diagnostic"] > p[y[:, 0] == 0, 0].max()
    assert strict["diagnostic"] > choose_thresholds(p, y, min_recall=0.5)["diagnostic"]
    with pytest.raises(ValueError, match="N×4"):
        choose_thresholds(p[:, :3], y[:, :3])


def test_calibration_uses_val_only_and_rewrites_only_the_card(volumes: list[data.Volume], tmp_path: Path) -> None:
    import shutil

    from gan.registry import DEFAULT_ROOT, WeightsIntegrityError, update_card

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    root = tmp_path / "weights"
    shutil.copytree(DEFAULT_ROOT / triage.MODEL_NAME, root / triage.MODEL_NAME)
    weights = root / triage.MODEL_NAME / "model.safetensors"
    digest = sha256_file(weights)
    config = ClassifierConfig(val_samples=96, test_per_subject=12, resamples=50)
    task = triage_data(config, volumes)
    first = calibrate_triage(root, config=config, data=task)

    # poisoned test split (labels inverted, images swapped for val ones): identical thresholds
    poisoned = dataclasses.replace(task, test=(task.val[0][: len(task.test[1])], 1.0 - task.test[1]))
    assert calibrate_triage(root, config=config, data=poisoned)["thresholds"] == first["thresholds"]
    # a different val split changes them: they do come from val
    other_val = dataclasses.replace(task, val=(task.val[0][::2], task.val[1][::2]))
    assert calibrate_triage(root, config=config, data=other_val)["thresholds"] != first["thresholds"]

    calibrate_triage(root, config=config, data=task)
    card = load_card(root / triage.MODEL_NAME / "card.json")
    assert card.input.model_dump()["thresholds"] == first["thresholds"]
    assert sha256_file(weights) == digest == card.sha256
    assert card.metrics["test_enhance_specificity"] == first["after"]["enhance"]["specificity"].value
    assert card.metrics["test_enhance_at_0.5_specificity"] == first["before"]["enhance"]["specificity"].value
    assert card.notes.count("Decision thresholds") == 1
    load_model(root, triage.MODEL_NAME)  # still loads: sha256 verified

    # val containing a held-out test subject is refused
    leaked = dataclasses.replace(task, description=task.description | {"val_subjects": ["pyradiomics:lung2"]})
    with pytest.raises(ValueError, match="held-out"):
        calibrate_triage(root, config=config, data=leaked)
    # a card is never rewritten for weights that no longer match it
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsIntegrityError):
        update_card(root, triage.MODEL_NAME, {"notes": "x"})
    with pytest.raises(ValueError, match="sha256"):
        update_card(root, triage.MODEL_NAME, {"sha256": "0" * 64})


def test_shipped_triage_card_figures_are_recomputed_from_its_weights(
    as_measured: list[data.Volume], tmp_path: Path
) -> None:
    """The card's thresholds (chosen on val only) and every figure the weights determine — the test metrics with
    their bootstrap CIs at those thresholds and at 0.5, the val enhance recall and specificity — are what the
    card's own calibration computes again from the shipped weights (run on a copy: the shipped card is not
    rewritten). Training-history figures (val_loss, val_label_accuracy, best_step) are not recomputed."""
    import shutil

    from gan.registry import DEFAULT_ROOT

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    shutil.copytree(DEFAULT_ROOT / triage.MODEL_NAME, tmp_path / triage.MODEL_NAME)
    card = load_card(DEFAULT_ROOT / triage.MODEL_NAME / "card.json")
    config = ClassifierConfig()  # the defaults the card was calibrated with (its notes name the command)
    result = calibrate_triage(tmp_path, config=config, data=triage_data(config, as_measured))
    # Thresholds are float32 probabilities: equal to float32 resolution (another numpy/BLAS build may round the
    # last bit differently).
    assert result["thresholds"] == pytest.approx(card.input.model_dump()["thresholds"], abs=1e-6)

    def weight_figures(metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if k.startswith(("test_", "val_enhance_")) or k == "n_test"}

    assert weight_figures(card.metrics) == pytest.approx(weight_figures(result["metrics"]), abs=1e-6)


def test_shipped_triage_thresholds_raise_specificity_on_held_out_windows(volumes: list[data.Volume]) -> None:
    """The card's val-chosen thresholds against 0.5 on fresh degraded windows of the held-out test subjects: they
    keep more clean windows and still flag ≥ 97 % of the degraded ones; with random weights of the same
    architecture the same check fails."""
    from gan.models import build

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    model, card = triage.load_triage()
    test_slices = prepare_slices(data.held_out_test(volumes), allow_held_out=True)
    x, y, _ = triage_test_windows(test_slices, per_subject=60, seed=7)  # not the card's seed-0 windows
    clean = y[:, 0] == 1
    assert clean.sum() >= 20

    def thresholds_help(weights: torch.nn.Module) -> bool:
        p = predict(weights, x)
        calibrated = triage.enhance_score(p, triage.card_thresholds(card)) >= 0.5
        default = triage.enhance_score(p) >= 0.5
        specificity_up = (~calibrated[clean]).mean() > (~default[clean]).mean()  # specificity of "enhance"
        return bool(specificity_up and calibrated[~clean].mean() >= 0.97)  # recall kept

    assert thresholds_help(model)
    torch.manual_seed(0)
    assert not thresholds_help(build(card.architecture, **card.config))
