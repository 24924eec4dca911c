"""The models the engine serves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from server.api.deps import require, state
from server.api.tokens import Principal

router = APIRouter(tags=["models"])
MODEL_ROLES = ("clinician", "operator", "admin")


@router.get("/api/v1/models", summary="Models loaded, their versions and backends, and those that failed to load")
def list_models(request: Request, _: Annotated[Principal, Depends(require(*MODEL_ROLES))]) -> dict[str, Any]:
    st = state(request)
    if st.engine is None:
        return {"models": [], "missing": {}, "engine_error": st.engine_error}
    return {"models": st.engine.models(), "missing": st.engine.missing, "engine_error": None}
