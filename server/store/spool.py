"""A durable, bounded on-disk buffer for samples the store could not take, and the store wrapper that uses it.

Overflow policy: nothing accepted is ever dropped. When the store is unreachable samples go to the spool; when
the spool is full as well, :meth:`BufferedStore.write` raises :class:`SpoolFull` and the caller must not
acknowledge the messages, so they stay in the broker's persistent queue (back-pressure) and are retried later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from core import Sample
from server.store.base import StoreUnavailable, VitalsStore
from server.store.sqlite import connect

log = logging.getLogger("aegle.store.spool")

_COLUMNS = "patient_id, site, device_id, code, t_ms, value, message_id"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    site       TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    code       TEXT NOT NULL,
    t_ms       INTEGER NOT NULL,
    value      REAL NOT NULL,
    message_id TEXT NOT NULL
);
"""


class SpoolFull(RuntimeError):
    """The spool cannot take these samples without exceeding its bound."""


class Spool:
    """Samples in arrival order in a SQLite file (``synchronous=FULL``): durable once :meth:`put` returns."""

    def __init__(self, path: str | Path, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be positive")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self._lock = threading.Lock()
        self._conn = connect(self.path)
        self._conn.executescript(_SCHEMA)
        self._count = int(self._conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def put(self, samples: Sequence[Sample]) -> None:
        """Append ``samples`` in one transaction (all or nothing); :class:`SpoolFull` if the bound would be passed."""
        if not samples:
            return
        with self._lock:
            if self._count + len(samples) > self.max_samples:
                raise SpoolFull(
                    f"spool {self.path} holds {self._count} of {self.max_samples} samples; "
                    f"cannot take {len(samples)} more"
                )
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(f"INSERT INTO spool ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", samples)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._count += len(samples)

    def peek(self, n: int) -> tuple[list[int], list[Sample]]:
        """The ids and samples of the ``n`` oldest entries, oldest first (they stay until :meth:`remove`)."""
        with self._lock:
            rows = self._conn.execute(f"SELECT id, {_COLUMNS} FROM spool ORDER BY id LIMIT ?", (int(n),)).fetchall()
        return [row[0] for row in rows], [Sample._make(row[1:]) for row in rows]

    def remove(self, ids: Collection[int]) -> None:
        """Delete the entries with these ids (ids already gone are ignored)."""
        if not ids:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.executemany("DELETE FROM spool WHERE id = ?", [(int(i),) for i in ids])
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._count -= cursor.rowcount

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Close the file; everything put is already on disk."""
        with self._lock:
            self._conn.close()


class BufferedStore:
    """Writes to a :class:`VitalsStore`, falling back to a :class:`Spool` while the store is unavailable.

    Order is kept: once the spool holds anything, new samples queue behind it until a drain empties it. After
    a failed store write or drain, automatic drains wait ``retry_interval_s`` so that a store that hangs until
    its timeout does not slow every write down; :meth:`drain` called directly always tries.
    """

    def __init__(
        self,
        store: VitalsStore,
        spool: Spool,
        batch_size: int = 5000,
        drain_batches_per_write: int = 20,
        retry_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.spool = spool
        self.batch_size = batch_size
        self.drain_batches_per_write = drain_batches_per_write
        self.retry_interval_s = retry_interval_s
        self._lock = threading.RLock()
        self._retry_at = 0.0

    @property
    def pending(self) -> int:
        """Samples waiting in the spool."""
        return len(self.spool)

    def write(self, samples: Sequence[Sample]) -> None:
        """Make ``samples`` durable, in the store or in the spool; :class:`SpoolFull` if neither can take them."""
        if not samples:
            return
        with self._lock:
            if len(self.spool) and self._due() and len(self.spool) + len(samples) > self.spool.max_samples:
                self.drain(self.drain_batches_per_write)  # make room before giving up
            if not len(self.spool):
                self._write_or_spool(samples)
                return
            self.spool.put(samples)  # behind the backlog; SpoolFull here means the caller must not acknowledge
            if self._due():
                self.drain(self.drain_batches_per_write)

    def _due(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _write_or_spool(self, samples: Sequence[Sample]) -> None:
        try:
            self.store.write(samples)
        except StoreUnavailable as exc:
            log.warning("store unavailable, spooling %d samples: %s", len(samples), exc)
            self._retry_at = time.monotonic() + self.retry_interval_s
            self.spool.put(samples)

    def drain(self, max_batches: int | None = None) -> int:
        """Move spooled samples into the store, oldest first, in batches; returns how many moved.

        Stops quietly when the store is unavailable (the batch stays spooled). A crash between a store write and
        the removal from the spool only means that batch is written again, which the store ignores.
        """
        moved = 0
        batches = 0
        with self._lock:
            while max_batches is None or batches < max_batches:
                ids, samples = self.spool.peek(self.batch_size)
                if not ids:
                    break
                try:
                    self.store.write(samples)
                except StoreUnavailable as exc:
                    log.info("drain stopped after %d samples: %s", moved, exc)
                    self._retry_at = time.monotonic() + self.retry_interval_s
                    break
                self.spool.remove(ids)
                moved += len(ids)
                batches += 1
        return moved

    def drain_when_due(self, max_batches: int | None = None) -> int:
        """:meth:`drain`, unless the last store failure is less than ``retry_interval_s`` ago."""
        return self.drain(max_batches) if self.spool and self._due() else 0

    def close(self) -> None:
        """Close the spool (the wrapped store is closed by its owner)."""
        self.spool.close()
