"""The MQTT seam (core.mqtt) against a real Mosquitto: logins, TLS, probes, background connection, and the
persistent session with batched acknowledgements. The bounded-backlog publisher has its own file (test_publisher)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from aegle.localservices import LOOPBACK, Mosquitto, free_port
from core import topics
from core.mqtt import (
    MqttConnectError,
    MqttPublisher,
    PersistentSubscriber,
    connect,
    connect_nowait,
    disconnect,
    new_client,
    probe,
    subscribe,
)
from core.settings import MqttSettings
from tests.support import SERVICE_USERS, wait_for

USER = "aegle-test"  # the test harness account: may publish and subscribe under aegle/v1/#
TOPIC = topics.vitals("ward-1", "mon-1")


class TlsMosquitto(Mosquitto):
    """Mosquitto with a second listener, TLS on :attr:`tls_port` with a self-signed certificate for 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, service_users=SERVICE_USERS)
        self.tls_port = free_port()
        self.cert, self.key = self.workdir / "broker.crt", self.workdir / "broker.key"
        openssl = shutil.which("openssl")
        assert openssl is not None, "openssl makes the test certificate (scripts/setup installs it)"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}",
             "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip

    def config_text(self) -> str:
        tls = f"listener {self.tls_port} {LOOPBACK}\ncertfile {self.cert}\nkeyfile {self.key}\n"
        return super().config_text() + tls

    def tls_settings(self, user: str = USER) -> MqttSettings:
        """Settings that log in as ``user`` over TLS."""
        return self.mqtt_settings(user).model_copy(update={"port": self.tls_port, "tls": True})


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMosquitto]:
    with TlsMosquitto(tmp_path_factory.mktemp("mosquitto-tls")) as mosquitto:
        yield mosquitto  # type: ignore[misc]


def login(broker: Mosquitto, username: str, password: str) -> MqttSettings:
    return MqttSettings(host=LOOPBACK, port=broker.port, username=username, password=password)


def test_a_client_logs_in_with_the_configured_password_or_password_file(broker: TlsMosquitto, tmp_path: Path) -> None:
    cfg = broker.mqtt_settings(USER)
    client = connect(new_client(cfg, "seam-login"), cfg)
    assert client.is_connected()
    disconnect(client)
    secret = tmp_path / "secret"
    secret.write_text(broker.users[USER] + "\n")
    from_file = MqttSettings(host=LOOPBACK, port=broker.port, username=USER, password_file=secret)
    client = connect(new_client(from_file, "seam-login-file"), from_file)
    assert client.is_connected()
    disconnect(client)


def test_a_refused_login_is_an_error_with_the_brokers_reason_and_no_retries(broker: TlsMosquitto) -> None:
    cfg = login(broker, USER, "wrong")
    attempts = []
    client = new_client(cfg, "seam-refused")
    client.on_connect = lambda _c, _u, _f, reason, _p: attempts.append(reason)
    with pytest.raises(MqttConnectError, match=r"'seam-refused'.*(Not authorized|Bad user name or password)") as e:
        connect(client, cfg, timeout=5)
    assert e.value.code in (0x86, 0x87)
    time.sleep(0.6)  # a reconnection would have been tried by now (the first after 0.2 s)
    assert len(attempts) == 1 and not client.is_connected()  # the client's own on_connect saw the refusal


def test_probe_says_connected_refused_or_unreachable(broker: TlsMosquitto) -> None:
    assert probe(broker.mqtt_settings(USER), 5, "probe-1") == (True, f"connected to {LOOPBACK}:{broker.port}")
    ok, reason = probe(login(broker, USER, "wrong"), 5, "probe-2")
    assert not ok and reason.startswith(f"broker {LOOPBACK}:{broker.port} refused the connection: ")
    port = free_port()
    ok, reason = probe(MqttSettings(host=LOOPBACK, port=port), 5, "probe-3")
    assert not ok and reason.startswith(f"cannot reach broker {LOOPBACK}:{port}: ConnectionRefusedError")


def test_tls_is_verified_against_the_trusted_certificates(
    broker: TlsMosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = broker.tls_settings()
    with pytest.raises(MqttConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # self-signed, not trusted yet
        connect(new_client(cfg, "seam-tls-untrusted"), cfg)
    monkeypatch.setenv("SSL_CERT_FILE", str(broker.cert))  # the system's CA certificates, for this process
    assert probe(cfg, 5, "seam-tls-probe")[0]
    plain = cfg.model_copy(update={"tls": False})  # TLS off against the TLS listener: no MQTT answer
    with pytest.raises(MqttConnectError, match="no CONNACK"):
        connect(new_client(plain, "seam-plain-on-tls"), plain, timeout=1)
    on_plain = broker.tls_settings().model_copy(update={"port": broker.port})  # TLS on against a plain listener
    with pytest.raises(MqttConnectError, match=r"SSL|reset by peer"):  # the broker drops the TLS handshake
        connect(new_client(on_plain, "seam-tls-on-plain"), on_plain)


def test_publisher_and_subscriber_over_tls(broker: TlsMosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(broker.cert))
    cfg = broker.tls_settings()
    received: list[bytes] = []
    client = new_client(cfg, "seam-tls-sub")
    client.on_message = lambda _c, _u, m: received.append(m.payload)
    connect(client, cfg)
    try:
        assert [c.value for c in subscribe(client, TOPIC)] == [1]  # granted at QoS 1
        with MqttPublisher(cfg, "seam-tls-pub", max_backlog=8) as pub:
            for i in range(100):
                pub.publish(TOPIC, b"%d" % i)
            assert pub.flush(10) and pub.peak_backlog <= 8 and not pub.refused
        wait_for(lambda: len(received) == 100, 10, "100 messages over TLS")
    finally:
        disconnect(client)
    assert received == [b"%d" % i for i in range(100)]


def test_subscribe_returns_each_filters_reason_code(broker: TlsMosquitto) -> None:
    cfg = broker.mqtt_settings("aegle-ingest")
    client = connect(new_client(cfg, "seam-suback"), cfg)
    try:
        codes = subscribe(client, [topics.shared_vitals_filter(), topics.vitals_filter()])
    finally:
        disconnect(client)
    assert [c.value for c in codes] == [1, 0x87]  # its share group yes, the plain vitals filter no


def test_connecting_without_waiting_retries_an_unreachable_broker_only_when_asked(tmp_path: Path) -> None:
    """The service's result events wait for a broker that is not up yet; a worker fails at once."""
    later = Mosquitto(tmp_path / "later", service_users=SERVICE_USERS)
    cfg = later.mqtt_settings(USER)
    with pytest.raises(MqttConnectError, match="ConnectionRefusedError"):
        connect_nowait(new_client(cfg, "seam-unreachable"), cfg)
    connected = threading.Event()
    client = new_client(cfg, "seam-background")
    client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
    connect_nowait(client, cfg, retry_unreachable=True)  # nothing listens yet: not an error
    try:
        assert not connected.wait(0.5)
        with later:
            assert connected.wait(15), "not connected once the broker was up"
    finally:
        disconnect(client)


@dataclass(slots=True)
class Got:
    connection: int
    mid: int
    payload: bytes


class Inbox(PersistentSubscriber):
    """The smallest persistent subscriber: keeps what arrives, acknowledges when told."""

    def __init__(self, cfg: MqttSettings, worker_id: str, receive_maximum: int) -> None:
        self.received: list[Got] = []
        super().__init__(cfg, worker_id, TOPIC, "test", session_expiry_s=60, receive_maximum=receive_maximum,
                         log=logging.getLogger("test.inbox"))  # fmt: skip

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append(Got(self._connection, msg.mid, msg.payload))

    def start(self) -> Inbox:
        self._connect(10)
        return self

    def take(self, count: int) -> list[Got]:
        """Wait for ``count`` messages, check that no more came, hand them over."""
        wait_for(lambda: len(self.received) >= count, 10, f"{count} messages")
        time.sleep(0.3)
        got, self.received = self.received, []
        assert len(got) == count, [g.payload for g in got]
        return got


def test_persistent_session_resumes_and_acknowledgements_count_on_their_own_connection(broker: TlsMosquitto) -> None:
    cfg = broker.mqtt_settings(USER)
    inbox = Inbox(cfg, "seam-inbox", receive_maximum=3).start()
    publisher = MqttPublisher(cfg, "seam-inbox-pub")
    try:
        for i in range(5):
            publisher.publish(TOPIC, b"a%d" % i)
        first = inbox.take(3)  # Receive Maximum: no more than 3 unacknowledged
        inbox._ack(first)  # one write for the batch: the other two follow
        inbox._ack(inbox.take(2))

        inbox.stop()  # the session stays: what is published meanwhile waits in the broker
        for i in range(4):
            publisher.publish(TOPIC, b"b%d" % i)
        assert publisher.flush(10)
        inbox._connect(10)
        waiting = inbox.take(3)
        assert [g.payload for g in waiting] == [b"b0", b"b1", b"b2"]

        inbox.stop()  # unacknowledged: the broker redelivers them on the next connection
        inbox._connect(10)
        inbox._ack(waiting)  # acknowledgements of the previous connection are dropped, not sent
        again = inbox.take(3)
        assert [g.payload for g in again] == [b"b0", b"b1", b"b2"]
        assert {g.connection for g in again} == {inbox._connection} != {g.connection for g in waiting}
        inbox._ack(again)
        assert [g.payload for g in inbox.take(1)] == [b"b3"]
    finally:
        publisher.close()
        inbox._disconnect(end_session=True)
