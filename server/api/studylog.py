"""Series the service has processed and their results (UIDs, counts, model, failures — no patient identifiers)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS series_results_study ON series_results (study_uid, id);
"""


class StudyLog:
    """SQLite record of processed series; thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)

    def record(self, study_uid: str, source_series_uid: str, outcome: str, result: dict[str, Any]) -> None:
        """Add one series result (``outcome``: processed / failed)."""
        with self._lock:
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
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            {"at": at, "study_uid": study, "source_series_uid": series, "outcome": outcome, "result": json.loads(r)}
            for at, study, series, outcome, r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
