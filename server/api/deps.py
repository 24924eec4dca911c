"""What the routes share: the service state, token authentication with roles, auditing, errors, body reading."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram

from core.settings import Settings
from server.api.audit import AuditLog
from server.api.studylog import StudyLog
from server.api.tokens import Principal, TokenStore
from server.inference import InferenceEngine
from server.store import VitalsStore

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
    pipeline: Any = None  # server.study.pipeline.StudyPipeline
    pacs: Any = None  # server.pacs.DicomWebStore
    gan_generators: Any = None  # hybrid-GAN stages, loaded on the first synthesis
    engine_error: str | None = None


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


def require(*roles: str) -> Callable[..., Principal]:
    """Dependency: a valid token (else 401 + ``WWW-Authenticate: Bearer``) whose role is in ``roles`` (else 403)."""
    allowed = ", ".join(roles)

    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        if credentials is None:
            raise api_error(
                401, "missing-token", "an API token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="aegle"'},
            )  # fmt: skip
        principal = state(request).tokens.authenticate(credentials.credentials)
        if principal is None:
            raise api_error(
                401, "invalid-token", "the API token is unknown or revoked",
                headers={"WWW-Authenticate": 'Bearer realm="aegle", error="invalid_token"'},
            )  # fmt: skip
        if principal.role not in roles:
            raise api_error(
                403, "forbidden-role", f"role {principal.role!r} may not use this endpoint; it needs one of: {allowed}"
            )
        request.state.principal = principal
        return principal

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
