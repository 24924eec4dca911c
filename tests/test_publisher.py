"""The bounded-backlog publisher and the device fleet against a real Mosquitto on loopback."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from aegle.localservices import LOOPBACK, Mosquitto, free_port
from core import topics
from core.accounts import device
from core.vitals import parse_vitals
from sensors.publisher import DeviceFleet, MqttConnectError, MqttPublisher
from sensors.simulator import Faults, Simulator, run

SITE = "ward-1"
OBSERVER = "aegle-test"  # the test harness account: may watch every vitals topic


class Collector:
    """A paho subscriber that records every message it receives on ``topic_filter`` (QoS 1)."""

    def __init__(self, port: int, topic_filter: str, username: str | None = None, password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{time.monotonic_ns()}", protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscription not acknowledged"

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, codes: list, props: object) -> None:
        assert not codes[0].is_failure, codes
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` messages have arrived."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.messages) >= count, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker without authentication."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-anon"), anonymous=True) as broker:
        yield broker  # type: ignore[misc]


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(2, site=SITE, seed=31, faults=Faults(duplicate_fraction=0.05, late_fraction=0.05))


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> Iterator[Mosquitto]:
    """A broker with passwords and the policy: one account per simulated device (at SITE) plus the observer."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-auth"), service_users=[OBSERVER])
    broker.add_accounts([device(d, SITE) for d in sim.devices])
    with broker:
        yield broker


@pytest.fixture
def observer(auth_broker: Mosquitto) -> Iterator[Collector]:
    collector = Collector(auth_broker.port, topics.vitals_filter("+"), OBSERVER, auth_broker.users[OBSERVER])
    yield collector
    collector.close()


def test_twenty_thousand_qos1_messages_arrive_exactly_once(open_broker: Mosquitto) -> None:
    total, max_backlog = 20_000, 500
    collector = Collector(open_broker.port, topics.vitals_filter(SITE))
    publisher = MqttPublisher(LOOPBACK, open_broker.port, "bulk-publisher", max_backlog=max_backlog)
    try:
        topic = topics.vitals(SITE, "mon-1")
        padding = b"x" * 300  # about the size of a monitor message
        t0 = time.perf_counter()
        for i in range(total):
            publisher.publish(topic, b"%d:%s" % (i, padding))
        assert publisher.flush(30)
        elapsed = time.perf_counter() - t0
        assert collector.wait_for(total, 30)
        time.sleep(0.2)  # anything extra (a redelivery) would arrive now
    finally:
        publisher.close()
        collector.close()
    print(f"\n{total} QoS1 messages in {elapsed:.2f} s: {total / elapsed:,.0f} msg/s (subscriber in-process)")
    received = Counter(int(payload.split(b":", 1)[0]) for _, payload in collector.messages)
    assert len(collector.messages) == total
    assert set(received) == set(range(total)) and set(received.values()) == {1}
    assert publisher.published == publisher.acknowledged == total
    assert 0 < publisher.peak_backlog <= max_backlog
    assert publisher.backlog == 0 and publisher.refused == []


def test_backlog_blocks_at_its_bound(open_broker: Mosquitto) -> None:
    publisher = MqttPublisher(LOOPBACK, open_broker.port, "tiny-backlog", max_backlog=4)
    with publisher:
        for i in range(2_000):
            publisher.publish(topics.vitals(SITE, "mon-2"), b"%d" % i)
            assert publisher.backlog <= 4
        assert publisher.flush(10)
    assert publisher.peak_backlog <= 4 and publisher.acknowledged == 2_000


def test_fleet_publishes_each_device_with_its_own_credentials(
    auth_broker: Mosquitto, sim: Simulator, observer: Collector
) -> None:
    credentials = {device: auth_broker.users[device] for device in sim.devices}
    with DeviceFleet(LOOPBACK, auth_broker.port, credentials, max_backlog=50) as fleet:
        count = run(sim, fleet, duration_s=120, realtime=False)
        assert fleet.flush(10)
        assert fleet.refused == [] and fleet.published == count
    assert observer.wait_for(count, 10)
    assert len(observer.messages) == count
    for topic, payload in observer.messages:
        message = parse_vitals(payload)
        assert topics.parse_vitals_topic(topic) == (SITE, message.device_id)


def test_a_device_cannot_publish_as_another_device_or_at_another_site(
    auth_broker: Mosquitto, observer: Collector
) -> None:
    """Issue 13: a device published under any site name (``ward-9`` was stored); its site is part of its grant."""
    with MqttPublisher(LOOPBACK, auth_broker.port, "mon-1", "mon-1", auth_broker.users["mon-1"]) as device:
        foreign = topics.vitals(SITE, "mon-2")
        elsewhere = topics.vitals("ward-9", "mon-1")
        own = topics.vitals(SITE, "mon-1")
        forged_mid = device.publish(foreign, b"forged")
        moved_mid = device.publish(elsewhere, b"moved")
        device.publish(own, b"genuine")
        assert device.flush(10)
        assert [(r.topic, r.mid, r.code, r.reason) for r in device.refused] == [
            (foreign, forged_mid, 0x87, "Not authorized"), (elsewhere, moved_mid, 0x87, "Not authorized")
        ]
        assert device.acknowledged == 3 and device.refused_count == 2
    assert observer.wait_for(1, 10)
    time.sleep(0.2)
    assert observer.messages == [(own, b"genuine")]  # the broker processes a connection in order


def test_wrong_password_is_a_clear_connection_error(auth_broker: Mosquitto) -> None:
    with pytest.raises(MqttConnectError) as failed:
        MqttPublisher(LOOPBACK, auth_broker.port, "mon-1", "mon-1", "not-the-password")
    assert failed.value.code in (0x86, 0x87)  # Bad user name or password / Not authorized
    assert failed.value.reason in str(failed.value) and "mon-1" in str(failed.value)
    with pytest.raises(MqttConnectError, match=r"Not authorized|Bad user name or password"):
        DeviceFleet(LOOPBACK, auth_broker.port, {"mon-1": auth_broker.users["mon-1"], "wear-1": "wrong"})


def test_unreachable_broker_is_a_clear_connection_error() -> None:
    port = free_port()
    with pytest.raises(MqttConnectError, match=rf"{LOOPBACK}:{port}.*[Rr]efused"):
        MqttPublisher(LOOPBACK, port, "nobody")


def test_unknown_device_is_refused_at_connect(auth_broker: Mosquitto) -> None:
    with pytest.raises(MqttConnectError):
        MqttPublisher(LOOPBACK, auth_broker.port, "mon-99", "mon-99", "guess")
