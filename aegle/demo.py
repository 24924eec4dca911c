"""``aegle demo``: the whole system on one machine, on loopback, with real components (docs/demo.md).

1. Vitals: a real Mosquitto (authentication and per-device ACL), the real ingest worker writing to SQLite, and a
   ward of simulated devices with the faults real ones have. The shipped models load meanwhile.
2. Imaging: the real service (:class:`server.service.AegleService` under uvicorn, MQTT DICOM path on, result
   events on) with a real Orthanc (DICOMweb) as its PACS when the process runs in a loopback-only network
   namespace. Two real-size series built from the pyradiomics volumes (:mod:`aegle.demo_studies`) arrive: a CT by
   C-STORE to a real edge node (:class:`edge.node.EdgeNode`, forwarded over MQTT), an MR by DICOMweb STOW-RS. The
   service triages and enhances each with its patient's context at acquisition time and stores the derived series.
3. Report: the derived series fetched back from Orthanc (WADO-RS), written to disk and checked with dciodvfy;
   before/after PNGs; ``report.html`` (self-contained) and ``summary.json``; every log line goes to ``demo.log``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from aegle.demo_report import NOTICE, chart_series, render_html, vitals_svg
from aegle.demo_studies import STUDIES, DemoStudy, build_series
from aegle.localservices import (
    LOOPBACK,
    ORTHANC_DICOMWEB_PLUGIN,
    Mosquitto,
    Orthanc,
    free_port,
    loopback_only_network,
    network_interfaces,
    require,
)
from core import (
    ApiSettings,
    ContextSettings,
    DashboardSettings,
    EdgeSettings,
    IngestSettings,
    MqttSettings,
    PacsSettings,
    SensorContext,
    Settings,
    StoreSettings,
    TransferSettings,
    accounts,
    connect,
    disconnect,
    new_client,
    subscribe,
    topics,
)
from sensors import DeviceFleet, Faults, Simulator, run

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    import uvicorn

    from server import InferenceEngine

SITE = "ward-1"
EDGE_ID = "edge-demo"
SERVICE_USERS = ("aegle-ingest", "aegle-dashboard", "aegle-server")
log = logging.getLogger("aegle.demo")


# --------------------------------------------------------------------------- terminal and log


def say(text: str = "") -> None:
    """One line of the demo's own output (stdout; everything else goes to the log)."""
    print(text, flush=True)


@contextmanager
def logs_to_file(path: Path) -> Iterator[None]:
    """Every log record, warning and stray stderr write (torch, ONNX Runtime, servers) into ``path`` meanwhile."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    for handler in saved[0]:
        root.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.stderr.flush()
    stderr_fd = os.dup(2)
    os.dup2(handler.stream.fileno(), 2)  # C-level warnings of torch and ONNX Runtime, thread tracebacks
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once, into the log
            yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])


# --------------------------------------------------------------------------- the parts


class Viewer:
    """Subscribed like a dashboard: every patient's retained context, dead letters and result events."""

    def __init__(self, cfg: MqttSettings) -> None:
        self.contexts: dict[str, SensorContext] = {}
        self.deadletters: dict[str, int] = {}
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = new_client(cfg, f"aegle-demo-viewer-{secrets.token_hex(4)}")
        self.client.on_message = self._on_message
        connect(self.client, cfg)
        subscribe(self.client, [topics.context_filter(SITE), topics.deadletter(SITE, "+"), topics.results(SITE, "+")])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if "/deadletter/" in msg.topic:
                reason = msg.topic.rsplit("/", 1)[1]
                self.deadletters[reason] = self.deadletters.get(reason, 0) + 1
            elif "/results/" in msg.topic:
                self.results.append(json.loads(msg.payload))
            else:
                ctx = SensorContext.from_dict(json.loads(msg.payload))
                self.contexts[ctx.patient_id] = ctx

    def result(self, series_uid: str, timeout: float) -> dict[str, Any] | None:
        """The result event of a source series, once it has arrived (None after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for event in self.results:
                    if event.get("series_uid") == series_uid:
                        return event
            time.sleep(0.1)
        return None

    def close(self) -> None:
        disconnect(self.client)


class FolderPacs:
    """The PACS when Orthanc cannot run here: derived series kept in memory for the report (``store`` is the
    pipeline's PacsStore protocol; ``search_series`` answers the readiness probe)."""

    def __init__(self) -> None:
        self.series: dict[str, list[Dataset]] = {}

    def store(self, datasets: Sequence[Dataset]) -> None:
        for ds in datasets:
            self.series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)

    def search_series(self, *_: Any, **__: Any) -> list[Dataset]:
        return []


class LiveService:
    """uvicorn serving the app on a free loopback port, in a thread."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.server: uvicorn.Server = uvicorn.Server(
            uvicorn.Config(app, host=LOOPBACK, port=port, access_log=False, log_config=None))
        self.thread = threading.Thread(target=self.server.run, name="aegle-demo-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> LiveService:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start (see the log)")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class StudyRun:
    """One study of the demo: what was sent, what came back."""

    study: DemoStudy
    patient: str
    acquired: datetime
    sources: list[Dataset]
    sent_s: float = 0.0
    event: dict[str, Any] | None = None
    done_s: float = 0.0
    derived: list[Dataset] = field(default_factory=list)
    in_pacs: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def orthanc_unavailable() -> str | None:
    """Why the demo cannot run Orthanc here, or None when it can."""
    try:
        require("Orthanc", "orthanc")
    except FileNotFoundError as exc:
        return str(exc)
    if not ORTHANC_DICOMWEB_PLUGIN.is_file():
        return f"{ORTHANC_DICOMWEB_PLUGIN} not found: install the Debian package 'orthanc-dicomweb'"
    if not loopback_only_network():
        return (f"this process sees the network interfaces {', '.join(network_interfaces())}; Orthanc listens on "
                "every interface, so the demo runs it only in a loopback-only network namespace (./scripts/demo)")
    return None


def c_store(port: int, datasets: Sequence[Dataset]) -> list[int]:
    """Send the datasets to the edge node as a modality would (one C-STORE association); the status of each."""
    from pynetdicom import AE

    ae = AE(ae_title="DEMO_MODALITY")
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, str(datasets[0].file_meta.TransferSyntaxUID))
    assoc = ae.associate(LOOPBACK, port, ae_title="AEGLE_EDGE")
    if not assoc.is_established:
        raise RuntimeError("the edge node refused the association")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def stow(url: str, token: str, datasets: Sequence[Dataset]) -> int:
    """STOW-RS the datasets to the service; returns the HTTP status."""
    import httpx

    from server import encode_instance, encode_multipart

    boundary = secrets.token_hex(16)
    response = httpx.post(
        f"{url}/dicom-web/studies", content=encode_multipart([encode_instance(ds) for ds in datasets], boundary),
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=600,
    )  # fmt: skip
    return response.status_code


# --------------------------------------------------------------------------- the run


def _interrupt(*_: object) -> None:
    """A SIGTERM handler: stop the way Ctrl-C does."""
    raise KeyboardInterrupt


def run_demo(duration_s: float = 30.0, patients: int = 6, workdir: str | Path = "var/demo", keep: bool = False,
             screenshots: str | Path | None = None) -> int:
    """Run the demo (see the module doc); returns a process exit code."""
    workdir = Path(workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # each run starts clean, so running it twice is safe
    workdir.mkdir(parents=True)
    log_path = workdir / "demo.log"
    say("Aegle demo: everything runs on this machine, on 127.0.0.1; nothing is downloaded.")
    say(f"  log: {log_path}")
    with logs_to_file(log_path):
        try:
            return Demo(max(duration_s, 1.0), max(patients, 2), workdir, keep,
                        None if screenshots is None else Path(screenshots)).run()
        except KeyboardInterrupt:
            say("\ninterrupted: everything the demo started is stopped.")
            return 130
        except Exception:
            log.exception("the demo failed")
            say(f"\nFAILED: see {log_path} (the end of it says why)")
            return 1


class Demo:
    """One run of the demo; :meth:`run` is the whole of it."""

    def __init__(self, duration_s: float, patients: int, workdir: Path, keep: bool, screenshots: Path | None) -> None:
        self.duration_s, self.patients, self.workdir, self.keep = duration_s, patients, workdir, keep
        self.screenshots = screenshots
        self.live_vitals = keep or screenshots is not None  # the devices keep sending after the monitoring window
        self.dashboard: tuple[str, str, str] | None = None  # service URL, clinician and operator tokens
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self.started = datetime.now(UTC)
        self.settings = Settings()  # the environment's (AEGLE_INFERENCE__…), then the demo's own parts below
        self.settings.store = StoreSettings(backend="sqlite", sqlite_path=workdir / "vitals.sqlite")
        self.settings.ingest = IngestSettings(worker_id="demo", spool_path=workdir / "spool.sqlite")
        self.settings.context = ContextSettings(window_s=60, freshness_tau_s=30)
        self.orthanc_off: str | None = None
        self.accepted = self.rejected = self.written = 0.0

    def lap(self, name: str, since: float) -> None:
        self.timings[name] = round(time.monotonic() - since, 1)

    def run(self) -> int:
        from server import IngestWorker

        sim = Simulator(
            patients=self.patients, site=SITE, rate_hz=1.0, seed=int(time.time()) % 10_000,
            faults=Faults(dropouts_per_hour=30, late_fraction=0.03, late_s=(2.0, 10.0), duplicate_fraction=0.03,
                          bad_fraction=0.01),
        )  # fmt: skip
        broker = Mosquitto(self.workdir / "mosquitto", service_users=SERVICE_USERS)
        broker.add_users(list(SERVICE_USERS))
        credentials = broker.add_accounts([accounts.device(d, SITE) for d in sim.devices])
        broker.add_accounts([accounts.edge(EDGE_ID, SITE)])
        self.settings.mqtt = broker.mqtt_settings("aegle-ingest")
        with ExitStack() as stack:
            stack.enter_context(broker)
            loader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="aegle-demo-models"))
            engine_future = loader.submit(self._engine)
            stack.callback(lambda: engine_future.exception() is None and engine_future.result().close())
            orthanc = self._orthanc(stack)
            worker = IngestWorker(self.settings).start()
            stack.callback(worker.stop)
            viewer = Viewer(broker.mqtt_settings("aegle-dashboard"))
            stack.callback(viewer.close)
            say(f"\n[1/3] Vitals: Mosquitto on {LOOPBACK}:{broker.port} (auth + ACL), ingest worker → SQLite; "
                f"{self.patients} patients × 2 devices for {self.duration_s:.0f} s (the models load meanwhile)")
            stop = threading.Event()
            stack.callback(stop.set)
            devices = self._vitals(stack, sim, credentials, viewer, stop, worker)
            engine = engine_future.result()
            say("\n[2/3] Imaging: the Aegle service, an edge node and two real-size studies")
            runs = self._imaging(stack, broker, orthanc, engine, sim, viewer)
            say("\n[3/3] Report")
            summary = self._report(runs, engine, viewer, orthanc)
            ok = self.accepted > 0 and all(r.event is not None and r.event["status"] == "ok" and r.derived
                                           for r in runs)  # fmt: skip
            if not ok:
                say("\nNOT everything worked: see the FAILED lines above and the log (exit code 1).")
            say(f"\n  report:  {summary['paths']['report']}\n  summary: {summary['paths']['summary']}\n"
                f"  log:     {summary['paths']['log']}")
            say(f"\n  {NOTICE}")
            if self.screenshots is not None:
                self._screenshots(runs)
            if self.keep:
                say("\n--keep: the broker, devices, service, edge node and Orthanc keep running; Ctrl-C stops them.")
                signal.signal(signal.SIGTERM, _interrupt)  # a kill (or a service manager) stops them as Ctrl-C does
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    say("\nstopping everything the demo started…")
            stop.set()
            devices.join(15)
        say("done: every process the demo started is stopped." if not self.keep else "stopped.")
        return 0 if ok else 1

    def _screenshots(self, runs: list[StudyRun]) -> None:
        """The dashboard's views in Chromium, saved under ``self.screenshots`` (the first enhanced study in the
        viewer)."""
        from aegle.screenshots import capture

        shown = next((r for r in runs if r.event is not None and r.event["derived_series_uid"]), None)
        if self.dashboard is None or shown is None or self.screenshots is None:
            say("  screenshots: skipped (no enhanced study to show)")
            return
        url, clinician, operator = self.dashboard
        viewer = (f"/dashboard/viewer?study={shown.sources[0].StudyInstanceUID}"
                  f"&series={shown.event['derived_series_uid']}")  # fmt: skip
        try:
            paths = capture(url, clinician, operator, viewer, self.screenshots)
        except Exception as exc:  # a missing browser or a view that did not fill: said, and the demo goes on
            say(f"  screenshots: FAILED: {exc}")
            return
        say(f"  screenshots: {', '.join(str(p) for p in paths)}")

    def _engine(self) -> InferenceEngine:
        from server import InferenceEngine

        return InferenceEngine.from_settings(self.settings.inference)

    def _orthanc(self, stack: ExitStack) -> Orthanc | None:
        self.orthanc_off = orthanc_unavailable()
        if self.orthanc_off is not None:
            return None
        try:
            return stack.enter_context(Orthanc(self.workdir / "orthanc", stable_age=1))
        except (RuntimeError, TimeoutError, OSError) as exc:
            log.exception("Orthanc did not start")
            self.orthanc_off = f"it failed to start: {exc}"
            return None

    def _vitals(self, stack: ExitStack, sim: Simulator, credentials: dict[str, str], viewer: Viewer,
                stop: threading.Event, worker: Any) -> threading.Thread:
        """Devices → broker → ingest → store for the monitoring window (on with --keep); returns the devices'
        thread."""
        since = time.monotonic()
        fleet = stack.enter_context(DeviceFleet(self.settings.mqtt, credentials))
        duration = 10.0**9 if self.live_vitals else self.duration_s
        devices = threading.Thread(target=run, args=(sim, fleet.publish, duration), name="aegle-demo-devices",
                                   kwargs={"realtime": True, "stop": stop, "start": self.started}, daemon=True)
        devices.start()
        tty = sys.stdout.isatty()
        end = time.monotonic() + self.duration_s
        last = time.monotonic()  # without a terminal: a line every 10 s, the first once there is data
        while time.monotonic() < end if self.live_vitals else devices.is_alive():
            time.sleep(0.5)
            if tty or time.monotonic() - last >= 10:
                last = time.monotonic()
                accepted = worker.metrics.value("aegle_ingest_messages_total", outcome="accepted")
                line = (f"  {min(time.monotonic() - since, self.duration_s):4.0f} s: {accepted:.0f} messages "
                        f"ingested, {len(viewer.contexts)} of {self.patients} patients with a live context")
                print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
        if tty:
            print(flush=True)
        if not self.live_vitals:
            fleet.flush(10)
        time.sleep(self.settings.ingest.context_publish_interval_s + 0.5)
        self.accepted = worker.metrics.value("aegle_ingest_messages_total", outcome="accepted")
        self.rejected = worker.metrics.value("aegle_ingest_messages_total", outcome="rejected")
        self.written = worker.metrics.value("aegle_ingest_samples_written_total")
        say(f"  ingested {self.accepted:.0f} messages ({self.written:.0f} samples); dead-lettered "
            f"{self.rejected:.0f}: {viewer.deadletters or 'none'}")
        for patient, ctx in sorted(viewer.contexts.items())[:4]:
            levels = ctx.levels
            shown = ", ".join(f"{name} {levels[key]:.{digits}f}" for key, name, digits in
                              (("heart_rate", "HR", 0), ("spo2", "SpO2", 0), ("respiratory_rate", "RR", 0),
                               ("motion", "motion", 2)) if levels.get(key) is not None)  # fmt: skip
            say(f"  {patient}: {shown or 'no vitals'} (completeness {ctx.completeness:.0%})")
        if len(viewer.contexts) > 4:
            say(f"  … and {len(viewer.contexts) - 4} more patients (the dashboard shows them all)")
        self.lap("vitals_s", since)
        return devices

    def _imaging(self, stack: ExitStack, broker: Mosquitto, orthanc: Orthanc | None, engine: InferenceEngine,
                 sim: Simulator, viewer: Viewer) -> list[StudyRun]:
        from edge import EdgeNode
        from server import AegleService

        since = time.monotonic()
        settings = self.settings.model_copy()
        settings.inference = engine.settings
        settings.mqtt = broker.mqtt_settings("aegle-server")
        port = free_port()
        settings.api = ApiSettings(
            host=LOOPBACK, port=port, tokens_path=self.workdir / "tokens.sqlite",
            audit_path=self.workdir / "audit.sqlite", studies_path=self.workdir / "studies.sqlite",
            token_secret_file=self.workdir / "token-secret")  # fmt: skip
        settings.dashboard = DashboardSettings(frames_path=self.workdir / "frames")  # the viewer's copies
        if orthanc is not None:
            user, password = orthanc.auth
            settings.pacs = PacsSettings(dicomweb_url=orthanc.dicomweb_url, orthanc_url=orthanc.url, username=user,
                                         password=password, results_site=SITE)  # fmt: skip
        else:
            settings.pacs = PacsSettings(results_site=SITE)
        settings.dicom_transfer = TransferSettings(
            enabled=True, worker_id="demo-dicom", staging_path=self.workdir / "staging",
            series_path=self.workdir / "series", series_quiet_s=1.0, sweep_interval_s=0.5)  # fmt: skip
        service = AegleService(settings, engine=engine)
        folder = None
        if orthanc is None:
            folder = service.state.pacs = FolderPacs()
        live = stack.enter_context(LiveService(service.app, port))
        tokens = service.state.tokens
        device_token = tokens.create("demo-modality", "device")
        login_name = f"demo-login-{secrets.token_hex(4)}"
        login = tokens.create(login_name, "clinician")
        stack.callback(lambda: tokens.revoke(login_name) and log.info("one-time dashboard login revoked"))
        operator_name = f"demo-operator-{secrets.token_hex(4)}"
        self.dashboard = (live.url, login, tokens.create(operator_name, "operator"))
        stack.callback(lambda: tokens.revoke(operator_name))
        say(f"  service: {live.url} (uvicorn; STOW-RS, DICOM over MQTT from edge nodes, result events)")
        if orthanc is not None:
            say(f"  PACS: Orthanc on {LOOPBACK}:{orthanc.port} (DICOMweb, authentication on)")
        else:
            say(f"  PACS: Orthanc skipped: {self.orthanc_off}\n        derived series are kept by the demo instead")
        if sys.stdout.isatty():
            say(f"  dashboard (one-time login, valid until the demo ends): {live.url}/dashboard/login#token={login}")
        edge = EdgeNode(EdgeSettings(site=SITE, outbox_path=self.workdir / "edge-outbox", dicom_port=free_port()),
                        broker.mqtt_settings(EDGE_ID)).start()  # fmt: skip
        stack.callback(edge.stop)
        say(f"  edge node {EDGE_ID}: C-STORE SCP on {LOOPBACK}:{edge.scp.port} → outbox → MQTT")
        runs = []
        for study in STUDIES:
            patient = sim.patients[study.patient_index % len(sim.patients)].patient_id
            acquired = self.started + timedelta(seconds=self.duration_s * study.at_fraction)
            runs.append(StudyRun(study, patient, acquired, build_series(study, patient, acquired)))
        for r in runs:
            first = r.sources[0]
            r.sent_s = time.monotonic()
            if r.study.route == "edge":
                statuses = c_store(edge.scp.port, r.sources)
                how = f"C-STORE to the edge node: {sum(s == 0 for s in statuses)} of {len(statuses)} accepted"
            else:
                threading.Thread(target=self._stow, args=(live.url, device_token, r), daemon=True).start()
                how = "STOW-RS to the service (device token)"
            say(f"  {r.study.label}: {len(r.sources)} slices {first.Rows}×{first.Columns} of {r.patient}, acquired "
                f"{r.acquired:%H:%M:%S} UTC → {how}")
        for r in runs:
            r.event = viewer.result(str(r.sources[0].SeriesInstanceUID), timeout=600)
            r.done_s = time.monotonic() - r.sent_s
            if r.event is None:
                say(f"  FAILED {r.study.label}: no result event within 600 s")
                continue
            say(f"  {r.study.label}: result event {r.event['status']} after {r.done_s:.0f} s: "
                f"{r.event['counts']['enhanced']} derived instances by {r.event['model']} {r.event['model_version']}")
            for failure in r.event["failures"][:3]:
                say(f"    FAILED {failure['reason']}: {failure['detail']}")
            self._fetch(r, orthanc, folder)
        self.lap("imaging_s", since)
        return runs

    def _stow(self, url: str, token: str, r: StudyRun) -> None:
        status = stow(url, token, r.sources)
        log.info("STOW-RS of the %s answered %d", r.study.label, status)

    def _fetch(self, r: StudyRun, orthanc: Orthanc | None, folder: FolderPacs | None) -> None:
        """The derived series as the PACS has it (WADO-RS from Orthanc), on disk and checked."""
        from aegle.demo_checks import dciodvfy_counts

        assert r.event is not None
        uid, study_uid = r.event["derived_series_uid"], r.event["study_uid"]
        if uid is None:
            return
        if orthanc is not None:
            from server import DicomWebStore

            with DicomWebStore(orthanc.dicomweb_url, *orthanc.auth) as pacs:
                r.derived = pacs.retrieve_series(study_uid, uid)
                r.in_pacs = bool(pacs.search_series(study_uid, {"SeriesInstanceUID": uid}))
        elif folder is not None:
            r.derived = folder.series.get(uid, [])
        folder_path = self.workdir / "derived" / uid
        folder_path.mkdir(parents=True, exist_ok=True)
        paths = []
        for ds in r.derived:
            path = folder_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        counts = dciodvfy_counts(paths)
        r.info["dciodvfy"] = "not installed" if counts is None else f"{counts[0]} errors, {counts[1]} warnings"
        r.info["files"] = str(folder_path)
        where = "fetched back from Orthanc (WADO-RS), QIDO-RS finds it" if r.in_pacs else "kept by the demo"
        say(f"    derived series {uid}: {len(r.derived)} instances {where}; dciodvfy {r.info['dciodvfy']}")

    def _report(self, runs: list[StudyRun], engine: InferenceEngine, viewer: Viewer,
                orthanc: Orthanc | None) -> dict[str, Any]:
        from aegle.demo_checks import analyse

        since = time.monotonic()
        images: dict[str, dict[str, Path]] = {}
        studies = []
        for r in runs:
            info = analyse(r, engine, self.workdir)
            images[r.study.label] = info.pop("images")
            studies.append(info)
            say(f"  {r.study.label}: triage: {info['triage_text']}")
            say(f"      context: {info['context_line']}")
            say(f"      {info['context_effect_text']}")
            if images[r.study.label]:
                say(f"      pictures: {', '.join(str(p) for p in images[r.study.label].values())}")
        charts = self._charts(runs)
        finished = datetime.now(UTC)
        self.lap("report_s", since)
        summary: dict[str, Any] = {
            "started": self.started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
            "orthanc": "running (loopback-only namespace)" if orthanc is not None else f"skipped: {self.orthanc_off}",
            "vitals": {"patients": self.patients, "duration_s": self.duration_s, "messages_ingested": self.accepted,
                       "samples_written": self.written, "dead_lettered": self.rejected,
                       "dead_letters": dict(viewer.deadletters)},
            "figures": {"patients": self.patients, "messages_ingested": int(self.accepted),
                        "samples_written": int(self.written), "dead_lettered": int(self.rejected),
                        "studies": len(runs), "source_slices": sum(len(r.sources) for r in runs),
                        "derived_instances": sum(len(r.derived) for r in runs), **self.timings,
                        **{f"{r.study.label}_processing_s": round(r.done_s, 1) for r in runs},
                        "total_s": round(time.monotonic() - self.t0, 1)},
            "studies": studies,
            "paths": {"report": str(self.workdir / "report.html"), "summary": str(self.workdir / "summary.json"),
                      "log": str(self.workdir / "demo.log"), "derived": str(self.workdir / "derived"),
                      "pictures": str(self.workdir / "pictures")},
        }  # fmt: skip
        (self.workdir / "report.html").write_text(render_html(summary, charts, images), encoding="utf-8")
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        return summary

    def _charts(self, runs: list[StudyRun]) -> dict[str, str]:
        """Vitals charts (inline SVG) of the patients with a study, acquisition time marked."""
        from server import open_store

        store = open_store(self.settings.store)
        try:
            end = datetime.now(UTC)
            charts = {}
            for r in runs:
                samples = store.query(r.patient, int(self.started.timestamp() * 1000), int(end.timestamp() * 1000))
                marker = (r.acquired - self.started).total_seconds()
                charts[f"{r.patient} ({r.study.label} acquired at the dashed line)"] = vitals_svg(
                    chart_series(samples, self.started), 0.0, self.duration_s, marker)
            return charts
        finally:
            store.close()


__all__ = ["Demo", "run_demo"]
