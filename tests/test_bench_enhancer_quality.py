"""bench.enhancer_quality on a tiny enhancer trained here for a few steps (real pydicom/pyradiomics/MNI152 data)."""

from __future__ import annotations

import json
import math
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


def test_quick_run_fields_and_no_leakage(weights: Path, volumes: list[data.Volume]) -> None:
    summary = eq.run(
        weights, "tiny", "tiny-blind", quick=True, volumes=volumes, pairs_per_subject=3, val_pairs_per_subject=2
    )
    json.dumps(summary)  # serialisable
    for key in (
        "psnr_bicubic_db", "psnr_classical_db", "psnr_enhancer_db", "psnr_gain_vs_bicubic_db",
        "psnr_gain_vs_classical_db", "ssim", "ssim_bicubic", "context_gain_db", "shuffled_context_gain_db",
        "classical_parameter",
    ):  # fmt: skip
        assert _finite(summary[key]), key
    assert summary["pairs"] == 3 * len(summary["subjects"]) > 0
    # test pairs come only from the fixed held-out subjects, and all of them (the default data has each)
    assert set(summary["subjects"]) == set(data.HELD_OUT_TEST_SUBJECTS)
    assert summary["pairs_by_modality"]["CT"] > 0 and summary["pairs_by_modality"]["MR"] > 0
    for modality in ("CT", "MR"):
        assert _finite(summary["by_modality"][modality]["enhancer"]["psnr_db"])
    # every pair is in at most one blur group; the groups' pair counts agree across methods
    by_blur = summary["by_blur"]
    assert sum(g["bicubic"]["pairs"] for g in by_blur.values()) <= summary["pairs"]
    for group in by_blur.values():
        assert {m["pairs"] for m in group.values()} == {group["bicubic"]["pairs"]}
    # every test pair belongs to exactly one subject, and each subject's mean is reported for every method
    by_subject = summary["by_subject"]
    assert set(by_subject) == set(summary["subjects"])
    assert sum(s["bicubic"]["pairs"] for s in by_subject.values()) == summary["pairs"]
    for per_method in by_subject.values():
        assert set(per_method) == set(summary["methods"])
        assert _finite(per_method["enhancer"]["psnr_db"])
    # the classical strength was chosen on the val split, which holds no held-out subject
    tuning = summary["classical_tuning"]
    usable = [v for v in volumes if v.modality in ("CT", "MR") and not v.is_rgb]
    val_subjects = {v.subject for v in training_splits(usable)["val"]}
    assert set(tuning["val_subjects"]) <= val_subjects
    assert not set(tuning["val_subjects"]) & data.HELD_OUT_TEST_SUBJECTS
    assert summary["classical_method"] in ("nl_means", "tv_chambolle")
    assert summary["classical_parameter"] in eq.GRIDS[summary["classical_method"]]
    assert summary["psnr_classical_db"] == summary["methods"][summary["classical_method"]]["psnr_db"]
    assert len(summary["weights"]["sha256"]) == 64 and summary["weights"]["name"] == "tiny"


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
