"""DICOM over MQTT: the contract, and the server's assembler through a real Mosquitto (auth + ACL on).

Real images (pydicom-data CT and multi-frame MR) go edge SCP → outbox → forwarder → broker → assembler.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from aegle.localservices import Mosquitto, free_port
from core import topics
from core.accounts import MOSQUITTO_POLICY, edge, grants
from core.dicom_chunks import (
    BROKER_MAX_PACKET_BYTES,
    MAX_CHUNK_BYTES,
    TransferManifest,
    TransferRejected,
    chunk_properties,
    new_manifest,
    parse_manifest,
    verify_chunk,
)
from core.mqtt import MqttPublisher
from core.settings import EdgeSettings, MqttSettings, TransferSettings
from edge.node import EdgeNode
from server.study.assembly import DirectorySink, TransferAssembler, TransferInfo
from tests.support import Collector, wait_for

SITE = "site-1"


def dicom_file(name: str) -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data" / name


CT = dicom_file("693_UNCI.dcm")  # CT Image Storage, 512 × 512, 526 kB
MR = dicom_file("emri_small.dcm")  # Enhanced MR Image Storage, 10 slices


class Received:
    """An on_instance that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, TransferInfo]] = []

    def __call__(self, data: bytes, info: TransferInfo) -> None:
        self.items.append((data, info))


def assembler(broker: Mosquitto, tmp_path: Path, sink: Received, **settings: object) -> TransferAssembler:
    transfer = TransferSettings(staging_path=tmp_path / "staging", sweep_interval_s=0.2, **settings)
    return TransferAssembler(broker.mqtt_settings("aegle-server"), transfer, sink)


def c_store(port: int, paths: list[Path], ae_title: str = "AEGLE_EDGE") -> list[int]:
    """Send files with a pynetdicom C-STORE SCU; the status of each."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def edge_node(broker: Mosquitto, tmp_path: Path, edge_id: str, chunk_size: int, window: int = 8) -> EdgeNode:
    settings = EdgeSettings(site=SITE, outbox_path=tmp_path / f"outbox-{edge_id}", dicom_port=free_port(),
                            chunk_size=chunk_size, window=window)
    return EdgeNode(settings, broker.mqtt_settings(edge_id))


def same_dataset(received: bytes, original: Path) -> None:
    """The forwarded bytes are a valid Part 10 file with the original's dataset (pixels included).

    The SCU re-encodes the dataset and drops group-length elements (gggg,0000), which the standard retires.
    """
    got = pydicom.dcmread(pydicom.filebase.DicomBytesIO(received))
    want = pydicom.dcmread(original)
    assert got.SOPInstanceUID == want.SOPInstanceUID
    assert got.PixelData == want.PixelData
    assert [e for e in got if e.tag.element] == [e for e in want if e.tag.element]


# --- the contract -------------------------------------------------------------------------------------------------


def test_topics_round_trip_and_refuse_bad_levels() -> None:
    tid = "0b9f6c1e-5d7a-4a53-9f0e-1f1a2b3c4d5e"
    assert topics.parse_dicom_topic(topics.dicom_manifest("s1", "edge-1", tid)) == ("s1", "edge-1", tid, None)
    assert topics.parse_dicom_topic(topics.dicom_chunk("s1", "edge-1", tid, 12)) == ("s1", "edge-1", tid, 12)
    assert topics.dicom_chunk("s1", "edge-1", tid, 3) == f"aegle/v1/s1/edge-1/dicom/{tid}/3"
    for bad in (f"aegle/v1/s1/edge-1/dicom/{tid}/-1", f"aegle/v1/s1/edge-1/dicom/{tid}/01",
                "aegle/v1/s1/edge-1/dicom/not-a-uuid/0", f"aegle/v1/s1/edge-1/vitals/{tid}/0",
                f"aegle/v1/s1/edge-1/dicom/{tid.upper()}/0", f"aegle/v1/s1/edge-1/dicom/{tid}/0/x"):
        with pytest.raises(ValueError):
            topics.parse_dicom_topic(bad)
    with pytest.raises(ValueError):
        topics.dicom_manifest("s1", "edge/1", tid)
    assert topics.dicom_filter("s1") == "aegle/v1/s1/+/dicom/+/+"
    assert grants(edge("edge-1", "s1")).publish == ("aegle/v1/s1/edge-1/dicom/+/+", "aegle/v1/s1/status/edge/edge-1")


def test_manifest_validation_and_chunk_checksums() -> None:
    data = CT.read_bytes()
    manifest = new_manifest(data, SITE, "edge-a", chunk_size=100_000, sop_instance_uid="1.2.3")
    assert manifest.chunk_count == math.ceil(len(data) / 100_000) == 6
    assert manifest.chunk_length(5) == len(data) - 500_000
    assert parse_manifest(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["schema"] == "aegle.dicom-transfer/1"
    with pytest.raises(TransferRejected) as out_of_range:
        manifest.chunk_length(6)
    assert out_of_range.value.reason == "chunk-out-of-range"
    body = json.loads(manifest.to_json())
    for change in ({"chunk_count": 5}, {"sha256": "x" * 64}, {"chunk_size": MAX_CHUNK_BYTES + 1},
                   {"edge_id": "a/b"}, {"content_type": "image/png"}, {"created_at": "2026-11-22T10:00:00"},
                   {"sop_instance_uid": "Smith^John"}, {"extra": 1}):
        with pytest.raises(TransferRejected) as bad:
            parse_manifest(json.dumps({**body, **change}).encode())
        assert bad.value.reason == "bad-manifest"
    with pytest.raises(TransferRejected, match="bad-manifest"):
        parse_manifest(b"not json")
    chunk = data[:1000]
    verify_chunk(chunk, chunk_properties(chunk))
    with pytest.raises(TransferRejected) as mismatch:
        verify_chunk(b"x" + chunk[1:], chunk_properties(chunk))
    assert mismatch.value.reason == "checksum-mismatch"


def test_largest_chunk_fits_the_broker_packet_limit(broker: Mosquitto) -> None:
    """The policy's max_packet_size is the constant the chunk size derives from, and a largest chunk gets through."""
    limit = re.search(r"^max_packet_size (\d+)$", MOSQUITTO_POLICY.read_text(), re.M)
    assert limit is not None and int(limit.group(1)) == BROKER_MAX_PACKET_BYTES
    long_site = "s" * 64
    broker.add_accounts([edge("edge-a", long_site)])
    chunk = os.urandom(MAX_CHUNK_BYTES)
    tid = str(new_manifest(chunk, SITE, "edge-a").transfer_id)
    with MqttPublisher(broker.mqtt_settings("edge-a"), "edge-a") as pub:
        pub.publish(topics.dicom_chunk(long_site, "edge-a", tid, 99_999), chunk, properties=chunk_properties(chunk))
        assert pub.flush(10)
        assert pub.refused_count == 0 and pub.acknowledged == 1


# --- end to end ---------------------------------------------------------------------------------------------------


def test_ct_and_multiframe_mr_arrive_byte_identical(broker: Mosquitto, tmp_path: Path) -> None:
    """C-STORE SCU → edge SCP → outbox → MQTT in many chunks → assembler → on_instance, SHA-256 equal."""
    broker.add_accounts([edge("edge-a", SITE)])
    sink = Received()
    server = assembler(broker, tmp_path, sink).start()
    node = edge_node(broker, tmp_path, "edge-a", chunk_size=64 * 1024).start()
    try:
        assert c_store(node.scp.port, [CT, MR]) == [0, 0]
        wait_for(lambda: len(sink.items) == 2, 30, "both instances delivered")
        wait_for(lambda: len(node.outbox) == 0, 10, "the outbox emptied")
    finally:
        node.stop()
        server.stop()
    by_uid = {info.sop_instance_uid: (data, info) for data, info in sink.items}
    for path, chunks in ((CT, 8), (MR, 2)):
        data, info = by_uid[str(pydicom.dcmread(path).SOPInstanceUID)]
        assert hashlib.sha256(data).hexdigest() == info.sha256 and len(data) == info.size
        assert math.ceil(info.size / (64 * 1024)) >= chunks  # really several chunks
        assert (info.site, info.edge_id) == (SITE, "edge-a")
        same_dataset(data, path)
    assert server.deadletters == {}
    assert not any((tmp_path / "staging" / "transfers").iterdir())  # staging freed


def publish_transfer(pub: MqttPublisher, data: bytes, edge_id: str, chunk_size: int,
                     corrupt: int | None = None, indices: range | None = None,
                     manifest: TransferManifest | None = None) -> TransferManifest:
    """Publish a transfer by hand (as an edge node would), optionally corrupting one chunk in transit."""
    manifest = manifest or new_manifest(data, SITE, edge_id, chunk_size)
    tid = str(manifest.transfer_id)
    pub.publish(topics.dicom_manifest(SITE, edge_id, tid), manifest.to_json())
    for i in indices if indices is not None else range(manifest.chunk_count):
        chunk = data[i * chunk_size:(i + 1) * chunk_size]
        sent = b"\x00" + chunk[1:] if i == corrupt else chunk
        pub.publish(topics.dicom_chunk(SITE, edge_id, tid, i), sent, properties=chunk_properties(chunk))
    assert pub.flush(10) and pub.refused_count == 0
    return manifest


def test_bad_transfers_are_dead_lettered_and_the_next_one_works(broker: Mosquitto, tmp_path: Path) -> None:
    broker.add_accounts([edge("edge-a", SITE)])
    sink = Received()
    letters = Collector(broker, topics.deadletter(SITE, "+"))
    server = assembler(broker, tmp_path, sink, max_instance_bytes=400_000, incomplete_timeout_s=2.0).start()
    mr, ct = MR.read_bytes(), CT.read_bytes()
    try:
        with MqttPublisher(broker.mqtt_settings("edge-a"), "edge-a") as pub:
            corrupted = publish_transfer(pub, mr, "edge-a", 8192, corrupt=3)
            good = publish_transfer(pub, mr, "edge-a", 8192)
            oversize = publish_transfer(pub, ct, "edge-a", 65536, indices=range(2))
            out_of_range = new_manifest(mr, SITE, "edge-a", 8192)
            tid = str(out_of_range.transfer_id)
            pub.publish(topics.dicom_chunk(SITE, "edge-a", tid, 99), b"abc", properties=chunk_properties(b"abc"))
            publish_transfer(pub, mr, "edge-a", 8192, manifest=out_of_range, indices=range(0))
            bad = new_manifest(mr, SITE, "edge-a", 8192)
            pub.publish(topics.dicom_manifest(SITE, "edge-a", str(bad.transfer_id)), b'{"size": -1}')
            incomplete = publish_transfer(pub, mr, "edge-a", 8192, indices=range(3))
            pub.publish("aegle/v1/site-1/edge-a/dicom/nonsense/0", b"x")
            assert pub.flush(10)
        wait_for(lambda: len(letters.messages) >= 6, 30, "six dead letters")
        wait_for(lambda: len(sink.items) == 1, 10, "the good transfer delivered")
    finally:
        server.stop()
        letters.close()
    reasons = {json.loads(m.payload)["transfer_id"]: m.topic.rsplit("/", 1)[1] for m in letters.messages}
    assert reasons == {
        str(corrupted.transfer_id): "checksum-mismatch",
        str(oversize.transfer_id): "oversize",
        tid: "chunk-out-of-range",
        str(bad.transfer_id): "bad-manifest",
        str(incomplete.transfer_id): "incomplete-timeout",
        None: "invalid-topic",
    }
    for m in letters.messages:  # reasons and sizes, never the DICOM payload
        assert "payload" not in json.loads(m.payload) and "payload_b64" not in json.loads(m.payload)
    data, info = sink.items[0]
    assert info.transfer_id == str(good.transfer_id) and data == mr
    assert not any((tmp_path / "staging" / "transfers").iterdir())


def test_redelivered_and_repeated_transfers_are_delivered_once(broker: Mosquitto, tmp_path: Path) -> None:
    """Chunks before the manifest, duplicates, a whole transfer sent twice, a transfer staged across a restart."""
    broker.add_accounts([edge("edge-a", SITE)])
    sink = Received()
    mr = MR.read_bytes()
    manifest = new_manifest(mr, SITE, "edge-a", 4096)
    n = manifest.chunk_count
    server = assembler(broker, tmp_path, sink).start()
    with MqttPublisher(broker.mqtt_settings("edge-a"), "edge-a") as pub:
        tid = str(manifest.transfer_id)
        for i in (5, 3, 5):  # before the manifest, one twice
            chunk = mr[i * 4096:(i + 1) * 4096]
            pub.publish(topics.dicom_chunk(SITE, "edge-a", tid, i), chunk, properties=chunk_properties(chunk))
        publish_transfer(pub, mr, "edge-a", 4096, manifest=manifest, indices=range(n // 2))
        wait_for(lambda: len(list((tmp_path / "staging" / "transfers" / tid).glob("*.chunk"))) >= n // 2, 20,
                 "half the transfer staged")
        server.stop()  # half staged on disk; the rest is published while no assembler runs
        publish_transfer(pub, mr, "edge-a", 4096, manifest=manifest, indices=range(n // 2, n))
        server = assembler(broker, tmp_path, sink).start()
        wait_for(lambda: len(sink.items) == 1, 20, "the transfer delivered")
        publish_transfer(pub, mr, "edge-a", 4096, manifest=manifest)  # an edge resending everything
        time.sleep(1.0)
    server.stop()
    assert [d for d, _ in sink.items] == [mr]
    assert server.duplicates >= n


def test_full_staging_holds_acknowledgements_until_space_frees(broker: Mosquitto, tmp_path: Path) -> None:
    """Random bytes (plumbing only): a stalled transfer fills the staging area; the next one waits, unacknowledged
    and not lost, until the stalled one times out."""
    broker.add_accounts([edge("edge-a", SITE)])
    sink = Received()
    letters = Collector(broker, topics.deadletter(SITE, "+"))
    limit = 300_000
    server = assembler(broker, tmp_path, sink, max_staging_bytes=limit, max_instance_bytes=limit,
                       incomplete_timeout_s=3.0).start()
    stalled, waiting = os.urandom(250_000), os.urandom(150_000)
    try:
        with MqttPublisher(broker.mqtt_settings("edge-a"), "edge-a") as pub:
            first = publish_transfer(pub, stalled, "edge-a", 50_000, indices=range(4))
            second = publish_transfer(pub, waiting, "edge-a", 50_000)
        wait_for(lambda: server.staged_bytes > limit - 50_000, 10, "the staging area filled")
        time.sleep(1.0)
        assert server.staged_bytes <= limit and not sink.items  # the second transfer is held, not dropped
        wait_for(lambda: len(sink.items) == 1, 20, "the held transfer delivered after the expiry")
    finally:
        server.stop()
        letters.close()
    assert sink.items[0][0] == waiting and sink.items[0][1].transfer_id == str(second.transfer_id)
    [letter] = [json.loads(m.payload) for m in letters.messages]
    assert (letter["reason"], letter["transfer_id"]) == ("incomplete-timeout", str(first.transfer_id))


def start_assembler_process(broker: Mosquitto, tmp_path: Path, worker_id: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({"AEGLE_MQTT__HOST": "127.0.0.1", "AEGLE_MQTT__PORT": str(broker.port),
                "AEGLE_MQTT__USERNAME": "aegle-server", "AEGLE_MQTT__PASSWORD": broker.users["aegle-server"],
                "AEGLE_LOG_LEVEL": "WARNING"})
    cmd = [sys.executable, "-m", "server.study.assembly", "--worker-id", worker_id,
           "--staging", str(tmp_path / "staging"), "--deliver-dir", str(tmp_path / "delivered")]
    return subprocess.Popen(cmd, env=env)


def deliveries(tmp_path: Path) -> list[dict[str, object]]:
    try:
        return [json.loads(line) for line in (tmp_path / "delivered" / "deliveries.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return []


def test_assembler_kill_9_mid_transfer_delivers_exactly_once(broker: Mosquitto, tmp_path: Path) -> None:
    broker.add_accounts([edge("edge-a", SITE)])
    data = CT.read_bytes()  # 526 kB → 258 chunks of 2 KiB
    # The session (and its subscription) exists before anything is published, as in production.
    assembler(broker, tmp_path, DirectorySink(tmp_path / "delivered"), worker_id="crash").start().stop()
    with MqttPublisher(broker.mqtt_settings("edge-a"), "edge-a", max_backlog=64) as pub:
        manifest = publish_transfer(pub, data, "edge-a", 2048)
    staged = tmp_path / "staging" / "transfers" / str(manifest.transfer_id)
    process = start_assembler_process(broker, tmp_path, "crash")
    try:
        wait_for(lambda: len(list(staged.glob("*.chunk"))) >= 50, 60, "50 chunks staged", 0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = len(list(staged.glob("*.chunk")))
        assert killed_at < manifest.chunk_count and not deliveries(tmp_path)  # really mid-transfer
        process = start_assembler_process(broker, tmp_path, "crash")
        wait_for(lambda: len(deliveries(tmp_path)) >= 1, 120, f"delivery (killed at {killed_at} chunks)", 0.2)
        time.sleep(1.0)
    finally:
        process.terminate()
        process.wait(20)
    [line] = deliveries(tmp_path)
    assert line["transfer_id"] == str(manifest.transfer_id)
    assert (tmp_path / "delivered" / f"{manifest.transfer_id}.dcm").read_bytes() == data


def test_assembler_refuses_to_start_without_a_valid_login(broker: Mosquitto, tmp_path: Path) -> None:
    transfer = TransferSettings(staging_path=tmp_path / "staging")
    wrong = MqttSettings(host="127.0.0.1", port=broker.port, username="aegle-ingest", password="wrong")
    with pytest.raises(ConnectionError, match="not subscribed"):
        TransferAssembler(wrong, transfer, Received()).start(timeout=3)


def test_settings_refuse_an_instance_limit_above_the_staging_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_instance_bytes"):
        TransferSettings(staging_path=tmp_path, max_staging_bytes=MAX_CHUNK_BYTES, max_instance_bytes=10**9)

