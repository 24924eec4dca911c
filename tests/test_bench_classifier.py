"""bench.classifier --quick end to end: real pyradiomics patches, hybrid-GAN weights trained here for two steps,
and the shipped triage weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import classifier as bench


def test_quick_run_reports_both_arms_and_triage_with_intervals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gan.train.hybrid import main as train_hybrid

    hybrid = tmp_path / "hybrid"
    assert train_hybrid(["--out", str(hybrid), "--dcgan-steps", "2", "--cgan-steps", "2", "--srgan-steps", "2",
                         "--per-subject", "8", "--threads", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert bench.main(["--quick", "--hybrid-root", str(hybrid)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)

    assert summary["seeds"] == [0, 1] and summary["n_test"] == 80
    assert summary["test_subjects"] == ["pyradiomics:brain2", "pyradiomics:lung2"]
    for key in ("lesion_auc_plain", "lesion_auc_augmented", "lesion_f1_plain", "lesion_f1_augmented",
                "triage_accuracy", "lesion_auc_gain", "triage_enhance_auc"):  # fmt: skip
        value, (low, high) = summary[key], summary[f"{key}_ci"]
        assert all(math.isfinite(v) for v in (value, low, high)), key
        assert low <= value + 1e-12 and value <= high + 1e-12, (key, value, low, high)
    for arm in ("plain", "augmented"):
        assert len(summary["lesion"][arm]["per_seed"]["auc"]) == 2
    assert summary["triage_n_test"] == 10 * 4  # 10 windows for each held-out subject
    assert 0.0 <= summary["triage_accuracy"] <= 1.0
