"""Studies processed and their results."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from server.api.deps import api_error, audit, require, state
from server.api.tokens import Principal

router = APIRouter(tags=["studies"])
STUDY_ROLES = ("clinician", "operator")


@router.get("/api/v1/studies", summary="Series processed, most recent first")
def list_studies(
    request: Request,
    principal: Annotated[Principal, Depends(require(*STUDY_ROLES))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    audit(request, principal, "study.list", "study:*")
    return {"results": state(request).studies.list(limit=limit)}


@router.get("/api/v1/studies/{study_uid}", summary="Results of one study's series")
def get_study(
    study_uid: str, request: Request, principal: Annotated[Principal, Depends(require(*STUDY_ROLES))]
) -> dict[str, Any]:
    audit(request, principal, "study.read", f"study:{study_uid}")
    results = state(request).studies.list(study_uid=study_uid, limit=1000)
    if not results:
        raise api_error(404, "unknown-study", "no processed series of this study")
    return {"study_uid": study_uid, "results": results}
