"""``aegle demo``: the whole system on embedded defaults, shown live in the terminal (docs/demo.md).

1. Vitals: a real Mosquitto (authentication and ACL on, one login per simulated device), an ingest worker writing
   to SQLite, and a ward of simulated devices with the faults real ones have (late, duplicated and invalid
   messages, dropouts). A viewer subscribed to the retained context topics prints every patient's live context.
2. Imaging: two real studies from the packaged test data (a CT and a multi-slice MR) are copied, assigned to two
   simulated patients with acquisition times inside the monitoring window, and run through the real
   :class:`~server.study.pipeline.StudyPipeline` with the shipped models: context at acquisition time from the store,
   triage, enhancement, derived series. The derived series are written to ``<workdir>/derived/`` and checked
   with ``dciodvfy``; inside a loopback-only network namespace (``scripts/demo``) they are also stored into a
   real Orthanc over DICOMweb. Result events go out on the demo's broker and the viewer prints them.
3. What was shown, and what to do next.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom import uid
from pydicom.dataset import Dataset

from aegle.localservices import (
    LOOPBACK,
    ORTHANC_DICOMWEB_PLUGIN,
    Mosquitto,
    Orthanc,
    loopback_only_network,
    network_interfaces,
    require,
)
from core import (
    ContextSettings,
    IngestSettings,
    MqttSettings,
    SensorContext,
    Settings,
    StoreSettings,
    accounts,
    connect,
    context_at,
    disconnect,
    new_client,
    subscribe,
    topics,
)
from sensors import DeviceFleet, Faults, Simulator, run
from server import DicomWebStore, IngestWorker, MqttResultPublisher, PacsError, SeriesResult, build_pipeline, open_store

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from server import InferenceEngine

SITE = "ward-1"
SERVICE_USERS = ("aegle-ingest", "aegle-dashboard", "aegle-server")
COLUMNS = (
    ("heart_rate", "HR /min", "{:.0f}"),
    ("spo2", "SpO2 %", "{:.0f}"),
    ("temperature", "Temp °C", "{:.1f}"),
    ("respiratory_rate", "RR /min", "{:.0f}"),
    ("systolic_bp", "SBP", "{:.0f}"),
    ("diastolic_bp", "DBP", "{:.0f}"),
    ("motion", "motion m/s²", "{:.2f}"),
)


@dataclass(frozen=True)
class DemoStudy:
    """A real series from the packaged test data, and where in the monitoring window the demo places it."""

    label: str
    files: tuple[str, ...]  # paths relative to pydicom's test files
    patient_index: int
    at_fraction: float  # acquisition time as a fraction of the monitoring window

    def paths(self) -> list[Path]:
        root = Path(pydicom.__file__).parent / "data" / "test_files"
        return [root / name for name in self.files]


_MR700 = "dicomdirtests/98892003/MR700"
STUDIES = (
    DemoStudy("CT", ("CT_small.dcm",), patient_index=0, at_fraction=0.4),
    # The one real multi-slice MR series in the packaged data: 7 slices, 16×16 (thumbnails of a brain MR).
    DemoStudy("MR", tuple(f"{_MR700}/{n}" for n in ("4467", "4528", "4558", "4588", "4618", "4648", "4678")),
              patient_index=1, at_fraction=0.8),
)


class ContextViewer:
    """Subscribes to every patient's retained context topic, dead letters and result events, as a dashboard would."""

    def __init__(self, cfg: MqttSettings) -> None:
        self.contexts: dict[str, SensorContext] = {}
        self.deadletters: dict[str, int] = {}
        self.results: list[tuple[str, dict[str, Any]]] = []
        self.updates = 0
        self._lock = threading.Lock()
        self.client = new_client(cfg, "aegle-demo-viewer")
        self.client.on_message = self._on_message
        connect(self.client, cfg)
        subscribe(self.client, [topics.context_filter(SITE), topics.deadletter(SITE, "+"), topics.results(SITE, "+")])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if "/deadletter/" in msg.topic:
                reason = msg.topic.rsplit("/", 1)[1]
                self.deadletters[reason] = self.deadletters.get(reason, 0) + 1
            elif "/results/" in msg.topic:
                self.results.append((msg.topic, json.loads(msg.payload)))
            else:
                ctx = SensorContext.from_dict(json.loads(msg.payload))
                self.contexts[ctx.patient_id] = ctx
                self.updates += 1

    def table(self) -> str:
        """The live context of every patient as a text table."""
        with self._lock:
            contexts = dict(sorted(self.contexts.items()))
            letters = dict(self.deadletters)
        head = f"{'patient':<10}" + "".join(f"{title:>12}" for _, title, _ in COLUMNS) + f"{'complete':>10}{'at':>11}"
        rows = [head, "-" * len(head)]
        for patient, ctx in contexts.items():
            cells = []
            for key, _, fmt in COLUMNS:
                value = ctx.levels.get(key)
                cells.append(f"{fmt.format(value) if value is not None else '–':>12}")
            rows.append(f"{patient:<10}{''.join(cells)}{ctx.completeness:>10.0%}{ctx.at.strftime('%H:%M:%S'):>11}")
        rows.append(f"context updates: {self.updates}   dead letters: {letters or 'none'}")
        return "\n".join(rows)

    def wait_results(self, count: int, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """The result events received, once ``count`` have arrived or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.results) < count:
            time.sleep(0.05)
        with self._lock:
            return list(self.results)

    def close(self) -> None:
        disconnect(self.client)


class DemoPacs:
    """The demo's PACS store: every derived series into ``directory/<SeriesInstanceUID>/``, and into a real
    Orthanc over DICOMweb STOW-RS when one runs."""

    def __init__(self, directory: Path, dicomweb: DicomWebStore | None) -> None:
        self.directory = directory
        self.dicomweb = dicomweb

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Write the instances as DICOM files, then STOW-RS them (raises ``PacsError`` if Orthanc refuses)."""
        for ds in datasets:
            series = self.directory / str(ds.SeriesInstanceUID)
            series.mkdir(parents=True, exist_ok=True)
            ds.save_as(series / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        if self.dicomweb is not None:
            self.dicomweb.store(datasets)


def dciodvfy_counts(paths: Sequence[Path]) -> tuple[int, int] | None:
    """Total (errors, warnings) dicom3tools' ``dciodvfy`` reports for the files; None when it is not installed."""
    from aegle.dicomcheck import dciodvfy

    errors = warnings = 0
    try:
        for path in paths:
            found_errors, found_warnings = dciodvfy(path)
            errors += len(found_errors)
            warnings += len(found_warnings)
    except FileNotFoundError:
        return None
    return errors, warnings


def demo_copy(sources: Sequence[Path], patient_id: str, acquired: datetime) -> list[Dataset]:
    """Copies of one real series for the demo: a synthetic patient, new study/series/instance UIDs and the
    acquisition time ``acquired`` (UTC). Names, birth dates and other identifiers of the source are removed."""
    study_uid, series_uid = uid.generate_uid(), uid.generate_uid()
    stamp = acquired.astimezone(UTC)
    copies = []
    for path in sources:
        ds = pydicom.dcmread(path)
        for keyword in ("OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientAddress",
                        "InstitutionName", "InstitutionAddress"):  # optional (type 3): removed
            if keyword in ds:
                delattr(ds, keyword)
        ds.PatientID = patient_id
        ds.PatientName = f"Demo^{patient_id}"
        ds.PatientBirthDate = ds.ReferringPhysicianName = ds.AccessionNumber = ""  # required, may be empty
        ds.StudyID = "DEMO"
        ds.StudyDescription = "Aegle demo (copy of a public test image)"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
        ds.TimezoneOffsetFromUTC = "+0000"
        ds.AcquisitionDateTime = stamp.strftime("%Y%m%d%H%M%S.%f+0000")
        for date_kw, time_kw in (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                                 ("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
            setattr(ds, date_kw, stamp.strftime("%Y%m%d"))
            setattr(ds, time_kw, stamp.strftime("%H%M%S.%f"))
        copies.append(ds)
    return copies


def run_demo(duration_s: float = 30.0, patients: int = 6, workdir: str | Path = "var/demo") -> int:
    """Run the demo (vitals for ``duration_s`` seconds, then imaging); returns a process exit code."""
    from server import InferenceEngine  # lazy: torch and ONNX Runtime load in the background below

    for chatty in ("httpx", "server.study.pipeline"):  # INFO lines per request / series would bury the demo's output
        logging.getLogger(chatty).setLevel(logging.WARNING)
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # each run starts clean, so running it twice is safe
    patients = max(patients, 1)
    sim = Simulator(
        patients=patients, site=SITE, rate_hz=1.0, seed=int(time.time()) % 10_000,
        faults=Faults(dropouts_per_hour=30, late_fraction=0.03, late_s=(2.0, 10.0), duplicate_fraction=0.03,
                      bad_fraction=0.01),
    )
    broker = Mosquitto(workdir / "mosquitto", service_users=SERVICE_USERS)
    broker.add_users(list(SERVICE_USERS))
    credentials = broker.add_accounts([accounts.device(d, SITE) for d in sim.devices])
    settings = Settings(
        mqtt=broker.mqtt_settings("aegle-ingest"),
        store=StoreSettings(backend="sqlite", sqlite_path=workdir / "vitals.sqlite"),
        ingest=IngestSettings(worker_id="demo", spool_path=workdir / "spool.sqlite"),
        context=ContextSettings(window_s=60, freshness_tau_s=30),
    )
    header = (f"Aegle demo — everything runs on this machine, on loopback; nothing is downloaded.\n\n"
              f"[1/3] Vitals: Mosquitto on {LOOPBACK}:{broker.port} (auth + ACL), SQLite store in {workdir}/, "
              f"{patients} patients × 2 devices for {duration_s:.0f} s")
    print(header, flush=True)
    with broker, ThreadPoolExecutor(1, thread_name_prefix="aegle-demo-models") as loader:
        # The shipped enhancer and triage classifier load while the vitals flow (missing ones are recorded).
        engine_future = loader.submit(InferenceEngine.from_settings, settings.inference)
        viewer = ContextViewer(broker.mqtt_settings("aegle-dashboard"))
        try:
            started, accepted = _vitals(sim, settings, credentials, viewer, duration_s, header)
            ok = _imaging(settings, broker.mqtt_settings("aegle-server"), viewer, engine_future, started, duration_s,
                          [sim.patients[s.patient_index % patients].patient_id for s in STUDIES], workdir)
        finally:
            viewer.close()
            if engine_future.exception() is None:  # waits for the loader: its batcher thread must be stopped
                engine_future.result().close()
    _closing(workdir, accepted > 0 and ok)
    return 0 if accepted > 0 and ok else 1


def _vitals(
    sim: Simulator, settings: Settings, credentials: dict[str, str], viewer: ContextViewer, duration_s: float,
    header: str,
) -> tuple[datetime, float]:
    """Devices → broker → ingest → store, with the live table (redrawn under ``header`` on a terminal); returns
    the start time and the number of messages accepted."""
    worker = IngestWorker(settings).start()
    tty = sys.stdout.isatty()
    stop = threading.Event()
    started = datetime.now(UTC)
    with DeviceFleet(settings.mqtt, credentials) as fleet:
        devices = threading.Thread(target=run, args=(sim, fleet.publish, duration_s),
                                   kwargs={"realtime": True, "stop": stop, "start": started}, daemon=True)
        devices.start()
        try:
            last_print = 0.0
            while devices.is_alive():
                devices.join(1.0)
                if tty:
                    print("\x1b[2J\x1b[H" + header + "\n" + viewer.table(), flush=True)
                elif time.monotonic() - last_print >= 5:
                    print(viewer.table(), "\n", flush=True)
                    last_print = time.monotonic()
        except KeyboardInterrupt:
            stop.set()
            devices.join()
        fleet.flush(10)
    time.sleep(settings.ingest.context_publish_interval_s + 0.5)
    worker.stop()
    print(viewer.table())
    accepted = worker.metrics.value("aegle_ingest_messages_total", outcome="accepted")
    rejected = worker.metrics.value("aegle_ingest_messages_total", outcome="rejected")
    written = worker.metrics.value("aegle_ingest_samples_written_total")
    print(f"\ningested {accepted:.0f} messages ({written:.0f} samples), dead-lettered {rejected:.0f}")
    store = open_store(settings.store)
    try:
        halfway = started + timedelta(seconds=duration_s / 2)
        patient = sim.patients[0].patient_id
        ctx = context_at(store, patient, halfway, settings.context.window_s, settings.context.freshness_tau_s)
        print(f"context of {patient} at {halfway:%H:%M:%S} read back from the store: "
              + ", ".join(f"{k}={v}" for k, v in ctx.levels.items() if v is not None))
    finally:
        store.close()
    return started, accepted


def _imaging(
    settings: Settings, server: MqttSettings, viewer: ContextViewer, engine_future: Future[InferenceEngine],
    started: datetime, duration_s: float, patient_ids: list[str], workdir: Path,
) -> bool:
    """Real studies → context at acquisition → triage → enhancement → derived series → files / Orthanc → events."""
    print("\n[2/3] Imaging: two real studies from pydicom's test files, copied and assigned to simulated patients\n"
          "      (demo copies: patient and acquisition time rewritten, pixels unchanged)")
    try:
        engine = engine_future.result()
    except Exception as exc:
        print(f"  models could not be loaded: {type(exc).__name__}: {exc}")
        return False
    for model in engine.models():
        print(f"  model {model['name']} {model['version']} ({model['architecture']}, {model['parameters']:,} "
              f"parameters) on {model['backend']}")
    for name, reason in engine.missing.items():
        print(f"  MISSING model {name}: {reason}")
    with ExitStack() as stack:  # closes the store, the publisher and stops Orthanc, whatever happens
        store = open_store(settings.store)
        stack.callback(store.close)
        publisher_client = connect(new_client(server, "aegle-demo-server"), server)
        stack.callback(disconnect, publisher_client)
        dicomweb = None
        orthanc_off = _orthanc_unavailable()
        if orthanc_off is None:
            try:
                orthanc = stack.enter_context(Orthanc(workdir / "orthanc", stable_age=1))
                dicomweb = stack.enter_context(DicomWebStore(orthanc.dicomweb_url, *orthanc.auth))
                print(f"  PACS: Orthanc on {orthanc.url} (DICOMweb, authentication on) and {workdir}/derived/")
            except (RuntimeError, TimeoutError, OSError) as exc:
                orthanc_off = f"it failed to start: {exc}"
        if dicomweb is None:
            print(f"  PACS: {workdir}/derived/\n  Orthanc not started: {orthanc_off}")
        pipeline = build_pipeline(engine, lambda: store, DemoPacs(workdir / "derived", dicomweb),
                                  MqttResultPublisher(publisher_client, SITE), settings)  # fmt: skip
        results = []
        for study, patient_id in zip(STUDIES, patient_ids, strict=True):
            acquired = started + timedelta(seconds=duration_s * study.at_fraction)
            sources = demo_copy(study.paths(), patient_id, acquired)
            first = sources[0]
            print(f"\n  {study.label}: {len(sources)} image(s) {first.Rows}×{first.Columns} → patient {patient_id}, "
                  f"acquired {acquired:%H:%M:%S} UTC")
            result = pipeline.process_series(sources)
            results.append(result)
            _report(result, first, workdir, dicomweb)
        events = viewer.wait_results(len(results), timeout=10)
        print(f"\n  result events on the broker ({len(events)}):")
        for topic, event in events:
            shown = {k: event[k] for k in ("status", "derived_series_uid", "counts", "model", "model_version",
                                           "strength", "scale")}
            print(f"    {topic}\n      {json.dumps(shown)}")
        (workdir / "results.json").write_text(json.dumps([event for _, event in events], indent=2))
    return all(r.status == "ok" for r in results) and len(events) == len(results)


def _orthanc_unavailable() -> str | None:
    """Why the demo cannot run Orthanc here, or None when it can."""
    try:
        require("Orthanc", "orthanc")
    except FileNotFoundError as exc:
        return str(exc)
    if not ORTHANC_DICOMWEB_PLUGIN.is_file():
        return f"{ORTHANC_DICOMWEB_PLUGIN} not found: install the Debian package 'orthanc-dicomweb'"
    if not loopback_only_network():
        return (f"this process sees the network interfaces {', '.join(network_interfaces())};\n    Orthanc listens "
                "on every interface, so the demo runs it only in a loopback-only network namespace (./scripts/demo)")
    return None


def _report(result: SeriesResult, source: Dataset, workdir: Path, dicomweb: DicomWebStore | None) -> None:
    """What one series went through, for the terminal."""
    ctx = result.context
    if ctx is None:
        print("    context: none (enhanced without vitals)")
    else:
        shown = [f"{title.split(' ')[0]} {fmt.format(ctx.levels[key])}" for key, title, fmt in COLUMNS
                 if ctx.levels.get(key) is not None]
        print(f"    context at acquisition (window {ctx.window_s:.0f} s): completeness {ctx.completeness:.0%}; "
              + (", ".join(shown) or "no vitals"))
    decisions = list(result.triage.values())
    if decisions:
        flagged = sum(t.enhance for t in decisions)
        print(f"    triage (advisory, kept in the result event): {flagged} of {len(decisions)} image(s) flagged for "
              f"enhancement; e.g. {decisions[0].reason}")
    else:
        print("    triage: no decision (see the warning below); triage is advisory: enhancement goes ahead")
    for (reason, detail), count in Counter((w.reason, w.detail) for w in result.warnings).items():
        print(f"    warning (×{count}): {reason}: {detail}")
    if result.model_name:
        strength = ("α per pixel, set by the image and the context together" if result.strength is None
                    else f"strength α = {result.strength:.3f} (1 = unconditioned; set by the context)")
        print(f"    enhanced by {result.model_name} {result.model_version}, ×{result.scale}, {strength}")
    for (reason, detail), count in Counter((f.reason, f.detail) for f in result.failures).items():
        print(f"    FAILED (×{count}) {reason}: {detail}")
    if not result.derived:
        print(f"    status: {result.status}, no derived series")
        return
    out = result.derived[0]
    spacing = " × ".join(f"{float(v):.3g}" for v in out.get("PixelSpacing", [])) or "not given"
    source_spacing = " × ".join(f"{float(v):.3g}" for v in source.get("PixelSpacing", [])) or "not given"
    print(f"    derived series {result.derived_series_uid}\n      \"{out.SeriesDescription}\": "
          f"{len(result.derived)} image(s) {out.Rows}×{out.Columns}, pixel spacing {spacing} mm "
          f"(source {source_spacing} mm)")
    folder = workdir / "derived" / str(result.derived_series_uid)
    counts = dciodvfy_counts(sorted(folder.glob("*.dcm")))
    checked = "dciodvfy not installed" if counts is None else f"dciodvfy: {counts[0]} errors, {counts[1]} warnings"
    print(f"    files: {folder}/ — {checked}")
    if dicomweb is not None:
        try:
            found = dicomweb.search_series(result.study_uid, {"SeriesInstanceUID": str(result.derived_series_uid)})
            print(f"    Orthanc: stored by STOW-RS; QIDO-RS finds {len(found)} matching series")
        except PacsError as exc:
            print(f"    Orthanc: stored by STOW-RS, but the QIDO-RS check failed: {exc}")


def _closing(workdir: Path, ok: bool) -> None:
    if not ok:
        print("\nNOT everything worked: see the FAILED / MISSING lines above (exit code 1).")
    print(f"""
[3/3] What you saw
  - simulated bedside monitors and wearables publishing vitals over MQTT (auth + per-device ACL), faults included;
  - the ingest worker storing them in SQLite and keeping each patient's live sensor context;
  - two real studies (CT, multi-slice MR) enhanced with the shipped models, each conditioned on its patient's
    context at acquisition time, after triage; derived DICOM series written to {workdir}/derived/ and checked;
  - a result event per series on the broker (UIDs, counts, model, context summary — no patient data).
  The synthetic patient ids (enc-…) are the only patient identifiers printed.

Next
  - the HTTP service (docs/api.md): .venv/bin/aegle token create --role clinician --name NAME
                                    .venv/bin/aegle serve
  - a PACS (docs/pacs.md):          AEGLE_PACS__DICOMWEB_URL=http://127.0.0.1:8042/dicom-web; DICOM: docs/dicom.md
  - this demo explained:            docs/demo.md""")
