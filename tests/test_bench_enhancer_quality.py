"""bench.enhancer_quality on a tiny enhancer trained here for a few steps (real pydicom/pyradiomics/MNI152 data)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import enhancer_quality as eq
from gan import data
from gan.registry import CARD_FILE, DEFAULT_ROOT, load_card
from gan.train.data import training_splits
from gan.train.enhancer import TrainConfig, train_enhancer


@pytest.fixture(scope="module")
def volumes() -> list[data.Volume]:
    return [v for name in eq.DATASETS for v in data.load(name)]


@pytest.fixture(scope="module")
def weights(volumes: list[data.Volume], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny enhancer (and a blind twin) trained for a handful of steps on the train split."""
    out = tmp_path_factory.mktemp("weights")
    usable = [v for v in volumes if v.modality in ("CT", "MR") and not v.is_rgb]
    for blind in (False, True):
        config = TrainConfig(
            out=str(out), name="tiny-blind" if blind else "tiny", blind=blind, steps=4, batch_size=4, patch=32,
            channels=8, n_blocks=1, val_every=4, val_pairs=4, log_every=4, train_pool=8, threads=1,
        )  # fmt: skip
        train_enhancer(config, usable)
    return out


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quick_run_fields_and_no_leakage(weights: Path, volumes: list[data.Volume], tmp_path: Path) -> None:
    shutil.copytree(weights / "tiny", tmp_path / "tiny")  # a root without "tiny-blind": no twin found there
    summary = eq.run(
        weights, "tiny", fast_weights=tmp_path, fast_name="tiny", quick=True, volumes=volumes,
        pairs_per_subject=2, val_pairs_per_subject=2,
    )  # fmt: skip
    json.dumps(summary)  # serialisable
    usable = [v for v in volumes if v.modality in ("CT", "MR") and not v.is_rgb]
    held_out = {v.subject for v in data.held_out_test(usable)}  # those of the held-out subjects in these datasets
    # the headline figures, for the PACS model (its blind twin "tiny-blind", found beside it, as reference) and the
    # fast one (zero-context reference: "tiny" without its blind twin is a different model/reference pair, so it is
    # run again)
    assert summary["blind_reference"] == "blind-twin" and summary["fast_blind_reference"] == "zero-context"
    assert not summary["fast_is_pacs_model"]
    for key in eq.FIGURES:
        for prefix, role in (("", "pacs"), ("fast_", "fast")):
            figure = summary["models"][role]["figures"][key]
            assert _finite(summary[prefix + key]) and summary[prefix + key] == figure["overall"], prefix + key
            assert set(figure["by_modality"]) == {"CT", "MR"} and all(map(_finite, figure["by_modality"].values()))
            assert set(figure["by_subject"]) == held_out
            spread = figure["subject_spread"]
            assert spread["subjects"] == len(held_out) and spread["min"] <= figure["overall"] <= spread["max"]
            assert _finite(spread["std"]) and spread["std"] >= 0
    for key in (
        "psnr_bicubic_db", "psnr_classical_db", "psnr_enhancer_db", "psnr_gain_vs_classical_db", "ssim",
        "ssim_bicubic", "context_gain_db", "shuffle_cost_db", "tissue_psnr_enhancer_db", "classical_parameter",
    ):  # fmt: skip
        assert _finite(summary[key]), key
    assert 0 <= summary["checkerboard_ratio"] <= 1
    # the figures are the differences they are named after
    close = {"abs": 2e-4}
    assert summary["psnr_gain_vs_bicubic_db"] == pytest.approx(
        summary["psnr_enhancer_db"] - summary["psnr_bicubic_db"], **close
    )
    assert summary["tissue_psnr_gain_vs_best_classical_db"] == pytest.approx(
        summary["tissue_psnr_enhancer_db"] - summary["tissue_psnr_classical_db"], **close
    )
    assert summary["ssim_gain_vs_best_classical"] == pytest.approx(summary["ssim"] - summary["ssim_classical"], **close)
    assert summary["shuffled_context_gain_db"] == pytest.approx(
        summary["psnr_enhancer_shuffled_db"] - summary["psnr_blind_db"], **close
    )
    conditions = summary["models"]["pacs"]["context_conditions"]
    assert conditions["agitated_but_sharp"]["overall"] == -summary["wrong_context_loss_db"]
    assert conditions["true_on_blurred"]["overall"] == summary["context_gain_blurred_db"]
    assert conditions["true"]["overall"] == pytest.approx(summary["context_gain_db"], **close)
    # half sharp, half blurred, per subject; each condition on its own half
    assert summary["pairs"] == 2 * len(summary["subjects"]) > 0
    assert summary["pairs_by_blur"] == {"still": summary["pairs"] // 2, "blurred": summary["pairs"] // 2}
    for name in ("true_on_sharp", "agitated_but_sharp", "true_on_blurred", "calm_but_blurred"):
        assert conditions[name]["n"] == summary["pairs"] // 2
    for subject in summary["by_subject"].values():
        assert subject["bicubic"]["pairs"] == 2
    # test pairs come only from the fixed held-out subjects, and from all of them that the datasets hold
    assert set(summary["subjects"]) == held_out and held_out <= data.HELD_OUT_TEST_SUBJECTS
    assert summary["pairs_by_modality"]["CT"] > 0 and summary["pairs_by_modality"]["MR"] > 0
    by_blur = summary["by_blur"]
    for group in by_blur.values():
        assert {m["pairs"] for m in group.values()} == {group["bicubic"]["pairs"]}
    by_subject = summary["by_subject"]
    assert set(by_subject) == set(summary["subjects"])
    assert sum(s["bicubic"]["pairs"] for s in by_subject.values()) == summary["pairs"]
    for per_method in by_subject.values():
        assert set(per_method) == set(summary["methods"])
        assert _finite(per_method["enhancer"]["tissue_psnr_db"]) and _finite(per_method["fast_blind"]["psnr_db"])
    # the classical strengths were chosen on the val split, which holds no held-out subject; quick runs only the
    # val winner on the test pairs
    tuning = summary["classical_tuning"]
    val_subjects = {v.subject for v in training_splits(usable)["val"]}
    assert set(tuning["val_subjects"]) <= val_subjects
    assert not set(tuning["val_subjects"]) & data.HELD_OUT_TEST_SUBJECTS
    assert summary["classical_method"] in eq.GRIDS
    assert summary["classical_parameter"] in eq.QUICK_GRIDS[summary["classical_method"]]
    assert summary["psnr_classical_db"] == summary["methods"][summary["classical_method"]]["psnr_db"]
    assert {"bicubic", "classical", summary["classical_method"]} <= set(summary["methods"])
    assert len(summary["weights"]["sha256"]) == 64 and summary["weights"]["name"] == "tiny"
    assert summary["blind_weights"]["name"] == "tiny-blind" and summary["fast_blind_weights"] is None


def test_blur_mix_is_exact_per_subject(volumes: list[data.Volume]) -> None:
    from gan.train.data import prepare_slices

    slices = prepare_slices(data.held_out_test(volumes), allow_held_out=True)
    pairs = eq.make_bench_pairs(slices, 2, 4, seed=3, allow_held_out=True, blur_mix=eq.BLUR_MIX)
    still, blurred = set(pairs.group("still")), set(pairs.group("blurred"))
    assert not still & blurred and len(still) == len(blurred) == len(pairs) // 2
    for subject in set(pairs.pairs.subjects):
        mine = {i for i, s in enumerate(pairs.pairs.subjects) if s == subject}
        assert len(mine & still) == len(mine & blurred) == 2
    # tissue masks of the HR crops: the held-out crops are mostly body
    assert pairs.tissue.shape == (len(pairs), eq.CROP, eq.CROP) and pairs.tissue.dtype == bool
    assert pairs.tissue.mean() > 0.8


def test_pairs_are_deterministic_and_held_out_only(volumes: list[data.Volume]) -> None:
    from gan.train.data import prepare_slices

    slices = prepare_slices(data.held_out_test(volumes), allow_held_out=True)
    a = eq.make_bench_pairs(slices, 2, 2, seed=5, allow_held_out=True)
    b = eq.make_bench_pairs(slices, 2, 2, seed=5, allow_held_out=True)
    assert np.array_equal(a.pairs.lr.numpy(), b.pairs.lr.numpy())
    assert a.pairs.hr.shape[-1] == eq.CROP and a.pairs.lr.shape[-1] == eq.CROP // 2
    assert set(a.pairs.subjects) <= data.HELD_OUT_TEST_SUBJECTS
    with pytest.raises(ValueError, match="held-out"):
        eq.make_bench_pairs(slices, 2, 1, seed=0)  # without allow_held_out, as in training


def test_missing_weights_name_the_training_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m gan\.train enhancer .*--name enhancer-alpha-x2"):
        eq.run(tmp_path, "enhancer-alpha-x2")
    assert eq.main(["--weights", str(tmp_path), "--name", "nope", "--quick"]) == 2
    assert "python -m gan.train enhancer" in capsys.readouterr().err


def _without_out_and_name(command: str) -> list[str]:
    words = command.split()
    return [w for i, w in enumerate(words) if w not in ("--out", "--name") and words[i - 1] not in ("--out", "--name")]


def test_missing_weights_message_follows_the_shipped_recipe(tmp_path: Path) -> None:
    shipped = load_card(DEFAULT_ROOT / eq.InferenceSettings().enhancer.name / CARD_FILE).training.command
    recipe = eq.shipped_recipe(tmp_path, "mine")
    assert f"--out {tmp_path} --name mine " in recipe
    assert _without_out_and_name(recipe) == _without_out_and_name(shipped)
    with pytest.raises(FileNotFoundError, match=r"--name mine .* --blind$"):
        eq.load_enhancer(tmp_path, "mine", blind=True)
