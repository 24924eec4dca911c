"""Shared helpers of the HTTP service tests: a temporary model registry, settings, an in-process service with a
token per role, uvicorn on loopback, request bodies and vitals. The fixtures built on them are in conftest.py.

The models are the real architectures (``enhancer``, ``se-classifier``, the hybrid GAN stages) with random-init
weights saved into a temporary registry through ``gan.registry.save_model``: real plumbing (registry, ONNX
export + parity, ONNX Runtime, batching), not meaningful pictures — quality is measured by the benches.
"""

from __future__ import annotations

import io
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from aegle.localservices import free_port
from core.settings import (
    DEFAULT_ENHANCER,
    DEFAULT_QUALITY_ENHANCER,
    ApiSettings,
    DashboardSettings,
    InferenceSettings,
    MqttSettings,
    Settings,
    StoreSettings,
)
from core.vitals import Sample, to_ms
from server.api import create_app
from server.api.tokens import ROLES
from server.inference import InferenceEngine
from server.store import open_store

PATIENT = "enc-7f3a91"  # an identifier that must never reach a log line
QUALITY_CONFIG = {"channels": 16, "n_blocks": 2}  # the test quality enhancer's (the fast one has the defaults)


def save_test_models(root: Path) -> None:
    """The served architectures with random-init weights (seeded), saved through the real registry."""
    import torch

    from gan.models import build
    from gan.registry import save_model
    from gan.synthesis import STAGES
    from gan.triage import TRIAGE_CLASSES, card_input

    torch.manual_seed(0)
    training = {"data": "none: random initialisation (test plumbing)", "command": "pytest", "seed": 0}
    enhancer_input = {"channels": 1, "scale": 2, "context_size": 22, "normalisation": "[0, 1]"}
    save_model(build("enhancer"), root, DEFAULT_ENHANCER, "enhancer", {},
               {"version": "0.0.0-test", "training": training, "input": enhancer_input, "synthetic_output": False})
    # The quality operating point: another enhancer (fewer, narrower blocks), so a test can tell which one ran.
    save_model(build("enhancer", **QUALITY_CONFIG), root, DEFAULT_QUALITY_ENHANCER, "enhancer", QUALITY_CONFIG,
               {"version": "0.0.1-test", "training": training, "input": enhancer_input, "synthetic_output": False})
    classes = {"num_classes": len(TRIAGE_CLASSES)}
    save_model(build("se-classifier", **classes), root, "triage-classifier", "se-classifier", classes,
               {"version": "0.0.0-test", "training": training, "input": card_input(), "synthetic_output": False})
    gan_input = {"channels": 3, "scale": 1, "context_size": 0, "normalisation": "[-1, 1]"}
    for stage, (arch, _) in STAGES.items():
        save_model(build(arch), root, f"hybrid-gan-{stage}", arch, {},
                   {"version": "0.0.0-test", "training": training, "input": gan_input, "synthetic_output": True})


def inference_settings(model_root: Path, cache: Path, **overrides: Any) -> InferenceSettings:
    """The test registry's models, any version (``0.0.0-test``; the quality enhancer ``0.0.1-test``), both
    operating points served (the study path uses the quality one), one thread."""
    served = {"enhancer": {"version": None}, "quality_enhancer": {"version": None}, "triage": {"version": None}}
    return InferenceSettings(weights_dir=model_root, cache_dir=cache, threads=1, **(served | overrides))


def service_settings(tmp_path: Path, **api: Any) -> Settings:
    """Settings with every file under ``tmp_path``; the broker port is closed unless a test sets one."""
    return Settings(
        api=ApiSettings(
            tokens_path=tmp_path / "tokens.sqlite", audit_path=tmp_path / "audit.sqlite",
            studies_path=tmp_path / "studies.sqlite", token_secret_file=tmp_path / "token-secret",
            probe_timeout_s=1.0, **api,
        ),
        store=StoreSettings(backend="sqlite", sqlite_path=tmp_path / "vitals.sqlite"),
        mqtt=MqttSettings(host="127.0.0.1", port=free_port()),
        dashboard=DashboardSettings(frames_path=tmp_path / "frames"),
    )  # fmt: skip


class Service:
    """An app with one token per role and a TestClient (lifespan run)."""

    def __init__(self, settings: Settings, engine: InferenceEngine) -> None:
        settings.inference = engine.settings  # the same registry (the hybrid GAN is loaded from it)
        self.settings = settings
        self.app = create_app(settings, engine=engine)
        self.state = self.app.state.aegle
        self.tokens = {role: self.state.tokens.create(f"{role}-1", role) for role in ROLES}
        self.client = TestClient(self.app, client=("127.0.0.1", 50000))

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


class LiveServer:
    """uvicorn on a free loopback port in a thread; stopped by the test."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, access_log=False, log_config=None)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, arr)
    return buffer.getvalue()


def real_slice(size: int = 64) -> np.ndarray:
    """A real image (scikit-image's camera) cropped to ``size``², float in [0, 1]."""
    from skimage import data

    return (data.camera()[200 : 200 + size, 200 : 200 + size] / 255.0).astype(np.float32)


def derived_model(ds: Dataset) -> tuple[str, str]:
    """The model (name, version) a derived DICOM instance names: Aegle's Contributing Equipment item, checked
    against its private block and its Derivation Description."""
    from server.study.derived import PRIVATE_CREATOR, PRIVATE_GROUP

    item = ds.ContributingEquipmentSequence[-1]
    named = (str(item.ManufacturerModelName), str(item.SoftwareVersions))
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert (block[0x01].value, block[0x02].value) == named
    assert f"Aegle {named[0]} {named[1]}, x" in ds.DerivationDescription
    return named


def seed_vitals(settings: Settings, patient: str, end: datetime, n: int = 30) -> None:
    """Heart-rate and SpO2 samples for ``patient`` in the minutes before ``end``."""
    store = open_store(settings.store)
    try:
        samples = []
        for i in range(n):
            t = to_ms(end - timedelta(seconds=10 * i))
            samples.append(Sample(patient, "ward-1", "monitor-1", "8867-4", t, 72.0 + i % 5, f"m{i}"))
            samples.append(Sample(patient, "ward-1", "monitor-1", "59408-5", t, 97.0, f"s{i}"))
        store.write(samples)
    finally:
        store.close()
