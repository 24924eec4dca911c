"""bench.hybrid_gan --quick on the shipped weights, with FID/IS through a stand-in ONNX network (not Inception)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import hybrid_gan
from gan.models.hybrid import PARAMETER_BUDGET
from tests.test_fid import _export


def test_quick_bench_prints_its_figures_as_the_last_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stand_in, _net = _export(tmp_path)  # a tiny random network with Inception's I/O contract: plumbing only
    assert hybrid_gan.main(["--quick", "--n", "16", "--inception", str(stand_in)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["generator_path_parameters"] == 628_201 and summary["parameter_budget"] == PARAMETER_BUDGET
    assert summary["within_budget"] is True and summary["synthetic"] is True
    assert summary["images_per_s"] > 0 and summary["output_shape"] == [3, 128, 128]
    assert summary["held_out_subjects"] == ["pyradiomics:brain2", "pyradiomics:lung2"]
    criteria = summary["criteria"]
    assert criteria["candidates"] == 80 and criteria["kept"] == 16 and 0.0 <= criteria["real_in_top20"] <= 1.0
    # The criteria keep the candidates that score higher on every criterion (by rank, so medians follow).
    assert all(criteria["kept_median"][k] >= criteria["rejected_median"][k] for k in criteria["kept_median"])
    for name in ("final_128_to_64", "cgan_64", "baseline_real_train"):
        figures = summary["fidelity"][name]
        assert figures["n"] == 16 and math.isfinite(figures["intensity_w1"]) and figures["mean_gradient"] > 0
    assert 0 < summary["fidelity"]["final_128_to_64"]["nearest_train_ssim_median"] <= 1
    assert isinstance(summary["fid"], float) and summary["fid"] >= 0  # the stand-in's FID: plumbing, no quality claim
    assert summary["fid_detail"]["n_real"] == 128 and summary["fid_detail"]["n_fake"] == 16
