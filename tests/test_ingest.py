"""Ingest worker through real Mosquitto and real stores: end to end, dead letters, crash safety, shared load."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aegle.localservices import Mosquitto, VictoriaMetrics, free_port, http_ok
from core import topics
from core.accounts import device
from core.context import CONTEXT_FIELDS, SensorContext, context_at
from core.mqtt import MqttPublisher, new_client
from core.settings import MqttSettings, Settings, StoreSettings
from core.vitals import Observation, VitalsMessage, parse_vitals, to_ms, to_samples
from sensors.publisher import DeviceFleet
from sensors.simulator import Faults, Simulator
from server.ingest import IngestWorker, LeanPublishClient, ReadBufferedSocket
from server.store import open_store
from server.store.sqlite import row_counts
from tests.store_fixtures import flush
from tests.support import Collector, ingest_settings, wait_for
from tests.test_vitals import probe_cases


def publisher(broker: Mosquitto, user: str = "aegle-test") -> MqttPublisher:
    return MqttPublisher(broker.mqtt_settings(user), f"{user}-pub", max_backlog=2000)


def store_settings(backend: str, tmp_path: Path, victoria: VictoriaMetrics | None) -> StoreSettings:
    if backend == "sqlite":
        return StoreSettings(backend="sqlite", sqlite_path=tmp_path / "vitals.sqlite")
    assert victoria is not None
    return StoreSettings(backend="influx", url=victoria.url, read_api="victoriametrics")


@pytest.mark.parametrize("backend", ["sqlite", "victoriametrics"])
def test_simulated_devices_end_to_end(backend: str, broker: Mosquitto, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    """Simulator (with duplicates, late messages, dropouts and bad payloads) → broker → ingest → store → context."""
    victoria = request.getfixturevalue("victoria") if backend == "victoriametrics" else None
    site = f"ward-{backend[:3]}"
    sim = Simulator(patients=4, site=site, rate_hz=2.0, seed=7, patient_prefix=f"e2e{backend[:3]}",
                    faults=Faults(duplicate_fraction=0.05, late_fraction=0.05, dropouts_per_hour=60, bad_fraction=0.03))
    credentials = broker.add_accounts([device(d, site) for d in sim.devices])
    start = datetime.now(UTC) - timedelta(seconds=90)
    outgoing = list(sim.messages(start, duration_s=60))
    valid = [o for o in outgoing if o.expected_reject is None]
    bad = [o for o in outgoing if o.expected_reject is not None]
    assert bad and len({o.message_id for o in valid}) < len(valid)  # the faults really happened

    settings = ingest_settings(broker, tmp_path, store_settings(backend, tmp_path, victoria), worker_id="e2e")
    letters = Collector(broker, topics.deadletter(site, "+"))
    contexts = Collector(broker, topics.context_filter(site))
    worker = IngestWorker(settings).start()
    try:
        with DeviceFleet(broker.mqtt_settings(), credentials) as fleet:
            for o in outgoing:
                fleet.publish(o)
            fleet.flush(30)
        expected = {(s.patient_id, s.device_id, s.code, s.t_ms): s.value
                    for o in valid for s in to_samples(parse_vitals(o.payload))}
        wait_for(lambda: worker.metrics.value("aegle_ingest_messages_total", outcome="accepted")
                 + worker.metrics.value("aegle_ingest_messages_total", outcome="rejected") >= len(outgoing),
                 30, "every message processed")
        wait_for(lambda: len(letters.messages) >= len(bad), 10, "dead letters")
        time.sleep(settings.ingest.context_publish_interval_s + 0.5)
    finally:
        worker.stop()
        letters.close()

    store = open_store(settings.store)
    flush(store)
    patients = sorted({k[0] for k in expected})
    stored = {}
    for patient in patients:
        for s in store.query(patient, to_ms(start) - 60_000, to_ms(datetime.now(UTC))):
            stored[(s.patient_id, s.device_id, s.code, s.t_ms)] = s.value
    assert stored == pytest.approx(expected)  # every valid sample exactly once, duplicates collapsed

    reasons = Counter(json.loads(m.payload)["reason"] for m in letters.messages)
    assert reasons == Counter(o.expected_reject for o in bad)
    for m in letters.messages:
        letter = json.loads(m.payload)
        assert m.topic == topics.deadletter(site, letter["reason"])
        assert letter["detail"] and letter["payload_sha256"]
        assert base64.b64decode(letter["payload_b64"])

    # The live context is retained per patient and equals the context read back from the store at that time.
    latest = {m.topic: SensorContext.from_dict(json.loads(m.payload)) for m in contexts.messages}
    contexts.close()
    assert set(latest) == {topics.context(site, p) for p in patients}
    for patient in patients:
        live = latest[topics.context(site, patient)]
        assert live.completeness > 0.5
        again = context_at(store, patient, live.at, settings.context.window_s, settings.context.freshness_tau_s)
        assert again.levels == live.levels
        assert again.ages_s == live.ages_s
    store.close()


def test_bad_payloads_go_to_dead_letter_and_the_worker_keeps_going(broker: Mosquitto, tmp_path: Path) -> None:
    settings = ingest_settings(broker, tmp_path, worker_id="dlq")
    letters = Collector(broker, topics.deadletter("+", "+"))
    worker = IngestWorker(settings).start()
    pub = publisher(broker)
    now = datetime.now(UTC)

    def good(i: int, device: str = "mon-1") -> VitalsMessage:
        return VitalsMessage(message_id=f"good-{i:06d}", site="ward-1", device_id=device, patient_id="enc-dlq",
                             timestamp=now - timedelta(seconds=10 - i),
                             observations=[Observation(code="8867-4", value=70 + i, unit="/min")])

    cases = {
        "payload_too_large": (topics.vitals("ward-1", "mon-1"), b"{" + b" " * 20_000 + b"}"),
        "malformed_json": (topics.vitals("ward-1", "mon-1"), b"\x00\xff not json"),
        "missing_field": (topics.vitals("ward-1", "mon-1"), b'{"message_id": "abcdefgh"}'),
        "unknown_code": (topics.vitals("ward-1", "mon-1"),
                         good(0).to_json().replace(b'"8867-4"', b'"0000-0"')),
        "wrong_unit": (topics.vitals("ward-1", "mon-1"), good(0).to_json().replace(b'"/min"', b'"bpm"')),
        "impossible_value": (topics.vitals("ward-1", "mon-1"), good(0).to_json().replace(b"70.0", b"-5.0")),
        "naive_timestamp": (topics.vitals("ward-1", "mon-1"), good(0).to_json().replace(b'Z"', b'"')),
        "topic_mismatch": (topics.vitals("ward-1", "mon-2"), good(0).to_json()),
    }
    try:
        for i, (topic, payload) in enumerate(cases.values()):
            pub.publish(topic, payload)
            pub.publish(topics.vitals("ward-1", "mon-1"), good(i + 1).to_json())
        pub.flush(10)
        wait_for(lambda: len(letters.messages) >= len(cases), 15, "a dead letter per bad payload")
        wait_for(lambda: worker.metrics.value("aegle_ingest_samples_written_total") >= len(cases), 10, "good ones")
        assert worker.metrics.value("aegle_ingest_deadletters_total", reason="wrong_unit") == 1
    finally:
        pub.close()
        worker.stop()
        letters.close()
    got = {json.loads(m.payload)["reason"]: m for m in letters.messages}
    assert set(got) == set(cases)
    for reason, (_topic, payload) in cases.items():
        letter = json.loads(got[reason].payload)
        kept = base64.b64decode(letter["payload_b64"])
        assert payload.startswith(kept) and letter["payload_bytes"] == len(payload)
    store = open_store(settings.store)
    assert [s.value for s in store.query("enc-dlq", 0, to_ms(now) + 1)] == [71 + i for i in range(len(cases))]
    store.close()



def test_probe_payloads_are_dead_lettered_with_their_reason_and_not_stored(broker: Mosquitto, tmp_path: Path) -> None:
    """An outside probe: 74 of 2 000 payloads contrary to docs/vitals.md were stored (Unix-second and 1970 timestamps,
    numeric strings as values, no ``schema``). Sent by a real device account, each must reach the dead-letter topic
    with its reason, and only the valid message after them is stored."""
    settings = ingest_settings(broker, tmp_path, worker_id="probe-d7")
    broker.add_accounts([device("mon-12", "ward-3")])
    letters = Collector(broker, topics.deadletter_filter("ward-3"))
    worker = IngestWorker(settings).start()
    now = datetime.now(UTC)
    cases = {name: (json.dumps(body).encode(), reason) for name, (body, reason) in probe_cases(now).items()}
    valid = VitalsMessage(message_id="valid-after-probe", site="ward-3", device_id="mon-12", patient_id="enc-0042",
                          timestamp=now - timedelta(seconds=1),
                          observations=[Observation(code="8867-4", value=72, unit="/min")])
    try:
        with MqttPublisher(broker.mqtt_settings("mon-12"), "mon-12") as pub:
            for payload, _reason in cases.values():
                pub.publish(topics.vitals("ward-3", "mon-12"), payload)
            pub.publish(topics.vitals("ward-3", "mon-12"), valid.to_json())
            assert pub.flush(10) and not pub.refused
        wait_for(lambda: len(letters.messages) >= len(cases), 15, "a dead letter per probe payload")
        wait_for(lambda: worker.metrics.value("aegle_ingest_samples_written_total") >= 1, 10, "the valid message")
    finally:
        worker.stop()
        letters.close()
    by_sha = {json.loads(m.payload)["payload_sha256"]: m for m in letters.messages}
    assert len(by_sha) == len(letters.messages) == len(cases)
    for name, (payload, reason) in cases.items():
        message = by_sha[hashlib.sha256(payload).hexdigest()]
        letter = json.loads(message.payload)
        assert (message.topic, letter["reason"]) == (topics.deadletter("ward-3", reason), reason), name
        assert letter["detail"] and base64.b64decode(letter["payload_b64"]) == payload
    store = open_store(settings.store)
    try:
        assert [(s.message_id, s.value) for s in store.query("enc-0042", 0, to_ms(now) + 1)] == [
            ("valid-after-probe", 72)]
    finally:
        store.close()

def stream(n: int, patients: int = 50) -> list[tuple[str, bytes]]:
    """``n`` distinct single-observation messages (distinct series/millisecond, so each is one stored row)."""
    t0 = to_ms(datetime.now(UTC)) - n - 60_000
    out = []
    for i in range(n):
        device = f"mon-{i % patients}"
        msg = VitalsMessage(message_id=f"s-{i:08d}", site="ward-1", device_id=device, patient_id=f"enc-{i % patients}",
                            timestamp=datetime.fromtimestamp((t0 + i) / 1000, UTC),
                            observations=[Observation(code="8867-4", value=60 + i % 40, unit="/min")])
        out.append((topics.vitals("ward-1", device), msg.to_json()))
    return out


def metrics_up(port: int) -> bool:
    return http_ok(f"http://127.0.0.1:{port}/metrics")


def start_worker_process(settings: Settings, worker_id: str, metrics_port: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "AEGLE_MQTT__HOST": settings.mqtt.host,
        "AEGLE_MQTT__PORT": str(settings.mqtt.port),
        "AEGLE_MQTT__USERNAME": settings.mqtt.username or "",
        "AEGLE_MQTT__PASSWORD": settings.mqtt.secret() or "",
        "AEGLE_STORE__BACKEND": "sqlite",
        "AEGLE_STORE__SQLITE_PATH": str(settings.store.sqlite_path),
        "AEGLE_INGEST__SPOOL_PATH": str(settings.ingest.spool_path.with_name(f"spool-{worker_id}.sqlite")),
        "AEGLE_LOG_LEVEL": "WARNING",
    })
    cmd = [sys.executable, "-m", "aegle.cli", "ingest", "--worker-id", worker_id]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
    return subprocess.Popen(cmd, env=env)


@pytest.mark.slow
def test_kill_9_mid_stream_loses_and_doubles_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    n = 100_000
    settings = ingest_settings(broker, tmp_path, worker_id="crash")
    db = settings.store.sqlite_path
    messages = stream(n)
    port = free_port()
    worker = start_worker_process(settings, "crash", port)
    try:
        wait_for(lambda: metrics_up(port), 20, "the worker subscribed")
        pub = publisher(broker)
        sender = threading.Thread(target=lambda: [pub.publish(t, p) for t, p in messages])
        sender.start()
        wait_for(lambda: row_counts(db)[0] >= n // 4, 60, "a quarter of the stream stored", 0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed_at = row_counts(db)[0]
        assert killed_at < n  # really mid-stream
        time.sleep(1)  # the publisher keeps going while no worker runs: the broker queues for the session
        worker = start_worker_process(settings, "crash")
        sender.join(120)
        assert pub.flush(60), "the publisher did not get every PUBACK"
        pub.close()
        wait_for(lambda: row_counts(db)[0] >= n, 120, f"the whole stream stored (killed at {killed_at})", 0.2)
        time.sleep(1.0)
    finally:
        worker.terminate()
        worker.wait(20)
    assert row_counts(db) == (n, n)


@pytest.mark.slow
def test_two_workers_split_the_shared_subscription(broker: Mosquitto, tmp_path: Path) -> None:
    n = 40_000
    settings = ingest_settings(broker, tmp_path, worker_id="shared")
    ports = [free_port(), free_port()]
    workers = [start_worker_process(settings, f"shared-{i}", ports[i]) for i in range(2)]

    def accepted(port: int) -> float:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith('aegle_ingest_messages_total{outcome="accepted"}'))
        return float(line.split()[-1])

    try:
        for port in ports:
            wait_for(lambda p=port: metrics_up(p), 20, "worker metrics")
        pub = publisher(broker)
        for topic, payload in stream(n):
            pub.publish(topic, payload)
        pub.flush(60)
        pub.close()
        wait_for(lambda: sum(accepted(p) for p in ports) >= n, 90, "both workers done")
        shares = [accepted(p) for p in ports]
    finally:
        for w in workers:
            w.terminate()
            w.wait(20)
    assert sum(shares) == n  # none doubled
    assert min(shares) > n * 0.2  # really split
    assert row_counts(settings.store.sqlite_path) == (n, n)


def test_restart_rebuilds_live_context_from_the_store(broker: Mosquitto, tmp_path: Path) -> None:
    settings = ingest_settings(broker, tmp_path, worker_id="rebuild")
    worker = IngestWorker(settings).start()
    pub = publisher(broker)
    now = datetime.now(UTC)
    for i in range(20):
        msg = VitalsMessage(message_id=f"rb-{i:06d}", site="ward-1", device_id="mon-7", patient_id="enc-rb",
                            timestamp=now - timedelta(seconds=40 - i),
                            observations=[Observation(code="8867-4", value=100 + i, unit="/min"),
                                          Observation(code="8310-5", value=38.5, unit="Cel")])
        pub.publish(topics.vitals("ward-1", "mon-7"), msg.to_json())
    pub.flush(10)
    pub.close()
    wait_for(lambda: worker.metrics.value("aegle_ingest_samples_written_total") >= 40, 15, "stored")
    before = worker.cache.context("enc-rb", now)
    worker.stop()

    fresh = IngestWorker(settings)
    after = fresh.cache  # nothing yet
    assert after.patients() == []
    fresh.start()
    try:
        assert fresh.cache.patients() == ["enc-rb"]
        rebuilt = fresh.cache.context("enc-rb", now)
    finally:
        fresh.stop()
    assert rebuilt.levels == before.levels
    assert rebuilt.vector[CONTEXT_FIELDS.index("mask_temperature")] == 1


def test_retired_worker_hands_its_share_back(broker: Mosquitto, tmp_path: Path) -> None:
    """A stopped worker's session keeps queueing its share; ``retire`` drains it and leaves the group."""
    settings_a = ingest_settings(broker, tmp_path, worker_id="keep")
    settings_b = ingest_settings(broker, tmp_path, worker_id="leave")
    a = IngestWorker(settings_a).start()
    b = IngestWorker(settings_b).start()
    b.stop()  # gone, but its session (and its share) stays with the broker
    messages = stream(4000)
    first, second = messages[:2000], messages[2000:]
    pub = publisher(broker)
    for topic, payload in first:
        pub.publish(topic, payload)
    pub.flush(10)
    time.sleep(1.0)
    db = settings_a.store.sqlite_path
    assert 0 < row_counts(db)[0] < len(first)  # part of the stream waits for the stopped worker
    IngestWorker(settings_b).retire(quiet_s=1.0)
    assert row_counts(db)[0] == len(first)  # the retired worker drained its queue
    for topic, payload in second:
        pub.publish(topic, payload)
    pub.flush(10)
    pub.close()
    try:
        wait_for(lambda: row_counts(db)[0] == 4000, 15, "the remaining worker to take the whole stream")
    finally:
        a.stop()


def test_store_outage_spools_to_disk_and_catches_up(broker: Mosquitto, tmp_path: Path) -> None:
    """VictoriaMetrics really stopped: messages are acknowledged only once spooled, then written when it returns."""
    vm_dir = tmp_path / "vm"
    vm = VictoriaMetrics(vm_dir).start()
    port = vm.port
    settings = ingest_settings(
        broker, tmp_path, StoreSettings(backend="influx", url=vm.url, read_api="victoriametrics"), worker_id="outage"
    )
    worker = IngestWorker(settings).start()
    messages = stream(3000, patients=5)
    pub = publisher(broker)
    try:
        for topic, payload in messages[:1000]:
            pub.publish(topic, payload)
        pub.flush(10)
        wait_for(lambda: worker.metrics.value("aegle_ingest_samples_written_total") >= 1000, 15, "first part")
        vm.stop()
        for topic, payload in messages[1000:]:
            pub.publish(topic, payload)
        pub.flush(10)
        wait_for(lambda: worker.metrics.value("aegle_ingest_samples_written_total") >= 3000, 30, "spooled")
        assert worker.store.pending == 2000
        assert worker.metrics.value("aegle_ingest_store_up") == 0
        vm = VictoriaMetrics(vm_dir, port=port).start()  # same data, same address
        wait_for(lambda: worker.store.pending == 0, 30, "the spool drained into the store")
    finally:
        pub.close()
        worker.stop()
    store = open_store(settings.store)
    try:
        flush(store)
        got = [s for p in range(5) for s in store.query(f"enc-{p}", 0, to_ms(datetime.now(UTC)))]
    finally:
        store.close()
        vm.stop()
    assert len(got) == len({(s.patient_id, s.t_ms) for s in got}) == 3000


def publish_packet(
    topic: str, mid: int, payload: bytes, qos: int = 1, properties: bytes = b"\x00"
) -> tuple[int, bytes]:
    """(fixed-header byte, rest of the packet) of an MQTT v5 PUBLISH, as paho's reader hands them over."""
    raw_topic = topic.encode()
    rest = len(raw_topic).to_bytes(2, "big") + raw_topic + (mid.to_bytes(2, "big") if qos else b"") + properties
    return 0x30 | qos << 1, rest + payload


def test_lean_publish_path_decodes_as_paho_does() -> None:
    """QoS 1 packets without properties skip paho's decoder; every packet reaches the worker as paho decodes it."""
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("firmware", "2.1")
    props.MessageExpiryInterval = 60
    cases = [
        (publish_packet("aegle/v1/ward-1/mon-1/vitals", 1, b'{"a": 1}'), "lean"),
        (publish_packet("aegle/v1/ward-1/mon-1/vitals", 65535, b""), "lean"),
        (publish_packet("aegle/v1/wärd/mon-1/vitals", 258, b"\x00\xff" * 3000), "lean"),
        (publish_packet("aegle/v1/ward-1/mon-1/vitals", 7, b"{}", properties=props.pack()), "paho"),
        (publish_packet("aegle/v1/ward-1/mon-1/vitals", 0, b"{}", qos=0), "paho"),
    ]
    dup_retain = publish_packet("aegle/v1/ward-1/mon-1/vitals", 9, b"x")
    cases.append(((dup_retain[0] | 0x09, dup_retain[1]), "lean"))
    got: list[tuple[str, int, str, bytes]] = []
    client = new_client(MqttSettings(), "decode-test", LeanPublishClient,  # as the worker builds it, never connected
                        receive=lambda mid, topic, payload: got.append(("lean", mid, topic, payload)), manual_ack=True)
    client.on_message = lambda _c, _u, m: got.append(("paho", m.mid, m.topic, m.payload))
    for (header, packet), path in cases:
        got.clear()
        client._in_packet = {"command": header, "packet": bytearray(packet)}
        assert client._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        want = _packet.decode_publish(header, bytearray(packet), mqtt.MQTTv5)
        assert got == [(path, want.mid, want.topic.decode(), bytes(want.payload))]
        assert type(got[0][3]) is bytes


def test_messages_with_properties_or_at_qos_0_are_ingested_too(broker: Mosquitto, tmp_path: Path) -> None:
    """paho's own receive path (properties, QoS 0) still feeds the worker; QoS 0 has nothing to acknowledge."""
    settings = ingest_settings(broker, tmp_path, worker_id="props")
    worker = IngestWorker(settings).start()
    pub = publisher(broker)
    now = datetime.now(UTC)
    try:
        for i in range(6):
            msg = VitalsMessage(message_id=f"props-{i:04d}", site="ward-1", device_id="mon-1", patient_id="enc-props",
                                timestamp=now - timedelta(seconds=10 - i),
                                observations=[Observation(code="8867-4", value=80 + i, unit="/min")])
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("firmware", "2.1")
            pub.publish(topics.vitals("ward-1", "mon-1"), msg.to_json(), qos=i % 2, properties=props if i < 3 else None)
        assert pub.flush(5)
        wait_for(lambda: worker.metrics.value("aegle_ingest_samples_written_total") >= 6, 15, "all six stored")
        connections = worker._connection
        time.sleep(0.5)
        assert worker._connection == connections  # no acknowledgement made the broker drop the connection
    finally:
        pub.close()
        worker.stop()
    store = open_store(settings.store)
    assert [s.value for s in store.query("enc-props", 0, to_ms(now))] == [80 + i for i in range(6)]
    store.close()


def test_read_buffered_socket_serves_what_the_socket_sent_and_its_errors() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    wrapped = ReadBufferedSocket(left, gulp=64)
    try:
        with pytest.raises(BlockingIOError):  # nothing sent yet: the socket's own error
            wrapped.recv(1)
        right.sendall(bytes(range(100)))
        time.sleep(0.05)
        got = wrapped.recv(1) + wrapped.recv(1)
        assert wrapped.pending() == 62  # one gulp of 64 taken from the socket, 2 bytes handed out
        got += wrapped.recv(1000)  # never more than the gulp holds
        assert wrapped.pending() == 0
        got += wrapped.recv(1000)
        assert got == bytes(range(100))
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)
        right.close()
        time.sleep(0.05)
        assert wrapped.recv(10) == b""  # closed by the peer
        assert wrapped.fileno() == left.fileno()  # everything else is the socket's
    finally:
        left.close()
        right.close()


def test_each_wake_up_reads_the_buffered_packets_up_to_the_limit() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    got: list[int] = []
    client = new_client(MqttSettings(), "drain-test", LeanPublishClient, receive=lambda mid, _t, _p: got.append(mid),
                        packets_per_read=3, manual_ack=True)
    client._sock = ReadBufferedSocket(left)
    try:
        for mid in range(1, 6):
            header, rest = publish_packet("aegle/v1/ward-1/mon-1/vitals", mid, b"{}")
            right.sendall(bytes([header, len(rest)]) + rest)
        time.sleep(0.05)
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == [1, 2, 3] and client._sock.pending() > 0  # paho's loop will not wait in select() now
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == [1, 2, 3, 4, 5] and client._sock.pending() == 0
    finally:
        client._sock = None
        left.close()
        right.close()


def test_a_device_publishes_again_what_no_subscription_matched(broker: Mosquitto, tmp_path: Path) -> None:
    """Mosquitto answers a QoS 1 publish that matches no subscription with PUBACK 0x10 and drops it (what happens
    after a broker restart until the workers have subscribed again: tests/test_broker_restart.py); a publisher
    with ``unmatched_retry_s`` keeps such messages and publishes them again until a worker takes them."""
    messages = stream(20)
    settings = ingest_settings(broker, tmp_path, worker_id="late")
    db = settings.store.sqlite_path
    retrying = MqttPublisher(broker.mqtt_settings("aegle-test"), "aegle-test-retry", unmatched_retry_s=0.2)
    plain = publisher(broker)
    worker = None
    try:
        for topic, payload in messages[:10]:
            retrying.publish(topic, payload)
        for topic, payload in messages[10:]:
            plain.publish(topic, payload)
        assert plain.flush(10) and plain.acknowledged == 10  # acknowledged... and dropped: nobody subscribed
        wait_for(lambda: retrying.unmatched >= 10, 10, "the broker's 0x10 answers")
        assert not retrying.flush(0.5) and retrying.backlog == 10  # held, published again every 0.2 s
        worker = IngestWorker(settings).start()
        assert retrying.flush(10), "the retried messages were never taken"
        wait_for(lambda: row_counts(db)[1] >= 10, 10, "the retried messages stored")
        time.sleep(0.5)
    finally:
        retrying.close()
        plain.close()
        if worker is not None:
            worker.stop()
    assert row_counts(db) == (10, 10)  # exactly the retried ones; the plain publisher's were dropped by the broker
