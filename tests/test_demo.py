"""``aegle demo`` end to end in its short mode, as a new user runs it: a real Mosquitto, ingest worker, the service
under uvicorn, an edge node and (inside scripts/test's loopback-only namespace) a real Orthanc; two real-size
series built from the pyradiomics volumes; the report, pictures, summary and log it leaves in its work directory,
and screenshots of the dashboard's views taken in Debian's Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from aegle.localservices import loopback_only_network
from tests.dicom_support import dciodvfy

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|\b(DEBUG|INFO|WARNING|ERROR)\b [\w.]+ ")


def test_demo_short_mode_writes_a_truthful_self_contained_report(tmp_path: Path) -> None:
    workdir, shots = tmp_path / "demo", tmp_path / "screenshots"
    done = subprocess.run(
        [sys.executable, "-m", "aegle.cli", "demo", "--duration", "6", "--patients", "2", "--workdir", str(workdir),
         "--screenshots", str(shots)],
        capture_output=True, text=True, timeout=170, env={**os.environ, "AEGLE_INFERENCE__THREADS": "1"},
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:] + _log_tail(workdir)

    # Clean terminal output: no warnings, tracebacks or log-format lines; the log is named and holds them.
    assert "Warning" not in out and "Traceback" not in out and "warnings.warn" not in out
    assert not [line for line in out.splitlines() if LOG_LINE.search(line)]
    log_path = workdir / "demo.log"
    assert str(log_path) in out and log_path.stat().st_size > 0
    assert "/dashboard/login#token=" not in out  # not a terminal: no login URL

    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["vitals"]["messages_ingested"] > 0
    studies = {s["label"]: s for s in summary["studies"]}
    assert set(studies) == {"CT", "MR"}
    assert {s["route"] for s in studies.values()} == {"edge", "stow"}
    in_namespace = loopback_only_network()
    for label, study in studies.items():
        assert study["status"] == "ok" and study["slices"] == 20 and study["matrix"] == "128×128", study
        assert study["model"] and study["context"] is not None and study["context"]["completeness"] > 0
        assert study["triage_probabilities"], f"{label}: triage gave no decision: {study['triage_text']}"
        assert "What the context did" in study["context_effect_text"]
        assert study["in_orthanc"] is in_namespace
        # The derived series as the PACS returned it, on disk: 20 instances, ×2, clean for dciodvfy.
        files = sorted(Path(study["files"]).glob("*.dcm"))
        assert sorted(p.stem for p in files) == study["derived_sop_instance_uids"] and len(files) == 20
        for path in files[:3]:
            ds = pydicom.dcmread(path)
            assert str(ds.SeriesInstanceUID) == study["derived_series_uid"] and ds.PatientID == study["patient"]
            assert (ds.Rows, ds.Columns) == (256, 256) and ds.ImageType[0] == "DERIVED"
            assert dciodvfy(path)[0] == []
        # Pictures: before (bicubic to the output size) and after, 256², not blank, not identical.
        pictures = {name: np.asarray(Image.open(p)) for name, p in study["pictures"].items()}
        assert pictures["before"].shape == pictures["after"].shape == (256, 256)
        assert pictures["before | after"].shape[0] == 256 and pictures["before | after"].shape[1] > 512
        for image in pictures.values():
            assert image.std() > 10
        assert not np.array_equal(pictures["before"], pictures["after"])
    if not in_namespace:
        assert "Orthanc skipped" in out

    # The report: self-contained (no external resource), with the pictures and charts inline.
    report = (workdir / "report.html").read_text()
    assert str(workdir / "report.html") in out
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", report)
    assert report.count("src='data:image/png;base64,") == 6 and report.count("<svg") == 2
    assert "Not for diagnostic use" in report and "missing channels" in report
    # The dashboard's views in Chromium (the README's pictures), each filled in, not blank.
    for view in ("ward", "studies", "viewer", "operator"):
        image = np.asarray(Image.open(shots / f"{view}.png").convert("L"))
        assert image.shape[1] == 1280 and image.shape[0] >= 860 and image.std() > 20, view
    assert f"screenshots: {shots / 'ward.png'}" in out
    # Only the synthetic patients are named.
    assert set(re.findall(r"enc-\d{4}", out + report)) <= {"enc-0001", "enc-0002"}


def _log_tail(workdir: Path) -> str:
    path = workdir / "demo.log"
    return path.read_text()[-4000:] if path.exists() else ""
