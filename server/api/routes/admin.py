"""Administration: API tokens and the audit log (role ``admin`` only)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from server.api.deps import api_error, audit, require, state, utc
from server.api.tokens import Principal, Role

router = APIRouter(tags=["admin"])
ADMIN_ROLES = ("admin",)
Admin = Annotated[Principal, Depends(require(*ADMIN_ROLES))]


class TokenRequest(BaseModel):
    name: str
    role: Role


@router.get("/api/v1/admin/tokens", summary="Token names, roles, creation and revocation times (never the tokens)")
def list_tokens(request: Request, _: Admin) -> dict[str, Any]:
    return {"tokens": [asdict(t) for t in state(request).tokens.list()]}


@router.post(
    "/api/v1/admin/tokens", status_code=201, summary="Create a token; the response is the only time it is shown"
)
def create_token(body: TokenRequest, request: Request, principal: Admin) -> dict[str, str]:
    try:
        token = state(request).tokens.create(body.name, body.role)
    except ValueError as exc:
        raise api_error(400, "bad-token-request", str(exc)) from None
    audit(request, principal, "token.create", f"token:{body.name}", f"role={body.role}")
    return {"name": body.name, "role": body.role, "token": token}


@router.delete("/api/v1/admin/tokens/{name}", summary="Revoke a token")
def revoke_token(name: str, request: Request, principal: Admin) -> dict[str, str]:
    if not state(request).tokens.revoke(name):
        raise api_error(404, "unknown-token", f"no active token named {name!r}")
    audit(request, principal, "token.revoke", f"token:{name}")
    return {"name": name, "status": "revoked"}


@router.get("/api/v1/admin/audit", summary="Query the audit log (filters combine with AND; `action` may end in *)")
def query_audit(
    request: Request,
    principal: Admin,
    actor: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    log = state(request).audit
    entries = log.query(
        actor=actor,
        action=action,
        resource=resource,
        since=since and utc(since),
        until=until and utc(until),
        limit=limit,
    )
    audit(request, principal, "audit.read", "audit", f"{len(entries)} entries")
    return {"entries": [e.to_dict() for e in entries]}
