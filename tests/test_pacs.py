"""server.pacs against a real Orthanc with its DICOMweb plugin: STOW-RS, QIDO-RS, WADO-RS, the watch mode."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from aegle.localservices import Orthanc
from core.settings import PacsSettings
from server.pacs import DicomWebStore, OrthancWatcher, PacsError, watcher_for
from server.pacs.dicomweb import encode_instance
from server.pacs.errors import checked_request
from tests.dicom_support import pydicom_data_file, pydicom_file
from tests.support import wait_for

MR = pydicom_data_file("MR2_UNCR.dcm")  # Siemens MR, 1024 × 1024, 16 bit
CT = pydicom_data_file("693_UNCR.dcm")  # CT, 512 × 512, 16 bit


def real_series(path: Path, instances: int = 1, aegle_output: bool = False) -> list[Dataset]:
    """Copies of a real instance as one new series of a new study (the tests share one Orthanc)."""
    source = pydicom.dcmread(path)
    study_uid, series_uid = generate_uid(), generate_uid()
    series = []
    for number in range(1, instances + 1):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        if aegle_output:
            equipment = Dataset()
            equipment.Manufacturer = "Aegle"
            ds.ContributingEquipmentSequence = [equipment]
        series.append(ds)
    return series


@pytest.fixture
def pacs(orthanc: Orthanc) -> Iterator[DicomWebStore]:
    with DicomWebStore(orthanc.dicomweb_url, *orthanc.auth) as store:
        yield store


def test_stow_then_qido_finds_and_wado_returns_identical_pixels(pacs: DicomWebStore) -> None:
    mr, ct = real_series(MR, instances=2), real_series(CT)
    pacs.store(mr + ct)  # two series of two studies in one request
    pacs.store(mr[:1])  # storing again (a retry after a lost answer) is not an error
    for sent in (mr, ct):
        study, series = sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID
        found = pacs.search_series(study)
        assert [(d.SeriesInstanceUID, d.Modality) for d in found] == [(series, sent[0].Modality)]
        assert [d.StudyInstanceUID for d in pacs.search_series(filters={"SeriesInstanceUID": series})] == [study]
        got = {d.SOPInstanceUID: d for d in pacs.retrieve_series(study, series)}
        assert set(got) == {d.SOPInstanceUID for d in sent}
        for ds in sent:
            assert got[ds.SOPInstanceUID].PixelData == ds.PixelData
            assert (got[ds.SOPInstanceUID].pixel_array == ds.pixel_array).all()
    assert pacs.search_series(generate_uid()) == []


def test_instances_the_pacs_rejects_raise_a_permanent_error(pacs: DicomWebStore) -> None:
    good, bad = real_series(CT), real_series(CT)
    del bad[0].SeriesInstanceUID  # Orthanc requires it
    with pytest.raises(PacsError) as caught:
        pacs.store(good + bad)
    assert not caught.value.transient and caught.value.status == 400
    assert caught.value.failed == {bad[0].SOPInstanceUID: 0xC000}  # "cannot understand"
    assert caught.value.refused == caught.value.failed
    assert caught.value.stored == {good[0].SOPInstanceUID} and caught.value.unacknowledged == set()
    assert "1 of 2 instances not stored" in str(caught.value)
    # The good one was stored: retrying only what failed is possible.
    assert pacs.search_series(good[0].StudyInstanceUID)


def test_an_instance_of_another_study_is_refused_by_name_and_the_rest_stored(pacs: DicomWebStore) -> None:
    series, misfiled = real_series(CT, instances=3), real_series(CT)[0]
    misfiled.SeriesInstanceUID = series[0].SeriesInstanceUID  # same series, another study
    with pytest.raises(PacsError) as caught:
        pacs.store([*series[:2], misfiled, series[2]])  # one series: the request names its first instance's study
    assert (caught.value.status, caught.value.transient) == (409, False)
    assert caught.value.failed == {misfiled.SOPInstanceUID: 0x0110}  # processing failure
    assert caught.value.stored == {ds.SOPInstanceUID for ds in series}  # also the one after the refused one
    got = pacs.retrieve_series(series[0].StudyInstanceUID, series[0].SeriesInstanceUID)
    assert {ds.SOPInstanceUID for ds in got} == {ds.SOPInstanceUID for ds in series}
    assert pacs.search_series(misfiled.StudyInstanceUID) == []


def test_unknown_series_and_wrong_password_are_permanent(orthanc: Orthanc, pacs: DicomWebStore) -> None:
    with pytest.raises(PacsError) as caught:
        pacs.retrieve_series(generate_uid(), generate_uid())
    assert (caught.value.transient, caught.value.status) == (False, 404)
    user, _ = orthanc.auth
    with DicomWebStore(orthanc.dicomweb_url, user, "wrong") as wrong, pytest.raises(PacsError) as caught:
        wrong.store(real_series(CT))
    assert (caught.value.transient, caught.value.status) == (False, 401)


def test_a_stopped_pacs_is_a_transient_error(tmp_path: Path) -> None:
    with Orthanc(tmp_path / "orthanc", stable_age=1) as own:
        store = DicomWebStore(own.dicomweb_url, *own.auth)
        store.store(real_series(CT))
    for call in (lambda: store.store(real_series(CT)), lambda: store.search_series(),
                 lambda: store.retrieve_series(generate_uid(), generate_uid())):
        with pytest.raises(PacsError) as caught:
            call()
        assert caught.value.transient and caught.value.status is None
    store.close()


class FullOrthanc(Orthanc):
    """Orthanc that keeps one patient, here protected from recycling: its storage is full from the second on."""

    def config(self) -> dict[str, object]:
        return {**super().config(), "MaximumPatientCount": 1}


def test_a_full_pacs_is_a_transient_error(tmp_path: Path) -> None:
    with FullOrthanc(tmp_path / "orthanc") as full, DicomWebStore(full.dicomweb_url, *full.auth) as store:
        first = real_series(CT)
        store.store(first)
        patient = httpx.get(f"{full.url}/patients", auth=full.auth).json()[0]
        assert httpx.put(f"{full.url}/patients/{patient}/protected", content="1", auth=full.auth).is_success
        second = real_series(CT)
        second[0].PatientID = f"{first[0].PatientID}-other"
        # STOW-RS: Orthanc answers 200 but neither stores nor lists the instance.
        with pytest.raises(PacsError) as caught:
            store.store(second)
        assert caught.value.transient and caught.value.failed == {}
        assert "1 not acknowledged" in str(caught.value)
        # Its REST API answers 500 for the same instance: a server error, transient too.
        with pytest.raises(PacsError) as caught:
            checked_request(store.client, "POST", f"{full.url}/instances", "REST store",
                            content=encode_instance(second[0]))
        assert caught.value.transient and caught.value.status == 500


class Recorder:
    """A watch callback recording (study, series) pairs; fails the first ``failures`` calls for a series."""

    def __init__(self, failures: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failures = dict(failures or {})
        self.lock = threading.Lock()

    def __call__(self, study_uid: str, series_uid: str) -> None:
        with self.lock:
            self.calls.append((study_uid, series_uid))
            if self.failures.get(series_uid, 0) > 0:
                self.failures[series_uid] -= 1
                raise RuntimeError("enhancement failed")

    def count(self, series: list[Dataset]) -> int:
        return Counter(s for _, s in self.calls)[series[0].SeriesInstanceUID]


def watcher(orthanc: Orthanc, callback: Recorder, state: Path, **options: object) -> OrthancWatcher:
    """A running watcher that has taken its starting point in the changes feed."""
    started = OrthancWatcher(orthanc.url, *orthanc.auth, callback, state, poll_interval_s=0.1, **options).start()
    wait_for(lambda: started.state.last_change is not None, 10, "the watcher to start")
    return started


def stable(orthanc: Orthanc, series: list[Dataset]) -> bool:
    found = httpx.post(f"{orthanc.url}/tools/lookup", content=series[0].SeriesInstanceUID, auth=orthanc.auth).json()
    info = httpx.get(f"{orthanc.url}/series/{found[0]['ID']}", auth=orthanc.auth).json()
    return bool(info["IsStable"])


def caught_up(orthanc: Orthanc, state: Path) -> bool:
    """True once the watcher saved a cursor at the end of Orthanc's changes feed."""
    last = httpx.get(f"{orthanc.url}/changes", params={"last": ""}, auth=orthanc.auth).json()["Last"]
    return bool(json.loads(state.read_text())["last_change"] >= last)


def test_watcher_calls_back_once_and_a_restart_neither_repeats_nor_loses(
    orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path
) -> None:
    state = tmp_path / "watch.json"
    first = Recorder()
    with watcher(orthanc, first, state):
        before = real_series(MR, instances=2)
        pacs.store(before)
        wait_for(lambda: first.count(before) == 1, 20, "the stable series' callback")
        wait_for(lambda: stable(orthanc, before), 10, "Orthanc to call the series stable")
        wait_for(lambda: caught_up(orthanc, state), 10, "the watcher to read the whole feed")
    assert first.count(before) == 1
    assert (first.calls[-1]) == (before[0].StudyInstanceUID, before[0].SeriesInstanceUID)

    during = real_series(CT)  # arrives and becomes stable while no watcher runs
    pacs.store(during)
    wait_for(lambda: stable(orthanc, during), 20, "the series stored during the restart to become stable")

    second = Recorder()
    with watcher(orthanc, second, state):
        wait_for(lambda: second.count(during) == 1, 20, "the series stored while the watcher was down")
    assert second.count(before) == 0
    assert second.count(during) == 1


def test_watcher_ignores_aegle_output(orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path) -> None:
    calls = Recorder()
    with watcher(orthanc, calls, tmp_path / "watch.json") as running:
        own, acquired = real_series(CT, aegle_output=True), real_series(CT)
        pacs.store(own)
        pacs.store(acquired)
        wait_for(lambda: calls.count(acquired) == 1 and running.stats.skipped_own == 1, 20, "both series")
        assert calls.count(own) == 0


def test_a_failing_callback_is_retried_even_across_a_restart(
    orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path
) -> None:
    state = tmp_path / "watch.json"
    series = real_series(MR)
    failing = Recorder(failures={series[0].SeriesInstanceUID: 2})
    with watcher(orthanc, failing, state, retry_backoff_s=0.2) as first:
        pacs.store(series)
        wait_for(lambda: failing.count(series) == 2, 20, "the first attempt and one retry")
        assert first.stats.callback_failures == 2
    pending = json.loads(state.read_text())["retries"]
    assert [r["series_uid"] for r in pending.values()] == [series[0].SeriesInstanceUID]
    assert pending.popitem()[1]["attempts"] == 2

    succeeding = Recorder()
    with watcher(orthanc, succeeding, state, retry_backoff_s=0.2) as second:
        wait_for(lambda: succeeding.count(series) == 1, 20, "the retry after the restart")
        wait_for(lambda: second.stats.series_done == 1, 5, "the success to be counted")
    assert json.loads(state.read_text())["retries"] == {}


def test_a_series_that_keeps_failing_is_given_up_with_its_cause(
    orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path
) -> None:
    state = tmp_path / "watch.json"
    series = real_series(CT)
    failing = Recorder(failures={series[0].SeriesInstanceUID: 100})
    with watcher(orthanc, failing, state, retry_backoff_s=0.1, max_attempts=3) as running:
        pacs.store(series)
        wait_for(lambda: running.stats.given_up == 1, 20, "the series to be given up")
    assert failing.count(series) == 3
    given_up = json.loads(state.read_text())["given_up"]
    assert [(f["series_uid"], f["attempts"], f["error"]) for f in given_up.values()] == [
        (series[0].SeriesInstanceUID, 3, "RuntimeError: enhancement failed")
    ]


def test_the_watcher_waits_out_an_orthanc_outage(tmp_path: Path) -> None:
    own = Orthanc(tmp_path / "orthanc", stable_age=1).start()
    try:
        calls = Recorder()
        running = watcher(own, calls, tmp_path / "watch.json")
        own.stop()
        wait_for(lambda: running.stats.feed_errors >= 1, 10, "the watcher to notice the outage")
        own.start()
        series = real_series(CT)
        with DicomWebStore(own.dicomweb_url, *own.auth) as store:
            store.store(series)
        wait_for(lambda: calls.count(series) == 1, 60, "the series stored after the outage")
        running.stop()
    finally:
        own.stop()


def test_start_from_beginning_replays_what_orthanc_holds(
    orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path
) -> None:
    earlier = real_series(CT)
    pacs.store(earlier)
    wait_for(lambda: stable(orthanc, earlier), 20, "the series to become stable before the watcher exists")
    now, beginning = Recorder(), Recorder()
    with watcher(orthanc, now, tmp_path / "now.json"), \
            watcher(orthanc, beginning, tmp_path / "all.json", start_from="beginning"):
        wait_for(lambda: beginning.count(earlier) == 1, 20, "the replay of the earlier series")
        wait_for(lambda: caught_up(orthanc, tmp_path / "now.json"), 10, "the other watcher to read the feed")
    assert now.count(earlier) == 0


def test_a_cursor_past_the_end_of_the_feed_means_a_new_orthanc_database(
    orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "watch.json"
    state.write_text(json.dumps({"last_change": 10**9}))  # from a previous, bigger Orthanc database
    calls = Recorder()
    with watcher(orthanc, calls, state):
        series = real_series(CT)
        pacs.store(series)
        wait_for(lambda: calls.count(series) == 1, 30, "the series in the new database")
    assert "a new Orthanc database" in caplog.text


def test_a_corrupt_state_file_is_an_error_not_a_fresh_start(orthanc: Orthanc, tmp_path: Path) -> None:
    state = tmp_path / "watch.json"
    for corrupt in ('{"last_change": 12', '{"retries": {}}', '[]', '{"last_change": "twelve"}'):
        state.write_text(corrupt)
        with pytest.raises(ValueError, match="corrupt"):
            OrthancWatcher(orthanc.url, *orthanc.auth, Recorder(), state)


def test_watch_mode_enhances_stores_back_and_never_re_enhances_its_output(
    orthanc: Orthanc, pacs: DicomWebStore, tmp_path: Path
) -> None:
    from core.context import context_at
    from gan.triage import TRIAGE_CLASSES, interpret
    from server.inference import EnhanceOutput
    from server.store.sqlite import SQLiteStore
    from server.study import StudyPipeline, bicubic, is_aegle_output

    def enhance(images: np.ndarray, context: np.ndarray | None) -> EnhanceOutput:
        # Bicubic ×2, a real model-free enhancer: what is under test is the PACS plumbing, not a model.
        return EnhanceOutput(bicubic(images, 2).astype(np.float32), "bicubic-x2", "1", None, None, "numpy",
                             context is not None, 2)

    vitals = SQLiteStore(tmp_path / "vitals.sqlite")  # real store, no vitals for this patient
    pipeline = StudyPipeline(enhance, lambda images: [interpret(np.zeros(len(TRIAGE_CLASSES))) for _ in images],
                             lambda patient, at: context_at(vitals, patient, at), pacs, None)
    user, password = orthanc.auth
    settings = PacsSettings(orthanc_url=orthanc.url, dicomweb_url=orthanc.dicomweb_url, username=user,
                            password=password, poll_interval_s=0.1, watch_state_path=tmp_path / "watch.json")
    source = real_series(pydicom_file("CT_small.dcm"), instances=2)
    study = source[0].StudyInstanceUID
    state = settings.watch_state_path
    with watcher_for(settings, pacs, pipeline) as running:
        wait_for(lambda: running.state.last_change is not None, 10, "the watcher to start")
        pacs.store(source)
        wait_for(lambda: len(pacs.search_series(study)) == 2, 30, "the derived series in the PACS")
        wait_for(lambda: running.stats.skipped_own == 1, 30, "the watcher to pass over the derived series")
        wait_for(lambda: caught_up(orthanc, state), 10, "the watcher to read the whole feed")
        assert running.stats.series_done == 1
    series = pacs.search_series(study)
    assert len(series) == 2  # the source and one derived series: the output was not enhanced again
    derived_uid = next(d.SeriesInstanceUID for d in series if d.SeriesInstanceUID != source[0].SeriesInstanceUID)
    derived = pacs.retrieve_series(study, derived_uid)
    assert len(derived) == 2 and all(is_aegle_output(ds) for ds in derived)
    assert {(ds.Rows, ds.Columns) for ds in derived} == {(2 * source[0].Rows, 2 * source[0].Columns)}
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in derived} == {
        ds.SOPInstanceUID for ds in source
    }
