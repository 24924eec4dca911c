"""The vitals store as the operator commands read it: named plainly, never created by a read; and the vitals
schema's names and units next to the codes it holds.

``aegle context``, ``aegle vitals``, ``aegle enhance`` and ``aegle status`` read the configured store
(``settings.store``). Opening a SQLite store creates its file, so :func:`open_existing` refuses a path that does not
exist (a typo or another working directory would otherwise read an empty new store and print nothing); an
InfluxDB-protocol store must answer its health endpoint.
"""

from __future__ import annotations

from typing import Protocol

from core import BY_CODE, SampleReader, StoreSettings

#: The vital sign (code, name, UCUM unit, possible range) feeding each context channel: its first code in BY_CODE.
CHANNEL_SIGNS = {}
for _sign in BY_CODE.values():
    CHANNEL_SIGNS.setdefault(_sign.key, _sign)


class StoreMissing(LookupError):
    """The configured vitals store does not exist or does not answer; the message says which and why."""


class VitalsReader(SampleReader, Protocol):
    """What the commands use of a store (``server.open_store``'s stores)."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def describe(settings: StoreSettings) -> str:
    """The store ``settings`` name, for a person: backend and where it is."""
    if settings.backend == "sqlite":
        return f"SQLite store {settings.sqlite_path.resolve()}"
    return f"InfluxDB-protocol store {settings.url} (bucket {settings.bucket}, reads by {settings.read_api})"


def open_existing(settings: StoreSettings) -> VitalsReader:
    """The configured store, opened only if it exists (SQLite: the file is there) and answers; else
    :class:`StoreMissing`, naming the store and the setting that chooses it."""
    from server import open_store

    if settings.backend == "sqlite" and not settings.sqlite_path.is_file():
        raise StoreMissing(
            f"{describe(settings)} does not exist (AEGLE_STORE__SQLITE_PATH names it; the ingest worker creates it)"
        )
    store = open_store(settings)
    try:
        answers = store.ping()
    except Exception as exc:  # backends raise their own errors; the command reports them
        answers, why = False, f": {type(exc).__name__}: {exc}"
    else:
        why = ""
    if not answers:
        store.close()
        raise StoreMissing(f"{describe(settings)} does not answer{why}")
    return store
