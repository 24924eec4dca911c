"""Liveness, readiness (models, broker, store, PACS — each with a reason), Prometheus metrics, the OpenAPI schema."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import ServiceState, require, state, vitals_store
from server.api.tokens import ROLES, Principal
from server.inference import role_paths

router = APIRouter(tags=["health"])
METRICS_ROLES = ("operator", "admin")


@router.get("/healthz", summary="Alive (no authentication)")
def healthz() -> dict[str, str]:
    return {"status": "alive"}


def check_models(st: ServiceState) -> tuple[bool, str]:
    """Every model some path uses is loaded; the reason names each role's model and its paths, or why not."""
    if st.engine is None:
        return False, f"inference engine not started: {st.engine_error}"
    if not st.engine.ready:
        return False, "; ".join(f"{name}: {why}" for name, why in st.engine.missing.items()) or "no models"
    inference = st.engine.settings
    return True, "loaded: " + "; ".join(
        f"{role} {getattr(inference, role).name} for {', '.join(paths)}"
        for role, paths in role_paths(inference).items() if paths
    )


def check_broker(st: ServiceState) -> tuple[bool, str]:
    """Connect to the MQTT broker with the service's credentials and disconnect."""
    from core import probe

    return probe(st.settings.mqtt, st.settings.api.probe_timeout_s, f"aegle-readyz-{time.monotonic_ns()}")


def check_store(st: ServiceState) -> tuple[bool, str]:
    try:
        ok = vitals_store(st).ping()
    except Exception as exc:  # the store's own exceptions vary by backend; readiness reports, never raises
        return False, f"store: {exc}"
    return ok, f"{st.settings.store.backend} store " + ("answers" if ok else "does not answer")


def check_pacs(st: ServiceState) -> tuple[bool, str]:
    """A QIDO-RS query for one series on the configured DICOMweb PACS."""
    if st.pacs is None:
        return True, "no PACS configured (DICOM results are returned to the caller only)"
    from server.pacs import PacsError

    try:
        st.pacs.search_series(limit=1)
    except PacsError as exc:
        return False, f"PACS: {exc}"
    return True, "PACS answers QIDO-RS"


CHECKS = {"models": check_models, "broker": check_broker, "store": check_store, "pacs": check_pacs}


@router.get("/readyz", summary="Ready: models loaded; broker, store and PACS reachable (no authentication)")
async def readyz(request: Request) -> JSONResponse:
    st = state(request)
    timeout = st.settings.api.probe_timeout_s + 1

    async def run(check: Any) -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(check, st), timeout)
        except TimeoutError:
            return False, f"no answer within {timeout:g} s"
        except Exception as exc:  # a probe that breaks reports "not ready", it never fails the endpoint
            return False, f"{type(exc).__name__}: {exc}"

    results = await asyncio.gather(*(run(c) for c in CHECKS.values()))
    checks = {name: {"ok": ok, "reason": reason} for name, (ok, reason) in zip(CHECKS, results, strict=True)}
    ready = all(ok for ok, _ in results)
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
def metrics(request: Request, _: Annotated[Principal, Depends(require(*METRICS_ROLES))]) -> Response:
    st = state(request)
    body = generate_latest(st.metrics.registry)
    if st.engine is not None:
        body += generate_latest(st.engine.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", summary="The OpenAPI schema (any valid token)", include_in_schema=False)
def openapi(request: Request, _: Annotated[Principal, Depends(require(*ROLES))]) -> JSONResponse:
    return JSONResponse(request.app.openapi())
