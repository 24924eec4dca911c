"""A patient's sensor context (now or at a time) and vitals history, from the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from core import from_ms, to_ms
from server.api.deps import (
    api_error,
    audit,
    aware,
    patient_context,
    require,
    state,
    store_unavailable,
    vitals_store,
)
from server.api.tokens import Principal
from server.store import StoreUnavailable

router = APIRouter(tags=["patients"])
PATIENT_ROLES = ("clinician",)
MAX_HISTORY = timedelta(days=7)


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
            raise store_unavailable(exc) from None
        return [
            {"t": from_ms(s.t_ms).isoformat().replace("+00:00", "Z"), "device_id": s.device_id, "code": s.code,
             "value": s.value}
            for s in samples[:limit]
        ]  # fmt: skip

    rows = await run_in_threadpool(query)
    return {"patient_id": patient_id, "from": begin.isoformat(), "to": stop.isoformat(), "samples": rows,
            "truncated": len(rows) == limit}  # fmt: skip
