"""Append-only audit log of every read or write of patient data: who, what, which resource, when, from where.

A table (SQLite file, or a PostgreSQL database several replicas share) with triggers that refuse ``UPDATE`` and
``DELETE`` (and, on PostgreSQL, ``TRUNCATE``): an entry, once written, cannot be changed through SQL.
Identifiers (patient id, study/series UID, sha256 of an uploaded image) are stored **as they are**: the audit log
is the one place they belong — an audit that cannot answer "who read patient X" is useless — so the file is
created mode 0600 and only the ``admin`` role may query it. Nothing of it is logged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import ApiSettings
from server.api.database import Database, Schema

_SCHEMA = Schema(
    tables="""
CREATE TABLE IF NOT EXISTS audit (
    id {key},
    at {text} NOT NULL,
    actor {text} NOT NULL,
    role {text} NOT NULL,
    action {text} NOT NULL,
    resource {text} NOT NULL,
    client {text} NOT NULL,
    detail {text} NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_resource ON audit (resource, at);
CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, at);
""",
    sqlite="""
PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
""",
    postgresql="""
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit log is append-only: % refused', TG_OP; END $$;
CREATE OR REPLACE TRIGGER audit_no_update BEFORE UPDATE ON audit
FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_no_delete BEFORE DELETE ON audit
FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
""",
)


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

    def __init__(self, path: Path | str, *, password: str | None = None) -> None:
        """``path``: the SQLite file, or a ``postgresql://`` URL (``password``: the database's)."""
        self._db = Database(path, _SCHEMA, password)

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> AuditLog:
        """The log in ``settings.database_url``, else at ``settings.audit_path``."""
        return cls(settings.database_url or settings.audit_path, password=settings.database_secret())

    def record(self, actor: str, role: str, action: str, resource: str, client: str, detail: str = "") -> None:
        """Append one entry (durable on return)."""
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
        return [AuditEntry(*r) for r in self._db.query(sql, params)]

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
