"""The dashboard's routes: login and logout, the ward and operator pages, their Server-Sent Event streams.

Mounted by ``server.api.create_app`` at ``/dashboard``; every asset is package data (``static/``), nothing is
fetched from elsewhere. Roles are the API's: the ward view needs what ``GET /api/v1/patients/{id}/vitals`` needs,
the operator view what ``GET /metrics`` needs, and each request re-runs the API's own token check
(``server.api.deps.authorize``) on the token its session was opened with. Requests that change state (login,
logout) must come from this origin (``Origin``, else ``Referer``); logout also needs the session's CSRF token.
Reading patient data is audited as the API audits it: once per patient and session (``patient.ward.view``).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' signatures, which name dependencies local to
# create_dashboard (string annotations would be resolved in the module's globals and miss them).
import asyncio
import html
import json
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.deps import ServiceState, api_error, authorize, client_address
from server.api.routes import health, models, patients, studies
from server.api.tokens import ROLES
from server.dashboard import operator
from server.dashboard.sessions import COOKIE, Session, SessionStore
from server.dashboard.studies import NOTICE, StudyBrowser
from server.dashboard.ward import WardFeed

PREFIX = "/dashboard"
#: Each view and the roles that may open it: those of the API routes whose data it shows.
VIEWS: dict[str, tuple[str, ...]] = {
    "ward": patients.PATIENT_ROLES, "operator": health.METRICS_ROLES, "studies": studies.STUDY_ROLES,
}
#: Roles that may log in: those with at least one view (a device token is refused).
LOGIN_ROLES = tuple(r for r in ROLES if any(r in roles for roles in VIEWS.values()))
STREAM_S = 25.0  # a stream ends after this (the browser reconnects at once): shutdown never waits longer
HEARTBEAT_S = 10.0
RECHECK_S = 5.0  # an open stream re-checks its session (expiry, logout, token revoked) this often
OPERATOR_INTERVAL_S = 5.0
RECENT_FAILURES = 20
STATIC = resources.files("server.dashboard") / "static"
#: Security headers of every dashboard response: only this origin's scripts, styles and connections, no framing.
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
     b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]  # fmt: skip


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, add_headers if scope["type"] == "http" else send)


class RootRedirect:
    """ASGI middleware: ``GET /`` (and ``HEAD /``) is a redirect to the dashboard (a middleware, not a route: the
    API's route table stays the API's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            await RedirectResponse(f"{PREFIX}/", 303)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def page(name: str, message: str = "", status: int = 200) -> HTMLResponse:
    """A page from ``static/``, its ``<!--message-->`` placeholder replaced by ``message`` (escaped)."""
    text = (STATIC / name).read_text(encoding="utf-8")
    return HTMLResponse(text.replace("<!--message-->", html.escape(message)), status)


def same_origin(request: Request) -> bool:
    """True when the request says it comes from a page of this server (``Origin``, else ``Referer``)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme == request.url.scheme and parts.netloc == request.headers.get("host")


def pacs_answer(read: Callable[..., Any], *args: Any) -> Any:
    """``read(*args)``; a PACS failure becomes 502 ``pacs-unavailable`` with its reason."""
    from server.pacs import PacsError

    try:
        return read(*args)
    except PacsError as exc:
        raise api_error(502, "pacs-unavailable", f"the PACS could not be read: {exc}") from exc


def sse(event: dict[str, Any]) -> str:
    """One Server-Sent Event carrying ``event`` as JSON."""
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


def create_dashboard(st: ServiceState) -> FastAPI:
    """The dashboard app on the service's state (tokens, audit log, vitals store, readiness checks)."""
    app = FastAPI(title="Aegle dashboard", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.aegle = st
    sessions = SessionStore(st.settings.dashboard.session_lifetime_s)
    feed = WardFeed(st.vitals, st.settings)
    browser = StudyBrowser(st)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(SecurityHeaders)

    def session_of(roles: tuple[str, ...]) -> Callable[[Request], Session]:
        """Dependency: the request's live session (else 401 ``no-session``), its token still valid and its role
        in ``roles`` (the API's check: 401 / 403)."""

        def check(request: Request) -> Session:
            session_id = request.cookies.get(COOKIE)
            session = sessions.get(session_id)
            if session is None:
                raise api_error(401, "no-session", f"log in at {PREFIX}/login")
            try:
                authorize(request, session.token, roles)
            except HTTPException as exc:
                if exc.status_code == 401:  # the token was revoked: the session ends with it
                    sessions.close(session_id)
                raise
            return session

        return check

    def still_valid(request: Request, roles: tuple[str, ...]) -> bool:
        try:
            session_of(roles)(request)
        except HTTPException:
            return False
        return True

    def audit(request: Request, session: Session, action: str, resource: str, detail: str = "") -> None:
        st.audit.record(session.name, session.role, action, resource, client_address(request), detail)

    @app.exception_handler(HTTPException)
    async def refusal(request: Request, exc: HTTPException) -> Response:
        """JSON for the streams and ``/api``; for pages, the login page (401) or a page naming the roles (403)."""
        detail = exc.detail if isinstance(exc.detail, dict) else {"reason": "error", "message": str(exc.detail)}
        if f"{PREFIX}/api/" in request.url.path or exc.status_code not in (401, 403):
            return JSONResponse({"detail": detail}, exc.status_code)
        if exc.status_code == 401:
            return RedirectResponse(f"{PREFIX}/login", 303)
        return page("forbidden.html", detail["message"], 403)

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> RedirectResponse:
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return RedirectResponse(f"{PREFIX}/login", 303)
        view = next((v for v, roles in VIEWS.items() if session.role in roles), "ward")
        return RedirectResponse(f"{PREFIX}/{view}", 303)

    @app.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        return page("login.html")

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form(max_length=256)] = "") -> Response:
        if not same_origin(request):
            return page("login.html", "Refused: the login form must be sent from this server's own page.", 403)
        try:
            principal = authorize(request, token.strip(), LOGIN_ROLES)
        except HTTPException as exc:
            message = ("That token is unknown or revoked." if exc.status_code == 401 else
                       f"This token's role has no dashboard view; roles with one: {', '.join(LOGIN_ROLES)}.")
            return page("login.html", message, exc.status_code)
        session_id, session = sessions.open(token.strip(), principal.name, principal.role)
        audit(request, session, "dashboard.login", f"token:{principal.name}")
        response = RedirectResponse(f"{PREFIX}/", 303)
        response.set_cookie(COOKIE, session_id, max_age=int(sessions.lifetime_s), path=PREFIX, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: Annotated[str, Form(max_length=256)] = "") -> Response:
        session_id = request.cookies.get(COOKIE)
        session = sessions.get(session_id)
        if session is not None:
            if not same_origin(request) or not session.csrf_matches(csrf):
                return page("forbidden.html", "Refused: the logout was not sent from this dashboard.", 403)
            sessions.close(session_id)
            audit(request, session, "dashboard.logout", f"token:{session.name}")
        response = RedirectResponse(f"{PREFIX}/login", 303)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    @app.get("/ward", include_in_schema=False)
    def ward_page(_: Annotated[Session, Depends(session_of(VIEWS["ward"]))]) -> HTMLResponse:
        return page("ward.html")

    @app.get("/operator", include_in_schema=False)
    def operator_page(_: Annotated[Session, Depends(session_of(VIEWS["operator"]))]) -> HTMLResponse:
        return page("operator.html")

    @app.get("/studies", include_in_schema=False)
    def studies_page(_: Annotated[Session, Depends(session_of(VIEWS["studies"]))]) -> HTMLResponse:
        return page("studies.html")

    @app.get("/viewer", include_in_schema=False)
    def viewer_page(_: Annotated[Session, Depends(session_of(VIEWS["studies"]))]) -> HTMLResponse:
        return page("viewer.html")

    def audit_once(request: Request, session: Session, action: str, resource: str) -> None:
        """Audit ``action`` on ``resource`` the first time this session is shown it (as the API audits a read)."""
        if f"{action} {resource}" not in session.shown:
            audit(request, session, action, resource)
            session.shown.add(f"{action} {resource}")

    @app.get("/api/studies", include_in_schema=False)
    def study_list(
        request: Request, session: Annotated[Session, Depends(session_of(VIEWS["studies"]))]
    ) -> dict[str, Any]:
        audit_once(request, session, "study.list", "study:*")
        return {"results": browser.rows(), "notice": NOTICE}

    def viewed(request: Request, session: Session, study_uid: str) -> None:
        audit_once(request, session, "study.read", f"study:{study_uid}")

    @app.get("/api/studies/{study_uid}/series/{derived_uid}", include_in_schema=False)
    def series_info(
        study_uid: str, derived_uid: str, request: Request,
        session: Annotated[Session, Depends(session_of(VIEWS["studies"]))],
    ) -> dict[str, Any]:  # fmt: skip
        viewed(request, session, study_uid)
        info = pacs_answer(browser.info, study_uid, derived_uid)
        if info is None:
            raise api_error(404, "unknown-series", "no enhanced series with these UIDs")
        return info

    @app.get("/api/studies/{study_uid}/series/{derived_uid}/frames/{index}", include_in_schema=False)
    def series_frame(
        study_uid: str, derived_uid: str, index: int, request: Request,
        session: Annotated[Session, Depends(session_of(VIEWS["studies"]))],
        which: Annotated[Literal["before", "after"], Query()] = "after",
    ) -> Response:  # fmt: skip
        viewed(request, session, study_uid)
        frame = pacs_answer(browser.frame, study_uid, derived_uid, which, index)
        if frame is None:
            raise api_error(404, "no-frame", f"no {which} frame {index} for this series")
        return Response(frame.astype("<f4").tobytes(), media_type="application/octet-stream",
                        headers={"X-Rows": str(frame.shape[0]), "X-Columns": str(frame.shape[1])})  # fmt: skip

    @app.get("/api/session", include_in_schema=False)
    def session_info(session: Annotated[Session, Depends(session_of(LOGIN_ROLES))]) -> dict[str, Any]:
        return {"name": session.name, "role": session.role, "csrf": session.csrf, "expires_at": session.expires_at,
                "views": [v for v, roles in VIEWS.items() if session.role in roles]}  # fmt: skip

    async def stream(request: Request, roles: tuple[str, ...], events: AsyncIterator[dict[str, Any] | None],
                     session: Session) -> AsyncIterator[str]:  # fmt: skip
        """SSE from ``events`` (None: nothing new) for at most :data:`STREAM_S`; ends with ``{"type": "ended"}``
        when the session does."""
        yield "retry: 1000\n\n"
        ends = checked = time.monotonic()
        ends += STREAM_S
        async for event in events:
            if time.monotonic() - checked > RECHECK_S:
                checked = time.monotonic()
                if not await asyncio.to_thread(still_valid, request, roles):
                    yield sse({"type": "ended"})
                    return
            if event is not None:
                shown = event.get("patients", [])
                unseen = [v["patient_id"] for v in shown if v["patient_id"] not in session.shown]
                if unseen:  # audited before the data is sent, once per patient and session
                    await asyncio.to_thread(audit_patients, request, session, unseen)
                yield sse(event)
            else:
                yield ": keep-alive\n\n"
            if time.monotonic() > ends:
                return

    def audit_patients(request: Request, session: Session, patient_ids: list[str]) -> None:
        """Audit that this session is shown these patients' vitals."""
        for patient_id in patient_ids:
            audit(request, session, "patient.ward.view", f"patient:{patient_id}")
            session.shown.add(patient_id)

    async def ward_events() -> AsyncIterator[dict[str, Any] | None]:
        queue = await feed.subscribe()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), RECHECK_S)
                except TimeoutError:
                    event = None
                if event is not None and event["type"] == "overflow":
                    return
                yield event
        finally:
            feed.unsubscribe(queue)

    @app.get("/api/ward/events", include_in_schema=False)
    def ward_stream(
        request: Request, session: Annotated[Session, Depends(session_of(VIEWS["ward"]))]
    ) -> StreamingResponse:
        return StreamingResponse(stream(request, VIEWS["ward"], ward_events(), session),
                                 media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})  # fmt: skip

    async def operator_events(request: Request, session: Session) -> AsyncIterator[dict[str, Any] | None]:
        if session.role in studies.STUDY_ROLES and "study:*" not in session.shown:
            await asyncio.to_thread(audit, request, session, "study.list", "study:*")
            session.shown.add("study:*")
        if session.role in operator.AUDIT_ROLES and "audit" not in session.shown:  # as GET /api/v1/admin/audit
            await asyncio.to_thread(audit, request, session, "audit.read", "audit", "operator view")
            session.shown.add("audit")
        while True:
            yield await operator_status(request, session)
            await asyncio.sleep(OPERATOR_INTERVAL_S)

    async def operator_status(request: Request, session: Session) -> dict[str, Any]:
        """The readiness checks of ``/readyz`` (the same probes), the served models, series counts, edge nodes,
        ingest rate and dead letters (``server.dashboard.operator``), for the roles that may list studies
        (``GET /api/v1/studies``) the recent series that failed, and for those that may read the audit log
        (``GET /api/v1/admin/audit``) its newest entries."""
        ready = json.loads(bytes((await health.readyz(request)).body))
        served = models.list_models(request, None)  # type: ignore[arg-type]  # the role was checked by the stream
        failures = None
        if session.role in studies.STUDY_ROLES:
            results = await asyncio.to_thread(st.studies.list, None, 200)
            failures = [r for r in results if r["result"].get("status") not in ("ok", "skipped")][:RECENT_FAILURES]
        queue_depth = None if st.engine is None else st.engine.metrics.registry.get_sample_value(
            "aegle_inference_queue_depth")  # fmt: skip
        entries = None
        if session.role in operator.AUDIT_ROLES:
            entries = [e.to_dict() for e in await asyncio.to_thread(
                st.audit.query, limit=operator.RECENT_AUDIT, newest_first=True)]  # fmt: skip
        now_ms = int(time.time() * 1000)
        return {
            "type": "operator", "now_ms": now_ms, "ready": ready["ready"], "checks": ready["checks"],
            "models": served, "queue_depth": queue_depth,
            "series": {o: st.metrics.value("aegle_series_total", outcome=o) for o in ("processed", "failed")},
            "failures": None if failures is None else [
                {"at": r["at"], "study_uid": r["study_uid"], "series_uid": r["source_series_uid"],
                 "status": r["result"].get("status"),
                 "reasons": sorted({f["reason"] for f in r["result"].get("failures", [])})} for r in failures],
            "ward_feed_error": feed.error, **operator.view(st, now_ms), "audit": entries,
        }  # fmt: skip

    @app.get("/api/operator/events", include_in_schema=False)
    def operator_stream(
        request: Request, session: Annotated[Session, Depends(session_of(VIEWS["operator"]))]
    ) -> StreamingResponse:
        return StreamingResponse(stream(request, VIEWS["operator"], operator_events(request, session), session),
                                 media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})  # fmt: skip

    return app
