"""The models the engine serves, and which input path uses which."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from server.api.deps import require, state
from server.api.tokens import Principal
from server.inference import role_paths

router = APIRouter(tags=["models"])
MODEL_ROLES = ("clinician", "operator", "admin")


@router.get("/api/v1/models", summary="Models loaded, their versions and backends, which path uses which, and those "
            "that failed to load")  # fmt: skip
def list_models(request: Request, _: Annotated[Principal, Depends(require(*MODEL_ROLES))]) -> dict[str, Any]:
    st = state(request)
    inference = st.engine.settings if st.engine is not None else st.settings.inference
    served = {  # what the settings ask for, per role, and the input paths that use it (None: the role is unset)
        role: None if (wanted := getattr(inference, role)) is None else wanted.model_dump() | {"paths": paths}
        for role, paths in role_paths(inference).items()
    }
    if st.engine is None:
        return {"served": served, "models": [], "missing": {}, "engine_error": st.engine_error}
    return {"served": served, "models": st.engine.models(), "missing": st.engine.missing, "engine_error": None}
