"""Series the service has processed and their results (UIDs, counts, model, failures — no patient identifiers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import ApiSettings
from server.api.database import Database, Schema

_SCHEMA = Schema("""
CREATE TABLE IF NOT EXISTS series_results (
    id {key},
    at {text} NOT NULL,
    study_uid {text} NOT NULL,
    source_series_uid {text} NOT NULL,
    outcome {text} NOT NULL,
    result {text} NOT NULL
);
CREATE INDEX IF NOT EXISTS series_results_study ON series_results (study_uid, id);
""")


class StudyLog:
    """Record of processed series (SQLite file or shared PostgreSQL database); thread-safe."""

    def __init__(self, path: Path | str, *, password: str | None = None) -> None:
        """``path``: the SQLite file, or a ``postgresql://`` URL (``password``: the database's)."""
        self._db = Database(path, _SCHEMA, password)

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> StudyLog:
        """The log in ``settings.database_url``, else at ``settings.studies_path``."""
        return cls(settings.database_url or settings.studies_path, password=settings.database_secret())

    def record(self, study_uid: str, source_series_uid: str, outcome: str, result: dict[str, Any]) -> None:
        """Add one series result (``outcome``: processed / failed)."""
        self._db.execute(
            "INSERT INTO series_results (at, study_uid, source_series_uid, outcome, result) VALUES (?, ?, ?, ?, ?)",
            (datetime.now(UTC).isoformat(), study_uid, source_series_uid, outcome, json.dumps(result)),
        )

    def list(self, study_uid: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent results first, optionally of one study."""
        sql = "SELECT at, study_uid, source_series_uid, outcome, result FROM series_results"
        params: list[Any] = []
        if study_uid is not None:
            sql += " WHERE study_uid = ?"
            params.append(study_uid)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [
            {"at": at, "study_uid": study, "source_series_uid": series, "outcome": outcome, "result": json.loads(r)}
            for at, study, series, outcome, r in self._db.query(sql, params)
        ]

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
