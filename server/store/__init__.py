"""Vitals time-series storage: embedded SQLite or an InfluxDB-protocol server, plus a durable spool.

``open_store(settings)`` picks the backend named by :class:`core.settings.StoreSettings`.
"""

from __future__ import annotations

from core import StoreSettings
from server.store.base import StoreUnavailable, VitalsStore
from server.store.spool import BufferedStore, Spool, SpoolFull

__all__ = [
    "BufferedStore",
    "Spool",
    "SpoolFull",
    "StoreUnavailable",
    "VitalsStore",
    "open_store",
]


def open_store(settings: StoreSettings) -> VitalsStore:
    """The store described by ``settings`` (``backend`` ``"sqlite"`` or ``"influx"``; token from ``secret()``)."""
    if settings.backend == "sqlite":
        from server.store.sqlite import SQLiteStore

        return SQLiteStore(settings.sqlite_path)
    if settings.backend == "influx":
        from server.store.influx import InfluxStore

        return InfluxStore(
            settings.url,
            token=settings.secret(),
            org=settings.org,
            bucket=settings.bucket,
            read_api=settings.read_api,
        )
    raise ValueError(f"unknown store backend {settings.backend!r}")
