"""The running server: one object that joins every input path to one study pipeline.

:class:`AegleService` composes, from :class:`~core.settings.Settings`:

* the HTTP app (``server.api.create_app``): the API and DICOMweb STOW-RS input at ``/dicom-web/studies``;
* the study pipeline (:mod:`server.study`), built by ``server.study.build_pipeline`` from the app's inference
  engine, vitals store (the context at acquisition time, ``settings.context``) and PACS (``DicomWebStore`` when
  ``settings.pacs.dicomweb_url`` is set), plus result events to the broker (when ``settings.mqtt.username`` is
  set: the broker runs with authentication), and then the operator view's MQTT monitor (edge and ingest statuses,
  dead letters: ``server.dashboard.operator``);
* with ``settings.dicom_transfer.enabled``: the MQTT DICOM :class:`~server.study.assembly.TransferAssembler`,
  whose instances a :class:`~server.study.collection.SeriesCollector` groups into series;
* with ``settings.pacs.watch``: the Orthanc watch mode (``server.pacs.watcher_for``).

The input paths start inside the app's lifespan (after the engine, before the first request) and stop before
the app closes its store, PACS client and engine. Every series, whichever path it came by, is counted on
``/metrics`` (``aegle_series_total``, ``aegle_instances_total``) and kept in the study log by the pipeline itself
(``server.study.StudyRecord``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from core import Settings, connect_nowait, disconnect, dumps_compact, new_client, topics
from server.api import create_app
from server.api.deps import ServiceState
from server.dashboard.operator import OperatorMonitor, attach
from server.study import MqttResultPublisher, SeriesCollector, StudyRecord, build_pipeline

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from fastapi import FastAPI

    from server.inference import InferenceEngine
    from server.pacs import OrthancWatcher
    from server.study import SeriesResult, StudyPipeline, TransferAssembler, TransferInfo

log = logging.getLogger("aegle.service")


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
        self.monitor: OperatorMonitor | None = None
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
        """Build the pipeline (with result events) on the app's parts and start the enabled input paths (the app
        calls this)."""
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
            self.monitor = OperatorMonitor(settings).start()  # edge and ingest statuses, dead letters
            attach(st, self.monitor)
        self.pipeline = st.pipeline = build_pipeline(
            st.engine, st.vitals, st.pacs, results, settings, StudyRecord(st.metrics, st.studies, st.frames)
        )
        try:
            if settings.dicom_transfer.enabled:
                from server.study import TransferAssembler

                transfer = settings.dicom_transfer
                self.collector = SeriesCollector(transfer.series_path, transfer.series_quiet_s,
                                                 self.pipeline.process_series, self._dead_letter).start()  # fmt: skip
                self.assembler = TransferAssembler(settings.mqtt, transfer, self.collector.add).start()
            if settings.pacs.watch:
                from server.pacs import watcher_for

                self.watcher = watcher_for(settings.pacs, st.pacs, self.pipeline).start()
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
            disconnect(self._mqtt)
            self._mqtt = None
        if self.monitor is not None:
            attach(self.state, None)
            self.monitor.stop()
            self.monitor = None

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
    cfg = settings.mqtt
    client = new_client(cfg, f"{role}-{uuid.uuid4().hex[:12]}")
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
    connect_nowait(client, cfg, retry_unreachable=True)
    if not connected.wait(timeout_s):
        log.warning("broker %s:%d not reachable yet; result events wait for the connection", cfg.host, cfg.port)
    return client


__all__ = ["AegleService"]
