"""The edge node: durable outbox, C-STORE SCP (real pynetdicom), forwarder through a real Mosquitto (auth + ACL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import BasicTextSRStorage, CTImageStorage, MRImageStorage

from aegle.localservices import Mosquitto, free_port
from core import topics
from core.accounts import edge
from core.dicom_chunks import TransferManifest, chunk_properties, new_manifest
from core.mqtt import MqttPublisher
from core.settings import EdgeSettings
from edge.forwarder import Forwarder
from edge.node import EdgeNode
from edge.outbox import Outbox, OutboxFull, Pending
from edge.scp import CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES, StorageSCP
from tests.dicom_support import pydicom_file
from tests.support import wait_for
from tests.test_dicom_transfer import CT, MR, SITE, Received, assembler, c_store, dicom_file, same_dataset


def test_outbox_is_durable_ordered_and_bounded(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    outbox = Outbox(root, SITE, "edge-a", chunk_size=4096, max_bytes=700_000)
    ct, mr = CT.read_bytes(), MR.read_bytes()
    first = outbox.put(ct, "1.2.3", CTImageStorage)
    second = outbox.put(mr)
    with pytest.raises(OutboxFull):
        outbox.put(ct)
    assert outbox.used_bytes == first.size_on_disk + second.size_on_disk
    (root / "tmp" / "half-written").mkdir()  # a crash mid-put: its C-STORE was never answered
    first.record_progress(7)

    reopened = Outbox(root, SITE, "edge-a", chunk_size=4096, max_bytes=700_000)
    pending = list(reopened.pending())
    assert [p.manifest for p in pending] == [first.manifest, second.manifest]  # oldest first
    assert pending[0].instance_path.read_bytes() == ct and pending[0].progress() == 7
    assert pending[0].manifest.sop_instance_uid == "1.2.3" and pending[0].manifest.chunk_count == 129
    assert not any((root / "tmp").iterdir())
    assert reopened.used_bytes == outbox.used_bytes
    reopened.remove(pending[0])
    assert len(reopened) == 1 and reopened.used_bytes == second.size_on_disk


def test_scp_stores_images_refuses_other_classes_and_answers_a700_when_full(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", SITE, "edge-a", max_bytes=300_000)
    scp = StorageSCP(outbox, "AEGLE_EDGE", port=free_port()).start()
    try:
        assert c_store(scp.port, [MR, CT]) == [0, OUT_OF_RESOURCES]  # the CT does not fit, the MR did
        [stored] = list(outbox.pending())
        same_dataset(stored.instance_path.read_bytes(), MR)
        assert stored.manifest.sop_class_uid == str(pydicom.dcmread(MR).SOPClassUID)

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(BasicTextSRStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="AEGLE_EDGE")
        assert assoc.is_established
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [BasicTextSRStorage]
        assoc.release()

        wrong_title = AE(ae_title="MODALITY")
        wrong_title.add_requested_context(CTImageStorage)
        assert not wrong_title.associate("127.0.0.1", scp.port, ae_title="SOMEONE_ELSE").is_established
    finally:
        scp.stop()
    assert (scp.stored, scp.refused) == (1, 1)


def test_dcmtk_storescu_is_answered_success_after_the_durable_write(tmp_path: Path) -> None:
    """A second, independent SCU implementation (dcmtk's storescu) against the SCP."""
    outbox = Outbox(tmp_path / "outbox", SITE, "edge-a")
    scp = StorageSCP(outbox, "AEGLE_EDGE", port=free_port()).start()
    try:
        done = subprocess.run(["storescu", "-aec", "AEGLE_EDGE", "127.0.0.1", str(scp.port), str(CT)],
                              capture_output=True, text=True, timeout=60)
    finally:
        scp.stop()
    assert done.returncode == 0, done.stderr
    [stored] = list(outbox.pending())
    same_dataset(stored.instance_path.read_bytes(), CT)


CT_SMALL = pydicom_file("CT_small.dcm")  # CT Image Storage, 128 × 128 × 16 bits: 32 768 bytes of pixel data
MR_TRUNCATED = pydicom_file("MR_truncated.dcm")  # pydicom's real truncated MR: 8 130 of 8 192 pixel bytes


def storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu (verbose: it names the response status) sends one file to the edge SCP."""
    return subprocess.run(["storescu", "-v", "-aec", "AEGLE_EDGE", "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, timeout=60)


def edge_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("aegle.edge")]


def assert_no_patient_data(lines: list[str], *sources: Path) -> None:
    """No patient name or id, and no UID of the instances, in any of the lines."""
    for source in sources:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = str(ds.get(keyword) or "")
            assert value and not any(value in line for line in lines), keyword


def test_scp_answers_a_failure_status_for_instances_it_cannot_use_and_queues_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Real truncated files streamed byte for byte by pynetdicom (as a modality sends a file it holds)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's bytes, not re-encoded
    data = CT_SMALL.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])  # the stream ends halfway through the pixel data
    ct = pydicom.dcmread(CT_SMALL)
    garbage = DicomBytesIO()
    garbage.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(garbage, ct.file_meta)
    (tmp_path / "garbage.dcm").write_bytes(garbage.getvalue() + b"\xff" * 64)  # a valid header, then no elements
    no_study = pydicom.dcmread(CT_SMALL)
    del no_study.StudyInstanceUID
    no_study.save_as(tmp_path / "no-study.dcm")
    other_uid = pydicom.dcmread(CT_SMALL)
    other_uid.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # what the SCU puts in the request
    other_uid.save_as(tmp_path / "other-uid.dcm")
    cases = [
        (cut, DOES_NOT_MATCH_SOP_CLASS, "PixelData", "Pixel Data has 13303 bytes, not 32768"),
        (MR_TRUNCATED, DOES_NOT_MATCH_SOP_CLASS, "PixelData", "Pixel Data has 8130 bytes, not 8192"),
        (tmp_path / "no-study.dcm", DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID", "StudyInstanceUID missing or empty"),
        (tmp_path / "other-uid.dcm", DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID",
         "SOPInstanceUID differs from the C-STORE request"),
        (tmp_path / "garbage.dcm", CANNOT_UNDERSTAND, None, "data set does not parse into elements ("),
    ]  # fmt: skip
    outbox = Outbox(tmp_path / "outbox", SITE, "edge-a")
    scp = StorageSCP(outbox, "AEGLE_EDGE", port=free_port()).start()
    ae = AE(ae_title="MODALITY")
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    try:
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="AEGLE_EDGE")
        assert assoc.is_established
        for path, status, keyword, comment in cases:
            answer = assoc.send_c_store(path)
            offending = None if keyword is None else Tag(keyword)
            assert (answer.Status, answer.get("OffendingElement")) == (status, offending), answer
            assert answer.ErrorComment.startswith(comment), answer  # garbage: "(" + the parser's exception type
            assert not list(outbox.pending()), path.name
        assert assoc.send_c_store(CT_SMALL).Status == 0
        assoc.release()
    finally:
        scp.stop()
    [stored] = list(outbox.pending())
    same_dataset(stored.instance_path.read_bytes(), CT_SMALL)
    assert (scp.stored, scp.unusable, scp.refused) == (1, len(cases), 0)
    lines = edge_log_lines(caplog)
    for _, status, _, comment in cases:
        assert any(f"(answered 0x{status:04X}): {comment}" in line for line in lines), comment
    assert_no_patient_data(lines, CT_SMALL, MR_TRUNCATED)


def test_dcmtk_storescu_learns_its_pixel_data_was_cut_and_only_the_good_file_is_forwarded(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker.add_accounts([edge("edge-a", SITE)])
    half = pydicom.dcmread(CT)
    half.PixelData = half.PixelData[: len(half.PixelData) // 2]  # a well-formed file whose pixel data is cut
    half.save_as(tmp_path / "half.dcm")
    sink = Received()
    server = assembler(broker, tmp_path, sink).start()
    settings = EdgeSettings(site=SITE, outbox_path=tmp_path / "outbox", dicom_port=free_port(), chunk_size=16384)
    node = EdgeNode(settings, broker.mqtt_settings("edge-a")).start()
    try:
        refused = storescu(node.scp.port, tmp_path / "half.dcm")
        assert refused.returncode != 0, refused.stderr
        assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass)" in refused.stderr
        assert len(node.outbox) == 0 and node.scp.unusable == 1  # never queued
        accepted = storescu(node.scp.port, CT)
        assert accepted.returncode == 0 and "Received Store Response (Success)" in accepted.stderr, accepted.stderr
        wait_for(lambda: len(sink.items) == 1, 20, "the good file delivered")
        wait_for(lambda: len(node.outbox) == 0, 10, "the outbox emptied")
    finally:
        node.stop()
        server.stop()
    [(received, _)] = sink.items
    same_dataset(received, CT)
    assert node.scp.stored == 1
    assert any("(answered 0xA900): Pixel Data has 262144 bytes, not 524288" in line for line in edge_log_lines(caplog))
    assert_no_patient_data(edge_log_lines(caplog), CT)


def test_an_edge_cannot_publish_under_another_edges_id(broker: Mosquitto, tmp_path: Path) -> None:
    broker.add_accounts([edge("edge-a", SITE), edge("edge-b", SITE)])
    data = MR.read_bytes()
    manifest = new_manifest(data, SITE, "edge-b", 65536)
    with MqttPublisher(broker.mqtt_settings("edge-a"), "edge-a") as pub:
        pub.publish(topics.dicom_manifest(SITE, "edge-b", str(manifest.transfer_id)), manifest.to_json())
        pub.publish(topics.dicom_chunk(SITE, "edge-b", str(manifest.transfer_id), 0), data[:65536],
                    properties=chunk_properties(data[:65536]))
        assert pub.flush(10)
        assert [r.code for r in pub.refused] == [0x87, 0x87]

    # A forwarder whose outbox names another edge keeps the instance and says why.
    outbox = Outbox(tmp_path / "outbox", SITE, "edge-b")
    outbox.put(data)
    forwarder = Forwarder(outbox, broker.mqtt_settings("edge-a"), retry_s=0.2).start()
    try:
        wait_for(lambda: forwarder.last_error is not None, 10, "the refusal reported")
        assert "Not authorized" in str(forwarder.last_error)
        assert len(outbox) == 1 and forwarder.forwarded == 0
    finally:
        forwarder.stop()
    with pytest.raises(ValueError, match="differs from the MQTT username"):
        EdgeNode(EdgeSettings(edge_id="edge-b", outbox_path=tmp_path / "o2"), broker.mqtt_settings("edge-a"))


def test_edge_accepts_while_the_broker_is_down_and_forwards_when_it_is_back(broker: Mosquitto,
                                                                             tmp_path: Path) -> None:
    broker.add_accounts([edge("edge-a", SITE)])
    sink = Received()
    server = assembler(broker, tmp_path, sink)
    server.start().stop()  # its persistent session exists, so the broker queues for it
    broker.stop()
    settings = EdgeSettings(site=SITE, outbox_path=tmp_path / "outbox", dicom_port=free_port(), chunk_size=16384)
    node = EdgeNode(settings, broker.mqtt_settings("edge-a"))
    node.forwarder.retry_s = 0.2
    node.start()
    try:
        assert c_store(node.scp.port, [MR]) == [0]
        wait_for(lambda: node.forwarder.last_error is not None, 10, "the forwarder noticed the broker is down")
        assert len(node.outbox) == 1
        broker.start()
        wait_for(lambda: len(node.outbox) == 0, 20, "forwarded once the broker is back")
    finally:
        node.stop()
    server = assembler(broker, tmp_path, sink).start()
    try:
        wait_for(lambda: len(sink.items) == 1, 20, "delivered")
    finally:
        server.stop()
    same_dataset(sink.items[0][0], MR)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_edge_process(broker: Mosquitto, outbox: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({"AEGLE_MQTT__HOST": "127.0.0.1", "AEGLE_MQTT__PORT": str(broker.port),
                "AEGLE_MQTT__USERNAME": "edge-a", "AEGLE_MQTT__PASSWORD": broker.users["edge-a"],
                "AEGLE_LOG_LEVEL": "WARNING"})
    cmd = [sys.executable, "-m", "edge", "--site", SITE, "--outbox", str(outbox), "--dicom-port", str(port),
           "--chunk-size", "2048", "--window", "4"]
    process = subprocess.Popen(cmd, env=env)
    wait_for(lambda: port_open(port), 20, "the edge SCP listening")
    return process


def settled_count(directory: Path, pattern: str, quiet_s: float = 1.0, timeout: float = 60.0) -> int:
    """Number of files matching ``pattern`` once it has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(list(directory.glob(pattern)))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return count
        time.sleep(0.05)
    raise AssertionError(f"{directory} kept changing for {timeout:.0f} s")


def test_forwarder_kill_9_mid_transfer_resumes_and_delivers_exactly_once(broker: Mosquitto, tmp_path: Path) -> None:
    broker.add_accounts([edge("edge-a", SITE)])
    sink = Received()
    server = assembler(broker, tmp_path, sink).start()
    outbox, port = tmp_path / "outbox", free_port()
    process = start_edge_process(broker, outbox, port)
    try:
        assert c_store(port, [dicom_file("MR2_UNCI.dcm")]) == [0]  # 2 MB → 1 025 chunks of 2 KiB
        [path] = (outbox / "ready").iterdir()
        manifest = TransferManifest.model_validate_json((path / "manifest.json").read_bytes())
        item = Pending(path, manifest, 0)
        wait_for(lambda: item.progress() >= 64, 60, "the forwarder under way", 0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        progress = item.progress()
        assert progress < manifest.chunk_count and path.exists()  # really mid-transfer
        # The assembler stages everything the broker acknowledged before the kill, and no more.
        staged = settled_count(tmp_path / "staging" / "transfers" / str(manifest.transfer_id), "*.chunk")
        assert not sink.items and progress <= staged < manifest.chunk_count
        data = item.instance_path.read_bytes()
        process = start_edge_process(broker, outbox, port)
        wait_for(lambda: len(sink.items) == 1, 60, f"delivery (killed at {progress} acknowledged chunks)")
        wait_for(lambda: not path.exists(), 10, "the outbox emptied")
    finally:
        process.terminate()
        process.wait(20)
        server.stop()
    [(received, info)] = sink.items
    assert received == data and info.transfer_id == str(manifest.transfer_id)
    assert server.duplicates == staged - progress  # resumed from the recorded progress, not from chunk 0
    same_dataset(received, dicom_file("MR2_UNCI.dcm"))


def test_python_m_edge_refuses_an_edge_id_that_is_not_the_username(tmp_path: Path) -> None:
    env = dict(os.environ, AEGLE_MQTT__USERNAME="edge-a")
    done = subprocess.run([sys.executable, "-m", "edge", "--edge-id", "edge-b", "--outbox", str(tmp_path / "o")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "differs from the MQTT username" in done.stderr

