"""Append-only audit log of every read or write of patient data: who, what, which resource, when, from where.

SQLite table with triggers that ``RAISE(ABORT)`` on ``UPDATE`` and ``DELETE``: an entry, once written, cannot be
changed through SQL. Identifiers (patient id, study/series UID, sha256 of an uploaded image) are stored **as
they are**: the audit log is the one place they belong — an audit that cannot answer "who read patient X" is
useless — so the file is created mode 0600 and only the ``admin`` role may query it. Nothing of it is logged.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    client TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_resource ON audit (resource, at);
CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
"""


@dataclass(frozen=True)
class AuditEntry:
    """One access."""

    id: int
    at: str  # ISO 8601 UTC
    actor: str  # token name
    role: str
    action: str  # e.g. "patient.vitals.read"
    resource: str  # e.g. "patient:enc-0001", "study:1.2.3", "image:sha256:…"
    client: str  # client address:port
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditLog:
    """The audit table; thread-safe, every write committed before :meth:`record` returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)

    def record(self, actor: str, role: str, action: str, resource: str, client: str, detail: str = "") -> None:
        """Append one entry (durable on return)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, actor, role, action, resource, client, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (datetime.now(UTC).isoformat(), actor, role, action, resource, client, detail),
            )

    def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Entries matching every given filter (``action`` may end in ``*`` for a prefix), oldest first (or the
        newest ``limit``, newest first)."""
        where, params = [], []
        for column, value in (("actor", actor), ("resource", resource)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if action is not None:
            if action.endswith("*"):
                where.append("action LIKE ? ESCAPE '\\'")
                prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                params.append(prefix + "%")
            else:
                where.append("action = ?")
                params.append(action)
        if since is not None:
            where.append("at >= ?")
            params.append(since.astimezone(UTC).isoformat())
        if until is not None:
            where.append("at <= ?")
            params.append(until.astimezone(UTC).isoformat())
        sql = "SELECT id, at, actor, role, action, resource, client, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY id{' DESC' if newest_first else ''} LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [AuditEntry(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
