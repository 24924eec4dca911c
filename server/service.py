"""The running server: one object that joins every input path to one study pipeline.

:class:`AegleService` composes, from :class:`~core.settings.Settings`:

* the HTTP app (``server.api.create_app``): the API and DICOMweb STOW-RS input at ``/dicom-web/studies``;
* the vitals store (``open_store``) and the context lookup (``core.context.context_at`` with
  ``settings.context``), the inference engine and the :class:`~server.study.pipeline.StudyPipeline` — derived series go
  to the PACS (``DicomWebStore`` when ``settings.pacs.dicomweb_url`` is set) and result events to the broker
  (when ``settings.mqtt.username`` is set: the broker runs with authentication);
* with ``settings.dicom_transfer.enabled``: the MQTT DICOM :class:`~server.study.assembly.TransferAssembler`,
  whose instances a :class:`SeriesCollector` groups into series;
* with ``settings.pacs.watch``: the Orthanc watch mode (``server.pacs.watcher_for``).

The input paths start inside the app's lifespan (after the engine, before the first request) and stop before
the app closes its store, PACS client and engine. Series from the assembler and the watcher are counted on
``/metrics`` (``aegle_series_total``, ``aegle_instances_total``) and kept in the study log exactly like the
series that arrive over HTTP.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from core import topics
from core.durable import fsync_dir, replace_durably
from core.settings import Settings
from core.vitals import dumps_compact
from server.api import create_app
from server.api.deps import ServiceState
from server.api.routes.dicom import build_pipeline, record
from server.study.assembly import TransferInfo
from server.study.pipeline import MqttResultPublisher, SeriesResult, StudyPipeline

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from fastapi import FastAPI

    from server.inference import InferenceEngine
    from server.pacs import OrthancWatcher
    from server.study.assembly import TransferAssembler

log = logging.getLogger("aegle.service")
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
FAILED_DIR = "given-up"


class RecordedPipeline:
    """``process_series`` of a pipeline, with every result counted on ``/metrics`` and kept in the study log."""

    def __init__(self, pipeline: StudyPipeline, state: ServiceState) -> None:
        self.pipeline = pipeline
        self.state = state

    def process_series(self, datasets: Sequence[Dataset | bytes]) -> SeriesResult:
        result = self.pipeline.process_series(datasets)
        record(self.state, [result])
        return result


class SeriesCollector:
    """Instances delivered one by one (MQTT transfers) → one pipeline run per series, once the series is quiet.

    Each instance is filed durably under ``path/{SeriesInstanceUID}/{transfer_id}.dcm`` before :meth:`add`
    returns (the assembler then marks the transfer delivered), so a restart loses nothing: filed series are
    picked up again at :meth:`start`. A series runs when no instance of it has arrived for ``quiet_s`` (the
    idea of Orthanc's StableAge); an instance arriving later starts a new quiet period and yields a second
    derived series. When nothing could be stored and a failure is retryable (PACS down), the series is kept and
    retried after ``quiet_s · 2^n`` (at most ``max_backoff_s``), ``max_attempts`` times, then moved to
    ``path/given-up/`` with the result. An instance whose header cannot be read is run at once (the pipeline
    records the failure) and dead-lettered through ``reject``.
    """

    def __init__(
        self,
        path: Path,
        quiet_s: float,
        process: Callable[[Sequence[Dataset | bytes]], SeriesResult],
        reject: Callable[[TransferInfo, SeriesResult], None] | None = None,
        *,
        max_attempts: int = 5,
        max_backoff_s: float = 300.0,
    ) -> None:
        self.path = Path(path)
        self.quiet_s = quiet_s
        self.process = process
        self.reject = reject
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.results: list[SeriesResult] = []  # the last results, newest last (bounded)
        self._due: dict[str, float] = {}  # series directory → monotonic time it may run
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, data: bytes, info: TransferInfo) -> None:
        """The assembler's ``on_instance``: file the instance durably under its series."""
        key = _series_key(data)
        if key is None:
            result = self.process([data])
            self._keep(result)
            if self.reject is not None:
                self.reject(info, result)
            return
        with self._lock:
            directory = self.path / key
            directory.mkdir(parents=True, exist_ok=True)
            replace_durably(directory / f"{info.transfer_id}.dcm", data)
            self._due[key] = time.monotonic() + self.quiet_s
            self._attempts.pop(key, None)

    def start(self) -> SeriesCollector:
        """Schedule series filed before a restart, then run due series in a background thread."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for directory in sorted(self.path.iterdir()):
                if directory.is_dir() and directory.name != FAILED_DIR:
                    self._due.setdefault(directory.name, time.monotonic() + self.quiet_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aegle-series-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 120.0) -> None:
        """Stop after the series in progress; series not yet run stay filed for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def pending(self) -> int:
        """Series filed and not yet run."""
        with self._lock:
            return len(self._due)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = sorted((at, key) for key, at in self._due.items() if at <= now)
                upcoming = min(self._due.values(), default=now + self.quiet_s)
            for _, key in due:
                if self._stop.is_set():
                    return
                try:
                    self._run_series(key)
                except Exception as exc:  # a bug or a full disk must not stop the other series
                    log.error("series run failed (%s); retried later", type(exc).__name__, exc_info=exc)
                    self._retry_or_give_up(key, None)
            self._wake.wait(max(0.05, min(upcoming - time.monotonic(), self.quiet_s)))
            self._wake.clear()

    def _run_series(self, key: str) -> None:
        directory = self.path / key
        with self._lock:
            if self._due.get(key, float("inf")) > time.monotonic():
                return  # an instance arrived meanwhile: wait for quiet again
            files = sorted(directory.glob("*.dcm"))
            self._due.pop(key)
        if not files:
            return
        result = self.process([f.read_bytes() for f in files])
        self._keep(result)
        if not result.stored and any(f.retryable for f in result.failures):
            self._retry_or_give_up(key, result)
            return
        with self._lock:
            for f in files:
                f.unlink()
            self._attempts.pop(key, None)
            if key not in self._due:
                shutil.rmtree(directory, ignore_errors=True)
            fsync_dir(self.path)

    def _retry_or_give_up(self, key: str, result: SeriesResult | None) -> None:
        with self._lock:
            attempts = self._attempts.get(key, 0) + 1
            if attempts < self.max_attempts:
                self._attempts[key] = attempts
                delay = min(self.quiet_s * 2**attempts, self.max_backoff_s)
                self._due.setdefault(key, time.monotonic() + delay)
                log.warning("series not stored (attempt %d); retry in %.0f s", attempts, delay)
                return
            self._attempts.pop(key, None)
            self._due.pop(key, None)
            if not (self.path / key).is_dir():
                return
            target = self.path / FAILED_DIR / f"{key}-{uuid.uuid4().hex[:8]}"
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.path / key).replace(target)
            (target / "result.json").write_text(json.dumps(result.to_event() if result else None, default=str))
            fsync_dir(target.parent)
            log.error("series given up after %d attempts; kept in %s", attempts, target.parent)

    def _keep(self, result: SeriesResult) -> None:
        with self._lock:
            self.results = [*self.results[-99:], result]


def _series_key(data: bytes) -> str | None:
    """The directory name of an instance's series (its SeriesInstanceUID), or None if the header is unreadable."""
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        series_uid = str(ds.SeriesInstanceUID)
    except Exception:  # not DICOM, torn header, no series UID: the pipeline says which
        return None
    return series_uid if _UID.match(series_uid) else None


class AegleService:
    """The HTTP app plus, by settings, the MQTT DICOM assembler and the Orthanc watch mode (see the module doc).

    ``engine`` None: the app loads it from ``settings.inference`` at start-up. :attr:`app` runs under any ASGI
    server (its lifespan starts and stops the input paths); :meth:`serve` runs it with uvicorn.
    """

    def __init__(self, settings: Settings, *, engine: InferenceEngine | None = None) -> None:
        self.settings = settings
        self.app: FastAPI = create_app(settings, engine=engine)
        self.state: ServiceState = self.app.state.aegle
        self.pipeline: StudyPipeline | None = None
        self.collector: SeriesCollector | None = None
        self.assembler: TransferAssembler | None = None
        self.watcher: OrthancWatcher | None = None
        self._mqtt: mqtt.Client | None = None
        app_lifespan = self.app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
            async with app_lifespan(app) as value:
                await run_in_threadpool(self.start_inputs)
                try:
                    yield value
                finally:
                    await run_in_threadpool(self.stop_inputs)

        self.app.router.lifespan_context = lifespan

    def start_inputs(self) -> None:
        """Build the pipeline on the app's engine and start the enabled input paths (the app calls this)."""
        st, settings = self.state, self.settings
        if st.engine is None:
            log.error("no inference engine (%s): DICOM input paths not started", st.engine_error)
            return
        if settings.pacs.watch and st.pacs is None:
            raise ValueError("the watch mode stores back through DICOMweb: set AEGLE_PACS__DICOMWEB_URL")
        results = None
        if settings.mqtt.username:
            self._mqtt = _connect(settings, "aegle-results")
            results = MqttResultPublisher(self._mqtt, settings.pacs.results_site)
        self.pipeline = st.pipeline = build_pipeline(st, st.engine, results)
        recorded = RecordedPipeline(self.pipeline, st)
        try:
            if settings.dicom_transfer.enabled:
                from server.study.assembly import TransferAssembler

                transfer = settings.dicom_transfer
                self.collector = SeriesCollector(transfer.series_path, transfer.series_quiet_s,
                                                 recorded.process_series, self._dead_letter).start()  # fmt: skip
                self.assembler = TransferAssembler(settings.mqtt, transfer, self.collector.add).start()
            if settings.pacs.watch:
                from server.pacs import watcher_for

                self.watcher = watcher_for(settings.pacs, st.pacs, recorded).start()
        except BaseException:
            self.stop_inputs()
            raise
        log.info(
            "input paths: STOW-RS on; MQTT DICOM %s; Orthanc watch %s; result events %s",
            *("on" if x else "off" for x in (self.assembler, self.watcher, results)),
        )

    def stop_inputs(self) -> None:
        """Stop taking input (assembler, watcher), finish the series in hand, disconnect; idempotent."""
        if self.assembler is not None:
            self.assembler.stop()
            self.assembler = None
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.collector is not None:
            self.collector.stop()
            self.collector = None
        if self._mqtt is not None:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
            self._mqtt = None

    def serve(self) -> None:
        """Run with uvicorn on ``settings.api.host:port`` until SIGTERM/SIGINT."""
        import uvicorn

        # uvicorn's access log and httpx's request log print concrete URLs (patient ids, study UIDs): off; the
        # app logs route templates instead.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        api = self.settings.api
        uvicorn.run(self.app, host=api.host, port=api.port, access_log=False, log_config=None)

    def _dead_letter(self, info: TransferInfo, result: SeriesResult) -> None:
        """Announce an instance that could not be read (reason, transfer id, size, SHA-256 — never the bytes)."""
        failure = result.failures[0] if result.failures else None
        reason = failure.reason if failure else "unreadable"
        letter = {
            "reason": reason, "detail": failure.detail if failure else "", "kind": "dicom-instance",
            "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            **{k: v for k, v in asdict(info).items() if k in ("transfer_id", "edge_id", "size", "sha256")},
        }  # fmt: skip
        log.info("dead-lettered a forwarded DICOM instance: %s", reason)
        if self._mqtt is not None:
            self._mqtt.publish(topics.deadletter(info.site, reason), dumps_compact(letter), qos=1)


def _connect(settings: Settings, role: str, timeout_s: float = 5.0) -> mqtt.Client:
    """An MQTT v5 client with the service's credentials; waits up to ``timeout_s`` for the first connection,
    then keeps (re)connecting in the background."""
    import paho.mqtt.client as mqtt

    cfg = settings.mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{role}-{uuid.uuid4().hex[:12]}",
                         protocol=mqtt.MQTTv5)  # fmt: skip
    client.username_pw_set(cfg.username, cfg.secret())
    if cfg.tls:
        client.tls_set()
    client.reconnect_delay_set(0.2, 10)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
    client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
    client.loop_start()
    if not connected.wait(timeout_s):
        log.warning("broker %s:%d not reachable yet; result events wait for the connection", cfg.host, cfg.port)
    return client


__all__ = ["AegleService", "RecordedPipeline", "SeriesCollector"]
