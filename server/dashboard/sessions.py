"""Browser sessions of the dashboard: an API token exchanged for a random session id, kept server-side.

The cookie holds only the session id (32 random bytes); the server keeps, in memory, the token it was opened with
(so every request re-runs the API's own check, ``server.api.deps.authorize``: a revoked token ends its sessions at
once), a CSRF token, the expiry and the patients whose data the session has been shown (each audited once). A
session ends at its expiry (``settings.dashboard.session_lifetime_s``), at logout, when its token stops
authenticating, and when the service restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

COOKIE = "aegle_session"


@dataclass
class Session:
    """One login: who (the token's name and role), until when, and its CSRF token."""

    token: str  # never logged, never written anywhere
    name: str
    role: str
    csrf: str
    expires_at: float  # Unix seconds
    shown: set[str] = field(default_factory=set)  # patient ids already audited for this session

    def csrf_matches(self, value: str | None) -> bool:
        """True when ``value`` is this session's CSRF token (constant-time comparison)."""
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by the SHA-256 of their id; thread-safe; at most ``max_sessions`` (the oldest go first)."""

    def __init__(self, lifetime_s: float, max_sessions: int = 10_000) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def open(self, token: str, name: str, role: str) -> tuple[str, Session]:
        """A new session for an authenticated token: ``(session id for the cookie, session)``."""
        session_id = secrets.token_urlsafe(32)
        session = Session(token, name, role, secrets.token_urlsafe(32), time.time() + self.lifetime_s)
        with self._lock:
            self._expire()
            while len(self._sessions) >= self.max_sessions:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``, or None (unknown, ended or expired)."""
        if not session_id or len(session_id) > 128:
            return None
        with self._lock:
            key = self._key(session_id)
            session = self._sessions.get(key)
            if session is not None and session.expires_at <= time.time():
                del self._sessions[key]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        """End a session (logout); unknown ids are ignored."""
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
