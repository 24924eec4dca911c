"""The running service end to end, through each input path, against real Mosquitto, Orthanc and SQLite.

One :class:`server.service.AegleService` (uvicorn on loopback) runs for the module with every input path on:
DICOMweb STOW-RS, DICOM from an edge node over MQTT (C-STORE → edge outbox → chunks → assembler → series
collector) and the Orthanc watch mode. Mosquitto has authentication and the production ACL; vitals reach the
SQLite store through the real ingest worker over MQTT. Images: pydicom's real 7-slice MR series (MR700) and
CT_small, copied with new UIDs per test. The engine serves the shipped weights (gan/weights) when they load,
else random-init weights of the same architectures (the pipeline is then plumbing only; quality is the
benches' job). Every derived series is fetched back from Orthanc with WADO-RS and checked: dciodvfy, matrix and
PixelSpacing, UIDs, references to the source instances, the model named (the study path's), the result event on
MQTT.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE

from aegle.localservices import Mosquitto, Orthanc, free_port
from core import topics
from core.accounts import device, edge
from core.context import context_at
from core.dicom_chunks import chunk_properties, new_manifest
from core.mqtt import MqttPublisher
from core.settings import (
    EdgeSettings,
    InferenceSettings,
    MqttSettings,
    PacsSettings,
    StoreSettings,
    TransferSettings,
)
from core.vitals import AEGLE_CODES, Observation, VitalsMessage
from server.inference import InferenceEngine
from server.ingest import IngestWorker
from server.pacs import DicomWebStore
from server.pacs.dicomweb import encode_instance, encode_multipart
from server.service import AegleService
from server.store import open_store
from server.study import SeriesCollector, StudyPipeline, TransferInfo
from server.study.derived import PRIVATE_CREATOR, PRIVATE_GROUP
from tests.api_support import LiveServer, derived_model, inference_settings, service_settings
from tests.dicom_support import dciodvfy, pydicom_file
from tests.support import Collector, ingest_settings, wait_for

SITE = "site-e2e"
WARD = "ward-e2e"
MR700 = sorted(pydicom_file("dicomdirtests/98892003/MR700").iterdir())  # one real 7-slice MR series
CT = pydicom_file("CT_small.dcm")
USERS = ("aegle-ingest", "aegle-server", "aegle-test")  # service accounts (grants: core.accounts)
DEVICE, EDGE = "mon-e2e", "edge-e2e"  # a bedside monitor at WARD and an edge node at SITE: each publishes as itself
# dciodvfy errors the sources already have (as sent, with new UIDs): MR700 lacks the Type 2C Laterality; the derived
# series writes it (empty: unknown), so derived objects must have no error at all. CT_small has none.
SOURCE_ERRORS = {
    "MR": ["Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>"],
    "CT": [],
}


# --------------------------------------------------------------------------- the running service


@dataclass
class Running:
    service: AegleService
    http: httpx.Client
    tokens: dict[str, str]
    broker: Mosquitto
    orthanc: Orthanc
    pacs: DicomWebStore
    results: Collector
    letters: Collector
    settings: Any
    workdir: Path

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def event(self, series_uid: str, timeout: float = 60) -> dict[str, Any]:
        """The result event published for a source series."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in map(lambda m: json.loads(m.payload), self.results.messages)
                        if e["series_uid"] == series_uid]
            return bool(found)

        wait_for(seen, timeout, f"the result event of series {series_uid}")
        assert len(found) == 1, found
        return found[0]

    def metric(self, name: str, **labels: str) -> float:
        text = self.http.get("/metrics", headers=self.auth("operator")).raise_for_status().text
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


def engine_for(workdir: Path, model_root: Path) -> InferenceEngine:
    """The shipped weights when every served model loads from gan/weights, else the random-init test registry."""
    shipped = InferenceEngine.from_settings(InferenceSettings(cache_dir=workdir / "cache-shipped", threads=1))
    if not shipped.missing:
        return shipped
    shipped.close()
    return InferenceEngine.from_settings(inference_settings(model_root, workdir / "cache-test"))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc, model_root: Path) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("service-e2e")
    broker = Mosquitto(workdir / "mosquitto", service_users=USERS)
    broker.add_accounts([device(DEVICE, WARD), edge(EDGE, SITE)])
    engine = None
    with broker:
        ingest = IngestWorker(ingest_settings(broker, workdir, StoreSettings(sqlite_path=workdir / "vitals.sqlite"),
                                              worker_id="e2e-ingest")).start()  # fmt: skip
        results = Collector(broker, topics.results(SITE, "+"))
        letters = Collector(broker, topics.deadletter(SITE, "+"))
        try:
            engine = engine_for(workdir, model_root)
            settings = service_settings(workdir)
            settings.inference = engine.settings
            settings.mqtt = MqttSettings(host="127.0.0.1", port=broker.port, username="aegle-server",
                                         password=broker.users["aegle-server"])  # fmt: skip
            user, password = orthanc.auth
            settings.pacs = PacsSettings(
                dicomweb_url=orthanc.dicomweb_url, orthanc_url=orthanc.url, username=user, password=password,
                watch=True, poll_interval_s=0.2, watch_state_path=workdir / "watch-state.json", results_site=SITE,
            )  # fmt: skip
            settings.dicom_transfer = TransferSettings(
                enabled=True, worker_id="e2e-dicom", staging_path=workdir / "staging", sweep_interval_s=0.2,
                series_path=workdir / "series", series_quiet_s=1.0,
            )  # fmt: skip
            service = AegleService(settings, engine=engine)
            tokens = {role: service.state.tokens.create(f"{role}-e2e", role) for role in ("device", "operator")}
            with (
                LiveServer(service.app) as live,
                httpx.Client(base_url=live.url, timeout=120) as http,
                DicomWebStore(orthanc.dicomweb_url, user, password) as pacs,
            ):
                assert service.assembler is not None and service.watcher is not None
                yield Running(service, http, tokens, broker, orthanc, pacs, results, letters, settings, workdir)
            assert service.assembler is None and service.watcher is None  # stopped with the app
        finally:
            results.close()
            letters.close()
            ingest.stop()
            if engine is not None:
                engine.close()


# --------------------------------------------------------------------------- real sources with new UIDs


def copies(paths: list[Path], patient: str, acquired: datetime) -> list[Dataset]:
    """Real instances as one new series of a new study (new UIDs), for ``patient``, acquired at ``acquired``."""
    study, series = uid.generate_uid(), uid.generate_uid()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID = patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
        at = acquired.astimezone(UTC)
        ds.AcquisitionDate, ds.AcquisitionTime = at.strftime("%Y%m%d"), at.strftime("%H%M%S")
        ds.TimezoneOffsetFromUTC = "+0000"  # CT_small says -0500
        out.append(ds)
    return out


def source_errors(ds: Dataset, directory: Path) -> list[str]:
    """dciodvfy's errors for a source object as it was sent (a derived object may inherit only these)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"source-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dciodvfy(path)[0]


def check_derived(run: Running, sources: list[Dataset], event: dict[str, Any], tmp_path: Path,
                  failed: frozenset[str] = frozenset()) -> list[Dataset]:
    """Fetch the derived series from Orthanc (WADO-RS) and check it against its sources (see the module doc)."""
    expected = [ds for ds in sources if str(ds.SOPInstanceUID) not in failed]
    study_uid, series_uid = str(sources[0].StudyInstanceUID), str(sources[0].SeriesInstanceUID)
    assert event["status"] == ("partial" if failed else "ok") and event["study_uid"] == study_uid
    assert event["counts"]["enhanced"] == len(expected) and event["counts"]["failed"] == len(failed)
    derived = run.pacs.retrieve_series(study_uid, event["derived_series_uid"])
    assert len(derived) == len(expected)
    engine = run.service.state.engine
    assert engine is not None and event["model"] == engine.settings.enhancer_for("study").name  # every DICOM path
    assert {derived_model(d) for d in derived} == {(event["model"], event["model_version"])}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in expected}
    assert {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in derived} == set(by_uid)
    assert sorted(str(d.SOPInstanceUID) for d in derived) == sorted(event["derived_sop_instance_uids"])
    assert source_errors(expected[0], tmp_path / "sources") == SOURCE_ERRORS[str(expected[0].Modality)]
    for d in derived:
        source = by_uid[str(d.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert d.StudyInstanceUID == study_uid and d.PatientID == source.PatientID
        assert d.SeriesInstanceUID not in (series_uid, "") and d.SOPInstanceUID not in by_uid
        assert (d.Rows, d.Columns) == (2 * source.Rows, 2 * source.Columns)
        assert [float(x) for x in d.PixelSpacing] == pytest.approx([float(x) / 2 for x in source.PixelSpacing])
        assert d.ImageType[0] == "DERIVED" and d.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
        assert d.pixel_array.shape == (d.Rows, d.Columns)
        path = tmp_path / "derived" / f"{d.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        d.save_as(path, enforce_file_format=True)
        errors = dciodvfy(path)[0]
        assert not errors, f"dciodvfy errors in a derived {source.Modality} object:\n" + "\n".join(errors)
    return derived


def recorded_context(ds: Dataset) -> dict[str, Any] | None:
    return json.loads(ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x03].value)


def stow(run: Running, parts: list[bytes], role: str = "device") -> httpx.Response:
    boundary = uid.generate_uid().replace(".", "")
    return run.http.post("/dicom-web/studies", content=encode_multipart(parts, boundary), headers={
        **run.auth(role), "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def publish_vitals(run: Running, patient: str, start: datetime, end: datetime, hr: float, motion: float) -> int:
    """A bedside monitor's messages every 10 s over MQTT (to the ingest worker); returns how many."""
    sent = 0
    with MqttPublisher(run.broker.mqtt_settings(DEVICE), f"{DEVICE}-{start.timestamp():.0f}") as pub:
        t = start
        while t <= end:
            message = VitalsMessage(
                message_id=f"{patient}-{t.timestamp():.0f}", site=WARD, device_id=DEVICE, patient_id=patient,
                timestamp=t, observations=[Observation(code="8867-4", value=hr, unit="/min"),
                                           Observation(code="motion-rms", system=AEGLE_CODES, value=motion,
                                                       unit="m/s2")],
            )  # fmt: skip
            pub.publish(topics.vitals(WARD, DEVICE), message.to_json())
            sent += 1
            t += timedelta(seconds=10)
        assert pub.flush(10) and pub.refused_count == 0
    return sent


def c_store(port: int, datasets: list[Dataset]) -> list[int]:
    """Send datasets to the edge node with a pynetdicom C-STORE SCU; the status of each."""
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AEGLE_EDGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def series_in_orthanc(run: Running, study_uid: str) -> list[Dataset]:
    return run.pacs.search_series(study_uid=study_uid)


# --------------------------------------------------------------------------- (a) STOW-RS to the server


def test_stow_rs_mr_and_ct_come_back_derived_with_the_context_at_acquisition_time(
    running: Running, tmp_path: Path
) -> None:
    run = running
    patient = "enc-e2e-stow"
    acquired = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=600)
    # Before the scan the patient was calm; after it, agitated: the context must be the calm one.
    calm = publish_vitals(run, patient, acquired - timedelta(seconds=240), acquired, hr=62, motion=0.1)
    agitated = publish_vitals(run, patient, acquired + timedelta(seconds=20), datetime.now(UTC), hr=148, motion=9.0)
    store = open_store(run.settings.store)
    try:
        wait_for(lambda: len(store.query(patient, 0, 2**62)) == 2 * (calm + agitated), 30, "vitals ingested")
        expected = context_at(store, patient, acquired, run.settings.context.window_s,
                              run.settings.context.freshness_tau_s)  # fmt: skip
        later = context_at(store, patient, datetime.now(UTC), run.settings.context.window_s,
                           run.settings.context.freshness_tau_s)  # fmt: skip
    finally:
        store.close()
    assert expected.levels["heart_rate"] == pytest.approx(62) and later.levels["heart_rate"] == pytest.approx(148)

    mr, ct = copies(MR700, patient, acquired), copies([CT], patient, acquired)
    processed_before = run.metric("aegle_series_total", outcome="processed")
    r = stow(run, [encode_instance(ds) for ds in [*mr, *ct]] + [b"\0" * 200])  # one part is not DICOM
    assert r.status_code == 202, r.text  # some stored, one failed
    answer = r.json()
    assert len(answer["00081199"]["Value"]) == len(mr) + len(ct)
    assert [f["00081197"]["Value"] for f in answer["00081198"]["Value"]] == [[0xC000]]

    for sources in (mr, ct):
        event = run.event(str(sources[0].SeriesInstanceUID))
        derived = check_derived(run, sources, event, tmp_path / sources[0].Modality)
        context = recorded_context(derived[0])
        assert context is not None and context == event["context"]  # the header records what was used
        assert context["at"] == acquired.isoformat().replace("+00:00", "Z")
        assert (context["levels"]["heart_rate"], context["levels"]["motion"]) == pytest.approx((62, 0.1))
        assert event["context"]["vector"] == pytest.approx(list(expected.vector), abs=1e-5)
        assert event["context"] == expected.to_dict(patient=False)  # one JSON form, without the patient id
        assert list(later.vector) != pytest.approx(list(expected.vector), abs=0.05)  # the later context differs
    assert run.metric("aegle_series_total", outcome="processed") == processed_before + 2


# --------------------------------------------------------------------------- (b) C-STORE → edge → MQTT


def test_edge_cstore_over_mqtt_arrives_as_one_derived_series_per_series(running: Running, tmp_path: Path) -> None:
    from edge.node import EdgeNode

    run = running
    acquired = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    mr, ct = copies(MR700, "enc-e2e-edge", acquired), copies([CT], "enc-e2e-edge", acquired)
    corrupt = mr[3]
    corrupt.PixelData = corrupt.PixelData[:-100]  # a modality bug: pixel data shorter than the header says
    edge = EdgeNode(
        EdgeSettings(site=SITE, outbox_path=tmp_path / "outbox", dicom_port=free_port(), chunk_size=4096),
        MqttSettings(host="127.0.0.1", port=run.broker.port, username=EDGE, password=run.broker.users[EDGE]),
    ).start()
    try:
        statuses = c_store(edge.scp.port, [*mr, *ct])
        mr_event = run.event(str(mr[0].SeriesInstanceUID))
        ct_event = run.event(str(ct[0].SeriesInstanceUID))
    finally:
        edge.stop()
    # The edge tells the modality at once that the short slice cannot be used (0xA900) and forwards the rest.
    assert statuses == [0xA900 if ds is corrupt else 0 for ds in [*mr, *ct]]
    # Instances arriving one by one went into ONE derived series per source series.
    assert mr_event["failures"] == []
    check_derived(run, [ds for ds in mr if ds is not corrupt], mr_event, tmp_path / "MR")
    check_derived(run, ct, ct_event, tmp_path / "CT")
    assert run.service.collector is not None and run.service.collector.pending == 0
    assert not any((run.workdir / "series").glob("*/*.dcm"))  # filed instances removed once stored


def test_unreadable_forwarded_instance_is_dead_lettered_and_counted(running: Running) -> None:
    run = running
    failed_before = run.metric("aegle_series_total", outcome="failed")
    data = b"\0" * 128 + b"DICM" + b"\xff" * 300  # a Part 10 preamble and garbage
    manifest = new_manifest(data, SITE, EDGE, 256)
    with MqttPublisher(run.broker.mqtt_settings(EDGE), f"{EDGE}-raw") as pub:
        pub.publish(topics.dicom_manifest(SITE, EDGE, str(manifest.transfer_id)), manifest.to_json())
        for i in range(manifest.chunk_count):
            chunk = data[i * 256:(i + 1) * 256]
            pub.publish(topics.dicom_chunk(SITE, EDGE, str(manifest.transfer_id), i), chunk,
                        properties=chunk_properties(chunk))
        assert pub.flush(10) and pub.refused_count == 0
    wait_for(lambda: run.letters.messages, 30, "a dead letter")
    letter = json.loads(run.letters.messages[-1].payload)
    assert letter["transfer_id"] == str(manifest.transfer_id) and letter["kind"] == "dicom-instance"
    assert letter["reason"] and letter["sha256"] == manifest.sha256 and "\xff" not in json.dumps(letter)
    wait_for(lambda: run.metric("aegle_series_total", outcome="failed") == failed_before + 1, 10, "metrics")


def transfer_info(data: bytes) -> TransferInfo:
    now = datetime.now(UTC)
    return TransferInfo(str(uuid.uuid4()), SITE, EDGE, None, None, len(data), hashlib.sha256(data).hexdigest(),
                        now, now)  # fmt: skip


def test_filed_instances_survive_a_restart_of_the_collector(running: Running, tmp_path: Path) -> None:
    run = running
    assert run.service.pipeline is not None
    mr = copies(MR700[:3], "enc-e2e-restart", datetime.now(UTC) - timedelta(minutes=30))
    first = SeriesCollector(tmp_path / "series", 60.0, run.service.pipeline.process_series).start()
    for ds in mr:
        data = encode_instance(ds)
        first.add(data, transfer_info(data))
    first.stop()  # before the series was quiet: nothing processed, everything filed
    assert first.results == [] and len(list((tmp_path / "series").glob("*/*.dcm"))) == 3
    second = SeriesCollector(tmp_path / "series", 0.2, run.service.pipeline.process_series).start()
    try:
        wait_for(lambda: second.results, 30, "the filed series processed after the restart")
    finally:
        second.stop()
    (result,) = second.results
    assert result.status == "ok" and len(result.derived) == 3
    assert {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in result.derived} == {
        str(ds.SOPInstanceUID) for ds in mr}
    assert not list((tmp_path / "series").glob("*/*.dcm"))


def test_a_series_the_pacs_cannot_take_is_retried_then_kept_with_its_result(running: Running, tmp_path: Path) -> None:
    run = running
    engine = run.service.state.engine
    assert engine is not None
    vitals = open_store(run.settings.store)
    with DicomWebStore(f"http://127.0.0.1:{free_port()}/dicom-web", "aegle", "x") as down:  # nothing listens
        pipeline = StudyPipeline(engine.enhance, engine.triage_many,
                                 lambda patient, at: context_at(vitals, patient, at), down, None,
                                 store_attempts=1)  # fmt: skip
        collector = SeriesCollector(tmp_path / "series", 0.1, pipeline.process_series, max_attempts=2,
                                    max_backoff_s=0.2).start()  # fmt: skip
        try:
            data = encode_instance(copies([CT], "enc-e2e-down", datetime.now(UTC))[0])
            collector.add(data, transfer_info(data))
            wait_for(lambda: list((tmp_path / "series" / "given-up").glob("*/result.json")), 30, "given up")
        finally:
            collector.stop()
            vitals.close()
    assert len(collector.results) == 2  # tried twice
    (kept,) = (tmp_path / "series" / "given-up").iterdir()
    assert [f.read_bytes() for f in kept.glob("*.dcm")] == [data]  # nothing accepted is lost
    event = json.loads((kept / "result.json").read_text())
    assert event["status"] == "failed" and {f["reason"] for f in event["failures"]} == {"pacs-unavailable"}


# --------------------------------------------------------------------------- (c) Orthanc watch mode


def test_series_stored_in_orthanc_are_enhanced_by_the_watch_mode_once(running: Running, tmp_path: Path) -> None:
    run = running
    acquired = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    mr, ct = copies(MR700, "enc-e2e-watch", acquired), copies([CT], "enc-e2e-watch", acquired)
    watcher = run.service.watcher
    assert watcher is not None
    own_before = watcher.stats.skipped_own
    processed_before = run.metric("aegle_series_total", outcome="processed")
    run.pacs.store([*mr, *ct])  # straight into the PACS, not through Aegle
    for sources in (mr, ct):
        event = run.event(str(sources[0].SeriesInstanceUID))
        check_derived(run, sources, event, tmp_path / sources[0].Modality)
        assert event["context"]["completeness"] == 0  # no vitals for this patient: recorded as such
    # The derived series become stable too; the watcher skips them (Aegle output), so nothing is enhanced twice.
    wait_for(lambda: watcher.stats.skipped_own >= own_before + 2, 30, "the derived series seen and skipped")
    for sources in (mr, ct):
        assert len(series_in_orthanc(run, str(sources[0].StudyInstanceUID))) == 2  # the source and one derived
    assert len([m for m in run.results.messages if json.loads(m.payload)["study_uid"] == mr[0].StudyInstanceUID]) == 1
    wait_for(lambda: run.metric("aegle_series_total", outcome="processed") == processed_before + 2, 10,
             "the watched series counted like HTTP input")  # fmt: skip


def test_the_input_paths_follow_the_settings(tmp_path: Path, engine: InferenceEngine) -> None:
    """Off by default: the service then runs the HTTP app only (STOW-RS), with no broker or Orthanc needed."""
    settings = service_settings(tmp_path)
    settings.inference = engine.settings
    service = AegleService(settings, engine=engine)
    with LiveServer(service.app):
        assert service.pipeline is not None and service.state.pipeline is service.pipeline
        assert (service.assembler, service.watcher, service.collector) == (None, None, None)
        assert service.pipeline.results is None  # no broker credentials: no result events
