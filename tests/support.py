"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from aegle.localservices import Mosquitto
from core.settings import IngestSettings, MqttSettings, Settings, StoreSettings

SERVICE_USERS = ("aegle-ingest", "aegle-server", "aegle-test")  # roles: core.accounts.SERVICE_ACCOUNTS
V2 = mqtt.CallbackAPIVersion.VERSION2


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Collector:
    """A paho subscriber (the test harness account) recording every message on a filter, retained ones included."""

    def __init__(self, broker: Mosquitto, topic_filter: str, user: str = "aegle-test") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(V2, client_id=f"collector-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, broker.users[user])
        subscribed = threading.Event()
        suback: list[ReasonCode] = []
        self.client.on_message = lambda _c, _u, m: self.messages.append(m)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: (suback.extend(codes), subscribed.set())
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(5) and not suback[0].is_failure, f"{user} may not subscribe to {topic_filter}: {suback}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()



def ingest_settings(
    broker: Mosquitto, tmp_path: Path, store: StoreSettings | None = None, **ingest: object
) -> Settings:
    """Settings for an ingest worker on ``broker`` with its spool under ``tmp_path``."""
    return Settings(
        mqtt=MqttSettings(host="127.0.0.1", port=broker.port, username="aegle-ingest",
                          password=broker.users["aegle-ingest"]),
        store=store or StoreSettings(backend="sqlite", sqlite_path=tmp_path / "vitals.sqlite"),
        ingest=IngestSettings(spool_path=tmp_path / f"spool-{ingest.get('worker_id', 'w')}.sqlite", **ingest),
    )
