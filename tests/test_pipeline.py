"""The study pipeline end to end on real DICOM: real SQLite vitals store, real enhancer/triage architectures
(random-init weights: plumbing only), a directory-backed store that fails on demand (outages, whole-batch refusals)
and a real Orthanc (partial STOW-RS answers), a real Mosquitto for result events."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from aegle.localservices import Mosquitto, Orthanc
from core.context import context_at
from core.mqtt import connect, disconnect, new_client
from core.vitals import Sample, to_ms
from server.pacs import DicomWebStore, PacsError
from server.store.sqlite import SQLiteStore
from server.study import MqttResultPublisher, PacsStore, StudyPipeline, TriageFn
from server.study.derived import PRIVATE_CREATOR, PRIVATE_GROUP
from tests.dicom_support import assert_dciodvfy_clean, dciodvfy, pydicom_file, random_enhancer
from tests.support import Collector, wait_for

CT = pydicom_file("CT_small.dcm")
CT_ACQUIRED = datetime(1997, 4, 30, 16, 29, 36, tzinfo=UTC)  # 19970430 112936 at −0500
MR700 = sorted(pydicom_file("dicomdirtests/98892003/MR700").iterdir())
SITE = "ward-7"
FOR_ERROR = "Error - StudyInstanceUID has same value as FrameOfReferenceUID"  # in the MR700 source files


class DirectoryStore:
    """A real PACS-like store of files in a directory; fails its first ``fail_first`` calls (transiently) and
    refuses, permanently, any batch holding a derived instance of a source in ``reject``."""

    def __init__(self, directory: Path, fail_first: int = 0, reject: Sequence[str] = ()) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fail_first = fail_first
        self.reject = set(reject)
        self.calls = 0

    def store(self, datasets: Sequence[Dataset]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise PacsError("PACS unreachable (test outage)", transient=True)
        if any(ds.SourceImageSequence[0].ReferencedSOPInstanceUID in self.reject for ds in datasets):
            raise PacsError("PACS answered HTTP 409 Conflict", transient=False, status=409)
        for ds in datasets:
            ds.save_as(self.directory / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.dcm"))


def random_triage() -> TriageFn:
    import torch

    from gan.models import build
    from gan.triage import classify

    torch.manual_seed(0)
    model = build("se-classifier", num_classes=4).eval()
    return lambda images: [classify(model, image) for image in images]


@pytest.fixture
def server_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto with the production ACL; the server publishes as the service user ``aegle-server``."""
    broker = Mosquitto(tmp_path / "mosquitto", service_users=("aegle-server", "aegle-test"))
    broker.add_users(["aegle-server", "aegle-test"])
    with broker:
        yield broker


@pytest.fixture
def publisher(server_broker: Mosquitto) -> Iterator[MqttResultPublisher]:
    cfg = server_broker.mqtt_settings("aegle-server")
    client = connect(new_client(cfg, "aegle-server-test"), cfg)
    try:
        yield MqttResultPublisher(client, SITE)
    finally:
        disconnect(client)


@pytest.fixture
def vitals(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "vitals.sqlite")
    try:
        yield store
    finally:
        store.close()


def write_vitals(store: SQLiteStore, patient_id: str, start: datetime, end: datetime, hr: float, motion: float) -> None:
    samples = []
    t = start
    while t <= end:
        for code, value in (("8867-4", hr), ("motion-rms", motion)):
            samples.append(Sample(patient_id, SITE, "monitor-1", code, to_ms(t), value, f"m-{to_ms(t)}-{code}"))
        t += timedelta(seconds=10)
    store.write(samples)


def make_pipeline(
    store: PacsStore, vitals: SQLiteStore, publisher: MqttResultPublisher | None = None, **kwargs: Any
) -> tuple[StudyPipeline, list[float]]:
    sleeps: list[float] = []
    pipeline = StudyPipeline(
        enhance=kwargs.pop("enhance", random_enhancer()),
        triage=random_triage(),
        context_at=lambda patient_id, at: context_at(vitals, patient_id, at),
        store=store,
        results=publisher,
        sleep=sleeps.append,
        **kwargs,
    )
    return pipeline, sleeps


def test_context_at_acquisition_time_is_used_and_published(
    tmp_path: Path, vitals: SQLiteStore, server_broker: Mosquitto, publisher: MqttResultPublisher
) -> None:
    source = pydicom.dcmread(CT)
    patient = str(source.PatientID)
    write_vitals(vitals, patient, CT_ACQUIRED - timedelta(seconds=240), CT_ACQUIRED - timedelta(seconds=5), 60, 0.2)
    write_vitals(vitals, patient, CT_ACQUIRED + timedelta(seconds=5), CT_ACQUIRED + timedelta(seconds=300), 140, 6.0)
    later = context_at(vitals, patient, CT_ACQUIRED + timedelta(seconds=300))
    assert later.levels["heart_rate"] == 140

    seen: list[np.ndarray | None] = []
    enhancer = random_enhancer()

    def recording(images: np.ndarray, context: np.ndarray | None):
        seen.append(context)
        return enhancer(images, context)

    collector = Collector(server_broker, f"aegle/v1/{SITE}/results/#")
    store = DirectoryStore(tmp_path / "pacs")
    pipeline, _ = make_pipeline(store, vitals, publisher, enhance=recording)
    try:
        result = pipeline.process_series([CT.read_bytes()])
        wait_for(lambda: collector.messages, 10, "the result event")
    finally:
        collector.close()

    assert result.status == "ok", result.failures
    assert result.acquired_at == CT_ACQUIRED
    assert result.context is not None
    assert result.context.levels["heart_rate"] == 60 and result.context.levels["motion"] == pytest.approx(0.2)
    assert result.context.levels["heart_rate"] != later.levels["heart_rate"]
    expected = context_at(vitals, patient, CT_ACQUIRED)
    np.testing.assert_array_equal(seen[0], expected.vector)  # the enhancer got the acquisition-time vector, exact
    assert seen[0] is not None and seen[0].dtype == np.float32
    assert not np.allclose(expected.vector, later.vector)

    (path,) = store.files()
    derived = pydicom.dcmread(path)
    recorded = json.loads(derived.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x03].value)
    assert recorded == expected.to_dict(patient=False)  # the context used, as the one JSON form has it
    assert recorded["levels"]["heart_rate"] == 60 and "HR 60" in derived.DerivationDescription
    assert_dciodvfy_clean([derived], tmp_path / "check")

    (message,) = collector.messages
    assert message.topic == f"aegle/v1/{SITE}/results/{source.StudyInstanceUID}"
    event = json.loads(message.payload)
    assert event["status"] == "ok" and event["counts"] == {"received": 1, "enhanced": 1, "failed": 0, "skipped": 0}
    assert event["derived_series_uid"] == derived.SeriesInstanceUID
    assert event["context"] == recorded and event["model"] == "enhancer-x2-random-init"
    assert set(event["context"]) == {"at", "window_s", "completeness", "levels", "ages_s", "fields", "vector"}
    assert set(event["triage"]) == {source.SOPInstanceUID}
    text = message.payload.decode()
    for phi in (str(source.PatientID), str(source.PatientName), "CompressedSamples"):
        assert phi not in text
    assert "patient_id" not in text


def test_corrupted_instance_fails_alone_and_transient_pacs_errors_are_retried(
    tmp_path: Path, vitals: SQLiteStore
) -> None:
    instances = [path.read_bytes() for path in MR700]
    bad_uid = pydicom.dcmread(MR700[3]).SOPInstanceUID
    instances[3] = instances[3][: len(instances[3]) - 100]  # cut inside the pixel data
    store = DirectoryStore(tmp_path / "pacs", fail_first=2)
    pipeline, sleeps = make_pipeline(store, vitals, max_batch=4)
    result = pipeline.process_series(instances)

    assert result.status == "partial"
    assert [(f.reason, f.sop_instance_uid) for f in result.failures] == [("truncated", bad_uid)]
    # the 16×16 slices are below the triage network's 32-pixel minimum: recorded, and enhanced anyway
    assert {w.reason for w in result.warnings} == {"triage-failed"} and len(result.warnings) == 6
    assert "32 pixels" in result.warnings[0].detail
    assert len(result.derived) == 6 and len(store.files()) == 6
    assert result.store_attempts == 3 and sleeps == [0.5, 1.0]  # bounded exponential backoff
    stored = [pydicom.dcmread(p) for p in store.files()]
    assert bad_uid not in {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in stored}
    assert len({ds.SeriesInstanceUID for ds in stored}) == 1
    inherited = [e for e in dciodvfy(MR700[0])[0] if e.startswith(FOR_ERROR)]
    assert inherited
    assert_dciodvfy_clean(stored, tmp_path / "check", inherited=inherited)
    assert result.context is not None and result.context.completeness == 0  # no vitals for this patient
    assert result.to_event()["counts"] == {"received": 7, "enhanced": 6, "failed": 1, "skipped": 0}


def test_pacs_refusing_one_object_keeps_the_others(tmp_path: Path, vitals: SQLiteStore) -> None:
    rejected = pydicom.dcmread(MR700[1]).SOPInstanceUID
    store = DirectoryStore(tmp_path / "pacs", reject=[rejected])
    pipeline, _ = make_pipeline(store, vitals)
    result = pipeline.process_series([pydicom.dcmread(p) for p in MR700])
    assert [(f.reason, f.sop_instance_uid, f.retryable) for f in result.failures] == [
        ("pacs-rejected", rejected, False)]
    assert len(store.files()) == 6 and result.status == "partial"


def test_pacs_outage_is_recorded_as_retryable(tmp_path: Path, vitals: SQLiteStore) -> None:
    store = DirectoryStore(tmp_path / "pacs", fail_first=100)
    pipeline, sleeps = make_pipeline(store, vitals, store_attempts=3)
    result = pipeline.process_series([CT.read_bytes()])
    assert result.status == "failed" and store.calls == 3 and sleeps == [0.5, 1.0]
    assert [(f.reason, f.retryable) for f in result.failures] == [("pacs-unavailable", True)]
    assert store.files() == []


def test_enhancer_failure_is_recorded_and_aegle_output_is_never_re_enhanced(
    tmp_path: Path, vitals: SQLiteStore
) -> None:
    def broken(images: np.ndarray, context: np.ndarray | None):
        raise RuntimeError("backend crashed")

    pipeline, _ = make_pipeline(DirectoryStore(tmp_path / "a"), vitals, enhance=broken)
    result = pipeline.process_series([CT.read_bytes()])
    assert [(f.reason, f.retryable) for f in result.failures] == [("enhance-failed", True)]
    assert result.status == "failed"

    store = DirectoryStore(tmp_path / "b")
    pipeline, _ = make_pipeline(store, vitals)
    first = pipeline.process_series([CT.read_bytes()])
    again = pipeline.process_series(first.derived)
    assert again.status == "skipped" and len(again.skipped) == 1 and store.calls == 1


def test_instances_are_grouped_by_series(tmp_path: Path, vitals: SQLiteStore) -> None:
    store = DirectoryStore(tmp_path / "pacs")
    pipeline, _ = make_pipeline(store, vitals)
    results = pipeline.process([CT.read_bytes(), *[p.read_bytes() for p in MR700[:3]], b"not dicom at all"])
    by_count = sorted((r.received, r.status) for r in results)
    assert by_count == [(1, "failed"), (1, "ok"), (3, "ok")]
    assert len(store.files()) == 4


def test_vitals_store_down_means_enhanced_without_context_and_a_warning(tmp_path: Path) -> None:
    closed = SQLiteStore(tmp_path / "vitals.sqlite")
    closed.close()
    store = DirectoryStore(tmp_path / "pacs")
    pipeline, sleeps = make_pipeline(store, closed, store_attempts=2)
    result = pipeline.process_series([CT.read_bytes()])
    assert result.status == "ok" and result.context is None and len(store.files()) == 1
    assert [(w.reason, w.retryable) for w in result.warnings] == [("context-unavailable", True)]
    assert sleeps == [0.5]  # the lookup was retried once before giving up
    assert "no sensor context" in pydicom.dcmread(store.files()[0]).DerivationDescription


def test_trailing_zero_bytes_and_an_unencodable_instance_never_reach_the_pacs_as_a_batch_problem(
    tmp_path: Path, vitals: SQLiteStore
) -> None:
    instances: list[Dataset | bytes] = [path.read_bytes() for path in MR700]
    instances[1] += bytes(16)  # a real slice with zero bytes after its pixel data: (0000,0000) in the data set
    store = DirectoryStore(tmp_path / "pacs")
    pipeline, _ = make_pipeline(store, vitals)
    result = pipeline.process_series(instances)
    assert result.status == "ok" and len(store.files()) == 7 and store.calls == 1

    # A caller's dataset holding a value its VR cannot encode (US > 65535) fails as what it is, before the PACS
    # is contacted; the other six still go in one request.
    sources = [pydicom.dcmread(path) for path in MR700]
    with pytest.warns(UserWarning, match="AcquisitionMatrix|US"):
        sources[4].AcquisitionMatrix = [0, 70000, 70000, 0]
    store = DirectoryStore(tmp_path / "pacs2")
    pipeline, sleeps = make_pipeline(store, vitals)
    result = pipeline.process_series(sources)
    assert [(f.reason, f.sop_instance_uid, f.retryable) for f in result.failures] == [
        ("encoding-failed", sources[4].SOPInstanceUID, False)]
    assert "(0018,1310)" in result.failures[0].detail and "70000" not in result.failures[0].detail
    assert store.calls == 1 and result.store_attempts == 1 and sleeps == [] and len(store.files()) == 6


def test_real_orthanc_refusing_one_instance_of_a_series_stores_the_others_once(
    orthanc: Orthanc, vitals: SQLiteStore
) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()  # a study of its own in the shared PACS
    sources = [pydicom.dcmread(path) for path in MR700]
    for ds in sources:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    misfiled = sources[3]
    misfiled.StudyInstanceUID = pydicom.uid.generate_uid()  # same series, another study: Orthanc refuses it by name
    with DicomWebStore(orthanc.dicomweb_url, *orthanc.auth) as pacs:
        pipeline, sleeps = make_pipeline(pacs, vitals)
        result = pipeline.process_series(sources)
        assert result.status == "partial" and result.stored
        [failure] = result.failures
        assert (failure.sop_instance_uid, failure.reason, failure.retryable) == (
            misfiled.SOPInstanceUID, "pacs-rejected", False)
        assert "0x0110" in failure.detail
        # one STOW-RS request: the six Orthanc acknowledged are not sent again, nothing is sent one by one
        assert result.store_attempts == 1 and sleeps == []
        stored = pacs.retrieve_series(study, result.derived_series_uid)
        assert sorted(str(ds.SOPInstanceUID) for ds in stored) == sorted(str(ds.SOPInstanceUID)
                                                                          for ds in result.derived)
        assert len(stored) == 6 and misfiled.SOPInstanceUID not in {
            str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in stored}
        assert pacs.search_series(str(misfiled.StudyInstanceUID)) == []  # not filed anywhere
    event = result.to_event()
    assert event["counts"] == {"received": 7, "enhanced": 6, "failed": 1, "skipped": 0}
