"""The edge node's durable outbox: DICOM instances waiting to be forwarded, one directory each.

Layout under ``root``::

    tmp/                               instances being written (removed at start: never acknowledged)
    ready/{created_ns}-{transfer_id}/  instance.dcm, manifest.json, progress (chunks the broker acknowledged)

An instance is written into ``tmp/``, both files are fsynced, then its directory is renamed into ``ready/`` and
``ready/`` is fsynced: after :meth:`Outbox.put` returns, the instance survives a crash or power loss, and a crash
before that leaves no trace in ``ready/``. Directory names sort by arrival, so instances are forwarded in order.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core import DEFAULT_CHUNK_BYTES, TransferManifest, fsync_dir, new_manifest, write_durably

log = logging.getLogger("aegle.edge.outbox")
INSTANCE = "instance.dcm"
MANIFEST = "manifest.json"
PROGRESS = "progress"


class OutboxFull(OSError):
    """The outbox cannot take an instance without exceeding its byte limit (the forwarder is behind)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """One instance in the outbox."""

    path: Path
    manifest: TransferManifest
    size_on_disk: int

    @property
    def instance_path(self) -> Path:
        return self.path / INSTANCE

    def progress(self) -> int:
        """Chunks 0 … n−1 the broker has acknowledged, as last recorded (0 if never)."""
        try:
            return min(int((self.path / PROGRESS).read_text()), self.manifest.chunk_count)
        except (FileNotFoundError, ValueError):
            return 0

    def record_progress(self, acknowledged: int) -> None:
        """Record that chunks 0 … ``acknowledged``−1 are acknowledged (atomic rename, no fsync: losing it only
        means those chunks are sent again, which the receiver ignores)."""
        tmp = self.path / f"{PROGRESS}.tmp"
        tmp.write_text(str(acknowledged))
        tmp.replace(self.path / PROGRESS)


class Outbox:
    """A bounded, crash-safe directory of DICOM instances for one edge node (thread-safe)."""

    def __init__(
        self,
        root: Path,
        site: str,
        edge_id: str,
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        max_bytes: int = 8 * 1024**3,
    ) -> None:
        self.root = Path(root)
        self.site, self.edge_id, self.chunk_size, self.max_bytes = site, edge_id, chunk_size, max_bytes
        self._tmp = self.root / "tmp"
        self._ready = self.root / "ready"
        shutil.rmtree(self._tmp, ignore_errors=True)  # partial writes: their C-STORE was never answered Success
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._ready.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.used_bytes = sum(p.size_on_disk for p in self.pending())

    def put(self, data: bytes, sop_instance_uid: str | None = None, sop_class_uid: str | None = None) -> Pending:
        """Store an instance durably and return it; :class:`OutboxFull` if over the byte limit."""
        manifest = new_manifest(data, self.site, self.edge_id, self.chunk_size, sop_instance_uid, sop_class_uid)
        manifest_json = manifest.to_json()
        size = len(data) + len(manifest_json)
        with self._lock:
            if self.used_bytes + size > self.max_bytes:
                raise OutboxFull(f"outbox holds {self.used_bytes} of {self.max_bytes} bytes; {size} more refused")
            self.used_bytes += size
        name = f"{time.time_ns():020d}-{manifest.transfer_id}"
        staging = self._tmp / name
        try:
            staging.mkdir()
            write_durably(staging / INSTANCE, data)
            write_durably(staging / MANIFEST, manifest_json)
            fsync_dir(staging)
            staging.rename(self._ready / name)
            fsync_dir(self._ready)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self.used_bytes -= size
            raise
        return Pending(self._ready / name, manifest, size)

    def pending(self) -> Iterator[Pending]:
        """Instances waiting to be forwarded, oldest first."""
        for path in sorted(self._ready.iterdir()):
            manifest_json = (path / MANIFEST).read_bytes()
            manifest = TransferManifest.model_validate_json(manifest_json)
            yield Pending(path, manifest, (path / INSTANCE).stat().st_size + len(manifest_json))

    def remove(self, item: Pending) -> None:
        """Delete a forwarded instance (the broker acknowledged every chunk)."""
        shutil.rmtree(item.path)
        fsync_dir(self._ready)
        with self._lock:
            self.used_bytes -= item.size_on_disk

    def depth(self) -> tuple[int, int | None]:
        """Instances waiting and the arrival time of the oldest (ns since the epoch, None when empty), from the
        directory names alone."""
        names = sorted(path.name for path in self._ready.iterdir())
        return len(names), int(names[0].split("-", 1)[0]) if names else None

    def __len__(self) -> int:
        return sum(1 for _ in self._ready.iterdir())
