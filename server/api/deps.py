"""What the routes share: the service state, token authentication with roles, auditing, errors, body reading,
times from the query, the vitals store and a patient's context (with their HTTP errors)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram

from core import Settings
from server.api.audit import AuditLog
from server.api.studylog import StudyLog
from server.api.tokens import Principal, TokenStore
from server.inference import InferenceEngine
from server.store import StoreUnavailable, VitalsStore, open_store
from server.study import VitalsContext

if TYPE_CHECKING:
    from core import SensorContext
    from server.dashboard.operator import OperatorMonitor
    from server.study import StudyPipeline
    from server.study.frames import SeriesFrames

_bearer = HTTPBearer(auto_error=False, description="API token (`aegle token create --role ROLE --name NAME`)")


class ApiMetrics:
    """Prometheus metrics of the HTTP layer (own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "aegle_api_requests", "HTTP requests by route template, method and status", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "aegle_api_request_seconds", "HTTP request latency by route template", ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry,
        )  # fmt: skip
        self.series = Counter(
            "aegle_series", "DICOM series handled by outcome (processed, failed)", ["outcome"], registry=self.registry
        )
        self.instances = Counter(
            "aegle_instances", "DICOM instances handled by outcome (enhanced, failed)", ["outcome"],
            registry=self.registry,
        )  # fmt: skip

    def value(self, name: str, **labels: str) -> float:
        """Current value of a metric sample (0 if absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0


@dataclass
class ServiceState:
    """Everything a request may need; one per app (``app.state.aegle``)."""

    settings: Settings
    engine: InferenceEngine | None
    tokens: TokenStore
    audit: AuditLog
    studies: StudyLog
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    store: VitalsStore | None = None
    pipeline: StudyPipeline | None = None  # built at start-up (server.study.build_pipeline)
    pacs: Any = None  # server.pacs.DicomWebStore
    frames: SeriesFrames | None = None  # the viewer's copy of enhanced series (server.study.frames)
    operator_monitor: OperatorMonitor | None = None  # edge, ingest and dead-letter statuses (server.dashboard)
    gan_generators: Any = None  # hybrid-GAN stages, loaded on the first synthesis
    engine_error: str | None = None

    def vitals(self) -> VitalsStore:
        """The shared vitals store, opened on first use (``StoreUnavailable`` / ``OSError`` when it cannot be)."""
        if self.store is None:
            self.store = open_store(self.settings.store)
        return self.store


def api_error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An HTTP error whose JSON body is ``{"detail": {"reason": code, "message": text}}``."""
    return HTTPException(status, detail={"reason": reason, "message": message}, headers=headers)


def state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState`."""
    return request.app.state.aegle


def engine(request: Request) -> InferenceEngine:
    """The inference engine, or 503 if it failed to start."""
    st = state(request)
    if st.engine is None:
        raise api_error(503, "engine-unavailable", f"inference engine not started: {st.engine_error}")
    return st.engine


def client_address(request: Request) -> str:
    """``host:port`` of the caller as the server saw it."""
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


def authorize(request: Request, token: str, roles: tuple[str, ...]) -> Principal:
    """The principal of ``token`` if it is valid (else 401 ``invalid-token``) and its role is in ``roles`` (else
    403 ``forbidden-role``); kept as ``request.state.principal``. The one role check of the API's bearer tokens
    (:func:`require`) and of the dashboard's sessions, which keep the token they were opened with."""
    principal = state(request).tokens.authenticate(token)
    if principal is None:
        raise api_error(
            401, "invalid-token", "the API token is unknown or revoked",
            headers={"WWW-Authenticate": 'Bearer realm="aegle", error="invalid_token"'},
        )  # fmt: skip
    if principal.role not in roles:
        raise api_error(
            403, "forbidden-role", f"role {principal.role!r} may not use this endpoint; it needs one of: "
            f"{', '.join(roles)}",
        )  # fmt: skip
    request.state.principal = principal
    return principal


def require(*roles: str) -> Callable[..., Principal]:
    """Dependency: a valid token (else 401 + ``WWW-Authenticate: Bearer``) whose role is in ``roles`` (else 403)."""

    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        if credentials is None:
            raise api_error(
                401, "missing-token", "an API token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="aegle"'},
            )  # fmt: skip
        return authorize(request, credentials.credentials, roles)

    check.roles = roles  # type: ignore[attr-defined]  # read by the docs table and the auth-matrix test
    return check


def audit(request: Request, principal: Principal, action: str, resource: str, detail: str = "") -> None:
    """Append an audit entry for an access to patient data (before the data is read or written)."""
    state(request).audit.record(principal.name, principal.role, action, resource, client_address(request), detail)


def binary_body(*media_types: str) -> dict[str, Any]:
    """``openapi_extra`` describing a raw (non-JSON) request body of ``media_types``, required, as bytes.

    The routes read the body themselves (:func:`read_body`, streamed under the size limit); this only tells
    clients and OpenAPI fuzzers what to send.
    """
    schema = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {m: {"schema": schema} for m in media_types}}}


async def read_body(request: Request) -> bytes:
    """The request body, read in chunks (the app's body limit applies while streaming); empty → 400."""
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
    if not chunks:
        raise api_error(400, "empty-body", "the request body is empty")
    return bytes(chunks)


def image_resource(data: bytes) -> str:
    """Audit resource name of an upload without patient identifiers: its sha256."""
    return f"image:sha256:{hashlib.sha256(data).hexdigest()}"


# Times a request may name: vitals are stored in milliseconds since the Unix epoch, and a window around a time
# must stay representable (year 1 minus an hour overflows).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive time (400 ``naive-time``) or one outside 1970–9000 (400 ``time-out-of-range``)
    is refused rather than guessed."""
    if value.tzinfo is None:
        raise api_error(400, "naive-time", f"time {value.isoformat()} has no UTC offset (add Z or +01:00)")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not EARLIEST <= moment < LATEST:
        raise api_error(
            400, "time-out-of-range",
            f"time {value.isoformat()} is outside {EARLIEST.isoformat()} to {LATEST.isoformat()}",
        )  # fmt: skip
    return moment


def aware(value: datetime | None, default: datetime) -> datetime:
    """:func:`utc` of ``value``, or ``default`` when it is None."""
    return default if value is None else utc(value)


def store_unavailable(exc: Exception) -> HTTPException:
    """503 ``store-unavailable`` for an error of the vitals store."""
    return api_error(503, "store-unavailable", f"vitals store unavailable: {exc}")


def vitals_store(st: ServiceState) -> VitalsStore:
    """The shared store, opened on first use; 503 if it cannot be opened."""
    try:
        return st.vitals()
    except (StoreUnavailable, OSError) as exc:
        raise store_unavailable(exc) from None


def patient_context(st: ServiceState, patient_id: str, at: datetime) -> SensorContext:
    """The patient's context at ``at`` read from the store, as the pipeline reads it at acquisition time
    (blocking; call from a worker thread); 503 when the store is unavailable."""
    try:
        return VitalsContext(lambda: vitals_store(st), st.settings.context)(patient_id, at)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
