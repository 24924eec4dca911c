"""The bounded-backlog publisher (core.mqtt) and the device fleet (sensors.publisher) against a real Mosquitto."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from aegle.localservices import LOOPBACK, Mosquitto, free_port
from core import topics
from core.accounts import device
from core.mqtt import MqttConnectError, MqttPublisher
from core.settings import MqttSettings
from core.vitals import parse_vitals
from sensors.publisher import DeviceFleet
from sensors.simulator import Faults, Simulator, run
from tests.support import Collector

SITE = "ward-1"
OBSERVER = "aegle-test"  # the test harness account: may watch every vitals topic


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
    collector = Collector(auth_broker, topics.vitals_filter("+"), OBSERVER)
    yield collector
    collector.close()


def test_twenty_thousand_qos1_messages_arrive_exactly_once(open_broker: Mosquitto) -> None:
    total, max_backlog = 20_000, 500
    collector = Collector(open_broker, topics.vitals_filter(SITE), user=None)
    publisher = MqttPublisher(open_broker.mqtt_settings(), "bulk-publisher", max_backlog=max_backlog)
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
    received = Counter(int(m.payload.split(b":", 1)[0]) for m in collector.messages)
    assert len(collector.messages) == total
    assert set(received) == set(range(total)) and set(received.values()) == {1}
    assert publisher.published == publisher.acknowledged == total
    assert 0 < publisher.peak_backlog <= max_backlog
    assert publisher.backlog == 0 and publisher.refused == []


def test_backlog_blocks_at_its_bound(open_broker: Mosquitto) -> None:
    publisher = MqttPublisher(open_broker.mqtt_settings(), "tiny-backlog", max_backlog=4)
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
    with DeviceFleet(auth_broker.mqtt_settings(), credentials, max_backlog=50) as fleet:
        count = run(sim, fleet, duration_s=120, realtime=False)
        assert fleet.flush(10)
        assert fleet.refused == [] and fleet.published == count
    assert observer.wait_for(count, 10)
    assert len(observer.messages) == count
    for m in observer.messages:
        message = parse_vitals(m.payload)
        assert topics.parse_vitals_topic(m.topic) == (SITE, message.device_id)


def test_a_device_cannot_publish_as_another_device_or_at_another_site(
    auth_broker: Mosquitto, observer: Collector
) -> None:
    """An outside probe: a device published under any site name (``ward-9`` was stored); its site is in its grant."""
    with MqttPublisher(auth_broker.mqtt_settings("mon-1"), "mon-1") as device:
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
    assert [(m.topic, m.payload) for m in observer.messages] == [(own, b"genuine")]  # in order per connection


def test_wrong_password_is_a_clear_connection_error(auth_broker: Mosquitto) -> None:
    with pytest.raises(MqttConnectError) as failed:
        MqttPublisher(MqttSettings(host=LOOPBACK, port=auth_broker.port, username="mon-1", password="wrong"), "mon-1")
    assert failed.value.code in (0x86, 0x87)  # Bad user name or password / Not authorized
    assert failed.value.reason in str(failed.value) and "mon-1" in str(failed.value)
    with pytest.raises(MqttConnectError, match=r"Not authorized|Bad user name or password"):
        DeviceFleet(auth_broker.mqtt_settings(), {"mon-1": auth_broker.users["mon-1"], "wear-1": "wrong"})


def test_unreachable_broker_is_a_clear_connection_error() -> None:
    port = free_port()
    with pytest.raises(MqttConnectError, match=rf"{LOOPBACK}:{port}.*[Rr]efused"):
        MqttPublisher(MqttSettings(host=LOOPBACK, port=port), "nobody")


def test_unknown_device_is_refused_at_connect(auth_broker: Mosquitto) -> None:
    with pytest.raises(MqttConnectError):
        MqttPublisher(MqttSettings(host=LOOPBACK, port=auth_broker.port, username="mon-99", password="guess"), "mon-99")
