"""The models the engine serves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from server.api.deps import require, state
from server.api.tokens import Principal
from server.inference import ROLES

router = APIRouter(tags=["models"])
MODEL_ROLES = ("clinician", "operator", "admin")


@router.get("/api/v1/models", summary="Models loaded, their versions and backends, and those that failed to load")
def list_models(request: Request, _: Annotated[Principal, Depends(require(*MODEL_ROLES))]) -> dict[str, Any]:
    st = state(request)
    inference = st.settings.inference
    served = {role: getattr(inference, role).model_dump() for role in ROLES}  # what the settings ask for
    if st.engine is None:
        return {"served": served, "models": [], "missing": {}, "engine_error": st.engine_error}
    return {"served": served, "models": st.engine.models(), "missing": st.engine.missing, "engine_error": None}
