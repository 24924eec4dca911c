"""The service benchmarks run end to end on real processes and report sane figures (never timed).

``bench.study_latency``: a real Orthanc and ``aegle serve`` with the shipped weights; ``bench.server_load``: two
``aegle serve`` processes (micro-batching on and off). Both run as ``python -m`` like a user runs them, in small
modes, with one inference thread; the suite already runs in a loopback-only namespace (scripts/test), so the
study bench must not need to re-execute itself. One ONNX cache for the module: the first start exports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench._service import brain_mr
from bench.study_latency import BRAIN_MR, SLICES, mr_study, mr_template
from tests.dicom_support import assert_dciodvfy_clean

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def run_bench(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args``; its last stdout line, parsed as JSON."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_benchmark_study_is_a_valid_mr_series_of_the_real_volume(tmp_path: Path) -> None:
    volume, spacing = brain_mr(BRAIN_MR)[BRAIN_MR]
    template = mr_template()
    study, again = mr_study(template, volume, spacing), mr_study(template, volume, spacing)
    assert len(study) == SLICES == 20
    assert len({str(ds.SOPInstanceUID) for ds in study}) == SLICES
    assert len({(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)) for ds in study}) == 1
    assert study[0].StudyInstanceUID != again[0].StudyInstanceUID  # every run is a new study
    first = (volume.shape[0] - SLICES) // 2
    for k, ds in enumerate(study):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        assert (ds.Rows, ds.Columns) == (256, 256)
        np.testing.assert_array_equal(ds.pixel_array, volume[first + k])  # the real pixels, unchanged
    assert_dciodvfy_clean(study[:3], tmp_path)  # zero errors (two warnings come from the real header)


def test_study_latency_every_study_ends_as_a_complete_derived_series_in_orthanc(cache_dir: Path) -> None:
    out = run_bench("bench.study_latency", "--runs", "2", "--threads", "1", "--cache-dir", str(cache_dir))
    assert out["bench"] == "study_latency" and out["runs"] == 2
    assert out["network"] in ("already in a loopback-only namespace", "re-executed under unshare -n")
    assert out["missing_models"] == {}, out["missing_models"]
    assert set(out["models"]) == {"enhancer-x2", "enhancer-x2-quality", "triage-classifier"}
    assert out["study"]["slices"] == 20 and out["study"]["matrix"] == [256, 256]
    # Every run: STOW-RS accepted in full, and its derived series, ×2, complete in Orthanc.
    assert out["http_status"] == [200, 200] and out["failures"] == [] and out["warnings"] == []
    assert out["complete_runs"] == 2 and out["derived_instances"] == [20, 20]
    assert out["derived_matrix"] == [[512, 512]]
    assert all(s > 0 for s in out["runs_s"]) and all(s > 0 for s in out["runs_response_s"])
    assert 0 < out["p50_s"] <= out["p95_s"]
    assert 0 < out["response_p50_s"] <= out["response_p95_s"]
    stages = out["stages_p50_s"]
    assert stages["triage"] > 0 and stages["enhance"] > 0
    assert stages["handler"] >= stages["triage"] + stages["enhance"]
    assert out["cpu_s_per_study_p50"]["service"] > 0
    assert out["rss_mb"] >= out["rss_now_mb"] > 0


def test_server_load_measures_both_modes_and_back_pressure_is_503_with_retry_after(cache_dir: Path) -> None:
    # More clients than the queue holds: refusals must come as 503 + Retry-After, never as errors.
    out = run_bench("bench.server_load", "--clients", "8", "--seconds", "3", "--queue-max", "2", "--threads", "1",
                    "--cache-dir", str(cache_dir))  # fmt: skip
    assert out["bench"] == "server_load"
    assert out["rps_batched"] > 0 and out["rps_unbatched"] > 0
    assert out["errors"] == 0 and out["refused_503_without_retry_after"] == 0
    assert out["refused_503"] > 0
    assert out["rss_mb"] > 0 and out["rss_goal_mb"] == 1024
    for name in ("batched", "unbatched"):
        phase = out["phases"][name]
        assert phase["missing_models"] == {}
        assert {"enhancer-x2", "triage-classifier", "hybrid-gan"} <= set(phase["models"])
        assert 0 < phase["p50_s"] <= phase["p95_s"]
        assert phase["service_cpu_ms_per_request"] > 0
    assert out["phases"]["unbatched"]["mean_enhancer_batch"] == 1.0
    assert out["phases"]["batched"]["mean_enhancer_batch"] >= 1.0
