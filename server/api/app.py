"""The FastAPI app factory (contract D): routes under ``/api/v1``, DICOMweb STOW-RS input, health and metrics.

Every route but ``/healthz`` and ``/readyz`` needs an API token with a role the route names (see
docs/api.md). The request body is limited while it streams (413 with a reason). Logs name the route template
(``/api/v1/patients/{patient_id}/context``), never the concrete path, query or body: no patient data in logs.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import Settings
from server.api import images
from server.api.audit import AuditLog
from server.api.deps import ApiMetrics, ServiceState
from server.api.routes import admin, dicom, enhance, health, models, patients, studies, synthesize
from server.api.studylog import StudyLog
from server.api.tokens import TokenStore
from server.inference import ImageTooLarge, InferenceEngine, ModelMissing, QueueFull
from server.study import SeriesFrames, StudyRecord, build_pipeline

log = logging.getLogger("aegle.api")


class AccessLog:
    """ASGI middleware: per-request metrics and one log line by route template (no path, query or body)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            method = scope["method"]
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=route, method=method).observe(elapsed)
            log.info("%s %s -> %d in %.1f ms", method, route, status, elapsed * 1000)


class UnexpectedErrors:
    """ASGI middleware: an exception no route turned into a 4xx/503 becomes ``500 internal-error`` here.

    The answer is an ordinary response, so the client's keep-alive connection stays usable (an exception that
    reaches the server closes it), and the log names the exception type, route template and raising line —
    never the exception's message, which may quote a DICOM header or a query.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            where = traceback.extract_tb(exc.__traceback__)[-1]
            route = getattr(scope.get("route"), "path", "unmatched")
            log.error("unhandled %s in %s %s (%s:%d)", type(exc).__name__, scope["method"], route,
                      where.filename.rsplit("/", 1)[-1], where.lineno)  # fmt: skip
            reply = _json_error(500, "internal-error", "the server could not handle this request; it is logged")
            await reply(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a streaming body crosses the limit."""


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413 — from Content-Length before reading, or
    while the body streams (chunked uploads are cut off at the limit, never read to the end)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _json_error(413, "body-too-large", f"request body exceeds {self.limit} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await refusal(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await refusal(scope, receive, send)


def _json_error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": {"reason": reason, "message": message}}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, *, engine: InferenceEngine | None = None, pacs: Any = None) -> FastAPI:
    """The service. ``engine`` None: built from ``settings.inference`` at start-up (and closed at shutdown).

    ``pacs`` (``server.pacs.DicomWebStore``, default: from ``settings.pacs.dicomweb_url``) is where derived series
    go and what ``/readyz`` probes. At start-up, once the engine is there, the study pipeline that serves DICOM
    input is built on it, the vitals store and the PACS (``server.study.build_pipeline``), every series recorded
    in the study log and the metrics (``server.study.StudyRecord``); no result events (``AegleService`` adds them).
    """
    settings = settings or Settings()
    api = settings.api
    owns_pacs = pacs is None and bool(settings.pacs.dicomweb_url)
    if owns_pacs:
        from server.pacs import DicomWebStore

        pacs = DicomWebStore(settings.pacs.dicomweb_url, settings.pacs.username, settings.pacs.secret())
    st = ServiceState(
        settings=settings, engine=engine, tokens=TokenStore.from_settings(api), audit=AuditLog.from_settings(api),
        studies=StudyLog.from_settings(api), pacs=pacs,
        frames=SeriesFrames(settings.dashboard.frames_path, settings.dashboard.keep_series),
    )  # fmt: skip
    owns_engine = engine is None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if owns_engine:
            try:
                st.engine = InferenceEngine.from_settings(settings.inference)
            except Exception as exc:  # e.g. TensorRT forced without CUDA: serve, and say why in /readyz
                st.engine_error = f"{type(exc).__name__}: {exc}"
                log.error("inference engine failed to start: %s", st.engine_error)
        if st.engine is not None:
            record = StudyRecord(st.metrics, st.studies, st.frames)
            st.pipeline = build_pipeline(st.engine, st.vitals, st.pacs, None, settings, record)
        try:
            yield
        finally:
            if owns_engine and st.engine is not None:
                st.engine.close()
            for resource in (st.tokens, st.audit, st.studies, st.store, st.pacs if owns_pacs else None):
                if resource is not None:
                    resource.close()

    app = FastAPI(
        title="Aegle inference service",
        version="1",
        description="Context-conditioned medical image enhancement, triage and synthesis. Bearer tokens with "
        "roles device, clinician, operator, admin; see docs/api.md.",
        lifespan=lifespan,
        openapi_url=None,  # served by health.openapi behind authentication
        docs_url=None,
        redoc_url=None,
    )
    app.state.aegle = st
    for module in (health, enhance, dicom, synthesize, patients, studies, models, admin):
        app.include_router(module.router)
    from server.dashboard import RootRedirect, create_dashboard  # it builds on this package: imported once built

    app.mount("/dashboard", create_dashboard(st))  # the browser dashboard (docs/dashboard.md); GET / leads to it
    app.add_middleware(RootRedirect)
    app.add_middleware(BodyLimit, limit=api.max_upload_bytes)
    app.add_middleware(UnexpectedErrors)  # outside BodyLimit: its refusal is not an error
    app.add_middleware(AccessLog, metrics=st.metrics)  # outermost: sees the 413s and 500s too

    @app.exception_handler(images.ImageInputError)
    async def image_error(_r: Request, exc: images.ImageInputError) -> JSONResponse:
        return _json_error(exc.status, exc.reason, str(exc))

    @app.exception_handler(ImageTooLarge)
    async def image_too_large(_r: Request, exc: ImageTooLarge) -> JSONResponse:
        return _json_error(413, "image-too-large", str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(_r: Request, exc: QueueFull) -> JSONResponse:
        return _json_error(503, "queue-full", str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ModelMissing)
    async def model_missing(_r: Request, exc: ModelMissing) -> JSONResponse:
        return _json_error(503, "model-not-loaded", str(exc))

    return app


__all__ = ["create_app"]
