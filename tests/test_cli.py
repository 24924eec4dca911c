"""The ``aegle`` command line as an operator uses it: reading vitals and context from a store, training, simulating
(the demo: tests/test_demo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aegle.localservices import Mosquitto
from core import topics
from core.accounts import device
from core.vitals import Sample, parse_vitals, to_ms
from server.store.sqlite import SQLiteStore
from tests.support import Collector, wait_for


def aegle(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aegle.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_models_names_the_served_models_and_what_the_registry_holds(tmp_path: Path) -> None:
    done = aegle("models")  # the shipped registry with the default settings
    assert done.returncode == 0, done.stderr
    report = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["role"], e["name"], e["version"], e["paths"], e["status"]) for e in report] == [
        ("enhancer", "enhancer-x2", "3.1.0", ["live"], "ok"),
        ("quality_enhancer", "enhancer-x2-quality", "1.0.0", ["study"], "ok"),
        ("triage", "triage-classifier", "0.1.0", ["study", "classify"], "ok"),
    ]
    assert all(len(e["sha256"]) == 64 for e in report)
    other = aegle("models", env={"AEGLE_INFERENCE__ENHANCER__VERSION": "9.0.0",
                                 "AEGLE_INFERENCE__TRIAGE__NAME": "no-such-model"})  # fmt: skip
    assert other.returncode == 1
    enhancer, _, triage = (json.loads(line) for line in other.stdout.splitlines())
    assert enhancer["status"] == "other-version" and enhancer["registry_version"] == "3.1.0"
    assert triage["status"] == "missing" and "no-such-model" in triage["reason"]


def test_models_shows_which_path_uses_the_quality_model_and_needs_it_only_then() -> None:
    quality = {"AEGLE_INFERENCE__QUALITY_ENHANCER__NAME": "no-such-quality-model"}
    done = aegle("models", env=quality)  # the study path uses it (study_model defaults to quality): exit 1
    assert done.returncode == 1
    report = {e["role"]: e for e in map(json.loads, done.stdout.splitlines())}
    assert [(role, e["paths"], e["status"]) for role, e in report.items()] == [
        ("enhancer", ["live"], "ok"), ("quality_enhancer", ["study"], "missing"),
        ("triage", ["study", "classify"], "ok"),
    ]  # fmt: skip
    assert "no-such-quality-model" in report["quality_enhancer"]["reason"]
    fast = aegle("models", env=quality | {"AEGLE_INFERENCE__STUDY_MODEL": "fast"})  # no path uses it: exit 0
    assert fast.returncode == 0, fast.stdout
    assert [(e["role"], e["paths"]) for e in map(json.loads, fast.stdout.splitlines())][:2] == [
        ("enhancer", ["live", "study"]), ("quality_enhancer", [])]


def test_context_and_vitals_from_the_store(tmp_path: Path) -> None:
    db = tmp_path / "vitals.sqlite"
    t0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    with SQLiteStore(db) as store:
        store.write([Sample("enc-9", "ward-1", "mon-9", "8867-4", to_ms(t0 + timedelta(seconds=i)), 80 + i, f"m{i}")
                     for i in range(10)])
    env = {"AEGLE_STORE__SQLITE_PATH": str(db)}
    done = aegle("context", "enc-9", "--at", "2026-11-21T10:00:09Z", env=env)
    assert done.returncode == 0, done.stderr
    ctx = json.loads(done.stdout)
    assert ctx["levels"]["heart_rate"] == 84.5 and ctx["ages_s"]["heart_rate"] == 0
    done = aegle("vitals", "enc-9", "--from", "2026-11-21T10:00:02Z", "--to", "2026-11-21T10:00:04Z", env=env)
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == [82, 83, 84]
    naive = aegle("context", "enc-9", "--at", "2026-11-21T10:00:09", env=env)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr


def test_train_enhancer_through_the_cli(tmp_path: Path) -> None:
    done = aegle("train", "enhancer", "--steps", "3", "--batch-size", "4", "--val-every", "3", "--val-pairs", "4",
                 "--out", str(tmp_path), "--data", "pydicom", "--threads", "2")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary and (tmp_path / "enhancer-alpha-x2" / "card.json").exists()


def test_simulate_publishes_as_each_device(broker: Mosquitto, tmp_path: Path) -> None:
    """``aegle simulate`` logs in as every simulated device and its messages arrive on their own topics."""
    devices = ["mon-1", "wear-1"]
    credentials = tmp_path / "devices.json"
    credentials.write_text(json.dumps(broker.add_accounts([device(d, "ward-7") for d in devices])))
    collector = Collector(broker, topics.vitals_filter("ward-7"))
    try:
        done = aegle("simulate", "--patients", "1", "--rate", "5", "--duration", "2", "--site", "ward-7",
                     "--credentials", str(credentials),
                     env={"AEGLE_MQTT__HOST": "127.0.0.1", "AEGLE_MQTT__PORT": str(broker.port)})
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(collector.messages) >= 15, 10, "the simulated messages")
    finally:
        collector.close()
    assert {m.topic for m in collector.messages} == {topics.vitals("ward-7", d) for d in devices}
    for message in collector.messages:
        assert parse_vitals(message.payload).device_id == message.topic.split("/")[3]


def test_train_hybrid_gan_through_the_cli(tmp_path: Path) -> None:
    """``aegle train hybrid-gan`` reaches gan.train_hybrid: a few steps write all three stages to the registry."""
    done = aegle("train", "hybrid-gan", "--out", str(tmp_path), "--name", "tiny", "--per-subject", "16",
                 "--dcgan-steps", "2", "--cgan-steps", "2", "--srgan-steps", "2", "--batch-size", "4",
                 "--checkpoint-every", "2", "--log-every", "1", "--threads", "1", timeout=300)
    assert done.returncode == 0, done.stderr
    for stage in ("dcgan", "cgan", "srgan"):
        assert (tmp_path / f"tiny-{stage}" / "card.json").is_file()


def test_export_onnx_with_parity_and_tensorrt_refusal(tmp_path: Path) -> None:
    """``aegle export`` writes a parity-checked ONNX file of a shipped model that ONNX Runtime runs at any size;
    ``--tensorrt`` says plainly why it cannot run on a machine without CUDA."""
    import numpy as np
    import onnxruntime as ort

    done = aegle("export", "triage-classifier", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    for batch, side in ((1, 128), (3, 96)):
        (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((batch, 1, side, side), np.float32)})
        assert out.shape == (batch, 4)
    refused = aegle("export", "enhancer-x2", "--tensorrt", "--out", str(tmp_path))
    assert refused.returncode == 2 and "TensorRT export is not possible here" in refused.stderr
    assert "CUDA" in refused.stderr or "torch_tensorrt" in refused.stderr
