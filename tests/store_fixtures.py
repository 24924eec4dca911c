"""Fixtures and sample builders for the store tests: real SQLite files and a real VictoriaMetrics on loopback."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegle.localservices import VictoriaMetrics
from core.vitals import Sample
from server.store.base import VitalsStore
from server.store.influx import InfluxStore
from server.store.sqlite import SQLiteStore

# VictoriaMetrics drops points older than its retention (one month by default) or more than two days ahead,
# so test data lives in the last few hours. Each call hands out a base far from the previous one.
_BASES = itertools.count()


def time_base() -> int:
    """A millisecond instant in the recent past, different for every call (10 minutes apart)."""
    return int(time.time() * 1000) - 6 * 3600_000 + next(_BASES) * 600_000


def unique_prefix() -> str:
    """A patient-id prefix no other test uses (the VictoriaMetrics instance is shared by the module)."""
    return f"t{uuid.uuid4().hex[:10]}-"


def make_samples(
    patients: list[str], codes: list[str], start_ms: int, count: int, step_ms: int = 1, site: str = "ward-3"
) -> list[Sample]:
    """``count`` instants ``step_ms`` apart for every patient and code; values are exact in binary and decimal."""
    return [
        Sample(p, site, f"dev-{p}", code, start_ms + i * step_ms, 50.0 + (i % 400) * 0.25 + k, f"msg-{p}-{i}")
        for i in range(count)
        for p in patients
        for k, code in enumerate(codes)
    ]


def flush(store: VitalsStore) -> None:
    """Make the last writes searchable (VictoriaMetrics); nothing to do on SQLite."""
    if isinstance(store, InfluxStore):
        store.flush()


def as_stored(store: VitalsStore, samples: list[Sample]) -> list[Sample]:
    """What ``store`` gives back for ``samples``: the InfluxDB-protocol backend keeps no message_id."""
    if isinstance(store, InfluxStore):
        return [s._replace(message_id="") for s in samples]
    return list(samples)


@pytest.fixture(params=["sqlite", "victoriametrics"], name="store")
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VitalsStore]:
    """Each backend in turn: SQLite in a fresh file, or the InfluxDB protocol on the session's VictoriaMetrics."""
    if request.param == "sqlite":
        backend: VitalsStore = SQLiteStore(tmp_path / "db" / "vitals.sqlite")
    else:
        vm: VictoriaMetrics = request.getfixturevalue("victoria")
        backend = InfluxStore(vm.url, token="test-token", read_api="victoriametrics", timeout_s=10)
    try:
        yield backend
    finally:
        backend.close()
