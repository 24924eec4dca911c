"""Shared fixtures: real Mosquitto, VictoriaMetrics and Orthanc on loopback, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aegle.localservices import Mosquitto, Orthanc, VictoriaMetrics
from tests.support import SERVICE_USERS

if TYPE_CHECKING:
    from server.inference import InferenceEngine
    from tests.api_support import Service


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto with authentication and ACL on; users ``aegle-ingest`` and ``aegle-test`` are registered."""
    mosquitto = Mosquitto(tmp_path / "mosquitto", service_users=SERVICE_USERS)
    for user in SERVICE_USERS:
        mosquitto.add_user(user)
    with mosquitto:
        yield mosquitto


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """One VictoriaMetrics for the session (tests use distinct patient ids)."""
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria-metrics")) as vm:
        yield vm


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc with DICOMweb for the session (tests store distinct studies); series are stable after 1 s.

    Session-scoped: it starts in about 0.4 s but takes about 3 s to stop. Only inside ``unshare -n``
    (scripts/test): elsewhere ``Orthanc.start`` refuses.
    """
    with Orthanc(tmp_path_factory.mktemp("orthanc"), stable_age=1) as pacs:
        yield pacs


# The HTTP service (helpers in tests/api_support.py, imported lazily: most tests need neither torch nor FastAPI).


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary registry with the served architectures at random-init weights."""
    from tests.api_support import save_test_models

    root = tmp_path_factory.mktemp("registry")
    save_test_models(root)
    return root


@pytest.fixture(scope="session")
def engine(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceEngine]:
    """One inference engine (ONNX Runtime, one thread) on ``model_root`` for the session."""
    from server.inference import InferenceEngine
    from tests.api_support import inference_settings

    eng = InferenceEngine.from_settings(inference_settings(model_root, tmp_path_factory.mktemp("cache")))
    yield eng
    eng.close()


@pytest.fixture
def service(tmp_path: Path, engine: InferenceEngine) -> Iterator[Service]:
    """The app in-process (lifespan run) with every file under ``tmp_path`` and one token per role."""
    from tests.api_support import Service, service_settings

    svc = Service(service_settings(tmp_path), engine)
    with svc.client:
        yield svc
