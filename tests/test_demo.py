"""``aegle demo`` end to end, as a person watching the terminal sees it: vitals through the real broker and store,
then two real studies through the pipeline with the shipped models, derived series on disk (and in a real
Orthanc when the suite runs in a loopback-only network namespace, as scripts/test does), result events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pydicom

from aegle.localservices import loopback_only_network
from core.context import context_at
from server.store.sqlite import SQLiteStore
from tests.dicom_support import dciodvfy


def test_demo_shows_the_whole_system(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "aegle.cli", "demo", "--duration", "8", "--patients", "2", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=150, env={**os.environ, "AEGLE_INFERENCE__THREADS": "1"},
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]

    # Vitals: both simulated patients live, and a context read back from the store.
    assert "enc-0001" in out and "enc-0002" in out
    assert "read back from the store: heart_rate=" in out
    assert "MISSING model" not in out

    # The result events the viewer received over MQTT, in processing order: the CT, then the 7-slice MR.
    events = json.loads((workdir / "results.json").read_text())
    assert [e["status"] for e in events] == ["ok", "ok"]
    assert [e["counts"]["enhanced"] for e in events] == [1, 7]
    contexts = []
    with SQLiteStore(workdir / "vitals.sqlite") as store:
        for event, (patient, rows) in zip(events, (("enc-0001", 256), ("enc-0002", 32)), strict=True):
            uid = event["derived_series_uid"]
            assert f"derived series {uid}" in out
            assert (event["model"], event["scale"]) == ("enhancer-x2-quality", 2)  # the study path's model
            files = sorted((workdir / "derived" / uid).glob("*.dcm"))
            assert len(files) == event["counts"]["enhanced"]
            for path in files:
                assert dciodvfy(path)[0] == []
                ds = pydicom.dcmread(path)
                assert ds.PatientID == patient and ds.Rows == rows and ds.ImageType[0] == "DERIVED"
            # The context used is the patient's context at acquisition time, as the store gives it now.
            acquired = datetime.fromisoformat(event["acquired_at"])
            expected = context_at(store, patient, acquired, 60, 30)
            assert event["context"]["vector"] == [round(float(v), 6) for v in expected.vector]
            assert expected.completeness > 0
            contexts.append(event["context"]["vector"])
    assert contexts[0] != contexts[1]
    assert out.count("dciodvfy: 0 errors") == 2

    if loopback_only_network():
        assert out.count("Orthanc: stored by STOW-RS; QIDO-RS finds 1 matching series") == 2
    else:
        assert "Orthanc not started" in out
    # No identifiers of the source files' patients anywhere: only the demo's synthetic ids.
    for source_identifier in ("1CT1", "98890234", "CompressedSamples"):
        assert source_identifier not in out + done.stderr
    assert "What you saw" in out and "aegle serve" in out
