"""A patient's sensor context (now or at a time) and vitals history, from the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from core.context import SensorContext, context_at
from core.vitals import from_ms, to_ms
from server.api.deps import ServiceState, api_error, audit, require, state
from server.api.tokens import Principal
from server.store import StoreUnavailable, VitalsStore, open_store

router = APIRouter(tags=["patients"])
PATIENT_ROLES = ("clinician",)
MAX_HISTORY = timedelta(days=7)
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


def vitals_store(st: ServiceState) -> VitalsStore:
    """The shared store, opened on first use; 503 if it cannot be opened."""
    if st.store is None:
        try:
            st.store = open_store(st.settings.store)
        except (StoreUnavailable, OSError) as exc:
            raise api_error(503, "store-unavailable", f"vitals store unavailable: {exc}") from None
    return st.store


def patient_context(st: ServiceState, patient_id: str, at: datetime) -> SensorContext:
    """The patient's context at ``at`` read from the store (blocking; call from a worker thread)."""
    try:
        return context_at(
            vitals_store(st), patient_id, at, st.settings.context.window_s, st.settings.context.freshness_tau_s
        )
    except StoreUnavailable as exc:
        raise api_error(503, "store-unavailable", f"vitals store unavailable: {exc}") from None


def applied_context(ctx: SensorContext) -> dict[str, Any]:
    """What the enhancer was given, without the patient id (as the pipeline reports it): summary + vector."""
    from server.study import context_summary

    return context_summary(ctx) | {"vector": [round(float(v), 6) for v in ctx.vector]}


@router.get("/api/v1/patients/{patient_id}/context", summary="A patient's sensor context now or at a time")
async def get_context(
    patient_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require(*PATIENT_ROLES))],
    at: Annotated[datetime | None, Query(description="ISO 8601 with offset; default now")] = None,
) -> dict[str, Any]:
    moment = aware(at, datetime.now(UTC))
    audit(request, principal, "patient.context.read", f"patient:{patient_id}", f"at={moment.isoformat()}")
    ctx = await run_in_threadpool(patient_context, state(request), patient_id, moment)
    return ctx.to_dict()


@router.get("/api/v1/patients/{patient_id}/vitals", summary="A patient's stored vitals between two times")
async def get_vitals(
    patient_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require(*PATIENT_ROLES))],
    start: Annotated[datetime | None, Query(alias="from", description="default: an hour before `to`")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    stop = aware(end, datetime.now(UTC))
    begin = aware(start, stop - timedelta(hours=1))
    if begin > stop or stop - begin > MAX_HISTORY:
        raise api_error(400, "bad-range", f"`from` must precede `to` by at most {MAX_HISTORY.days} days")
    audit(request, principal, "patient.vitals.read", f"patient:{patient_id}",
          f"from={begin.isoformat()} to={stop.isoformat()}")  # fmt: skip
    st = state(request)

    def query() -> list[dict[str, Any]]:
        try:
            samples = vitals_store(st).query(patient_id, to_ms(begin), to_ms(stop))
        except StoreUnavailable as exc:
            raise api_error(503, "store-unavailable", f"vitals store unavailable: {exc}") from None
        return [
            {"t": from_ms(s.t_ms).isoformat().replace("+00:00", "Z"), "device_id": s.device_id, "code": s.code,
             "value": s.value}
            for s in samples[:limit]
        ]  # fmt: skip

    rows = await run_in_threadpool(query)
    return {"patient_id": patient_id, "from": begin.isoformat(), "to": stop.isoformat(), "samples": rows,
            "truncated": len(rows) == limit}  # fmt: skip
