"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from aegle.localservices import Mosquitto
from core.mqtt import connect, disconnect, new_client, subscribe
from core.settings import IngestSettings, Settings, StoreSettings

SERVICE_USERS = ("aegle-ingest", "aegle-server", "aegle-test")  # roles: core.accounts.SERVICE_ACCOUNTS


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Collector:
    """A subscriber recording every message on a filter at QoS 1, retained ones included; logged in as ``user``
    (the test harness account by default; None on a broker without authentication)."""

    def __init__(self, broker: Mosquitto, topic_filter: str, user: str | None = "aegle-test") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._changed = threading.Condition()
        cfg = broker.mqtt_settings(user)
        self.client = new_client(cfg, f"collector-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        connect(self.client, cfg)
        suback = subscribe(self.client, topic_filter)
        assert not suback[0].is_failure, f"{user} may not subscribe to {topic_filter}: {suback}"

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` messages have arrived."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.messages) >= count, timeout)

    def close(self) -> None:
        disconnect(self.client)


def ingest_settings(
    broker: Mosquitto, tmp_path: Path, store: StoreSettings | None = None, **ingest: object
) -> Settings:
    """Settings for an ingest worker on ``broker`` with its spool under ``tmp_path``."""
    return Settings(
        mqtt=broker.mqtt_settings("aegle-ingest"),
        store=store or StoreSettings(backend="sqlite", sqlite_path=tmp_path / "vitals.sqlite"),
        ingest=IngestSettings(spool_path=tmp_path / f"spool-{ingest.get('worker_id', 'w')}.sqlite", **ingest),
    )
