"""Shared fixtures: real Mosquitto and VictoriaMetrics on loopback, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.localservices import Mosquitto, VictoriaMetrics
from server.settings import IngestSettings, MqttSettings, Settings, StoreSettings

SERVICE_USERS = ("aegle-ingest", "aegle-test")


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


def ingest_settings(broker: Mosquitto, tmp_path: Path, store: StoreSettings | None = None, **ingest: object) -> Settings:
    """Settings for an ingest worker on ``broker`` with its spool under ``tmp_path``."""
    return Settings(
        mqtt=MqttSettings(host="127.0.0.1", port=broker.port, username="aegle-ingest",
                          password=broker.users["aegle-ingest"]),
        store=store or StoreSettings(backend="sqlite", sqlite_path=tmp_path / "vitals.sqlite"),
        ingest=IngestSettings(spool_path=tmp_path / f"spool-{ingest.get('worker_id', 'w')}.sqlite", **ingest),
    )
