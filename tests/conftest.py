"""Shared fixtures: real Mosquitto and VictoriaMetrics on loopback, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.localservices import Mosquitto, VictoriaMetrics
from tests.support import SERVICE_USERS


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
