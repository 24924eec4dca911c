"""Server side of DICOM over MQTT: chunks from edge nodes → on-disk staging → verified instance → ``on_instance``.

Step 1 of the study path (:mod:`server.study`): in the service, ``on_instance`` is the
:class:`~server.study.collection.SeriesCollector` (step 2). The contract (topics, manifest, checksums, chunk size)
is :mod:`core.dicom_chunks`; the edge side is :mod:`edge.forwarder`. Guarantees, in the manner of :mod:`server.ingest`:

* MQTT v5 subscription ``aegle/v1/{site}/+/dicom/+/+``, QoS 1, fixed client id ``aegle-{worker_id}``, persistent
  session: what edge nodes publish while the assembler is down waits in the broker. Not a shared subscription,
  unlike ingest: the chunks of one transfer must all reach the same staging area, and Mosquitto 2.0.11 does not
  restore an offline client's *shared* subscriptions after a broker restart (messages published before the
  client reconnects are dropped; a plain subscription keeps queueing). Scale out by site: one assembler per site.
* Manual acknowledgement: a manifest or chunk is acknowledged only once it is fsynced in the staging area (or it
  is a duplicate of something already staged or delivered, or its dead letter was acknowledged by the broker).
* Bounded memory: the broker sends at most ``receive_maximum`` unacknowledged messages (default 4, ≈ 1 MiB of
  chunks in RAM whatever the number or size of transfers); the one instance being delivered is read back from disk.
* Bounded disk: the staging area holds at most ``max_staging_bytes``; when a chunk does not fit, acknowledgements
  are held (the broker keeps the rest) until a delivery or an expiry frees space.
* Restart-safe: staged transfers and delivered/failed transfer ids are on disk. A transfer that makes no progress
  for ``incomplete_timeout_s`` (no message of it arrived; its directory's mtime after a restart) is dead-lettered
  (``incomplete-timeout``) and removed. A transfer whose chunks are held because the staging area is full counts
  as active, so the stalled transfers that fill the area expire first and the held one proceeds.
* Exactly once: a delivered transfer id is remembered (``done_retention_s``), so chunks or whole transfers sent
  again are acknowledged and ignored. One window remains: a crash after ``on_instance`` returned and before the
  done marker is fsynced (a few ms) delivers that instance again after the restart.
* Dead letters on ``aegle/v1/{site}/deadletter/{reason}`` carry the reason, topic, transfer id, size and SHA-256
  — never the payload (DICOM carries patient data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from core import (
    BAD_CHUNK,
    BAD_MANIFEST,
    CHECKSUM_MISMATCH,
    INCOMPLETE_TIMEOUT,
    INVALID_TOPIC,
    MAX_CHUNK_BYTES,
    OVERSIZE,
    MqttSettings,
    PersistentSubscriber,
    TransferManifest,
    TransferRejected,
    TransferSettings,
    broker_confirmed,
    configure_logging,
    dumps_compact,
    fsync_dir,
    parse_manifest,
    replace_durably,
    topics,
    verify_chunk,
    write_durably,
)

log = logging.getLogger("aegle.dicom_transfer")
MANIFEST = "manifest.json"
ORIGIN = "origin.json"
CHUNK_SUFFIX = ".chunk"


@dataclass(frozen=True, slots=True)
class TransferInfo:
    """What the server knows about a delivered instance besides its bytes (no patient data)."""

    transfer_id: str
    site: str
    edge_id: str
    sop_instance_uid: str | None
    sop_class_uid: str | None
    size: int
    sha256: str
    created_at: datetime
    completed_at: datetime


OnInstance = Callable[[bytes, TransferInfo], None]


@dataclass(slots=True)
class Incoming:
    """One manifest or chunk as paho handed it over, tagged with the connection it arrived on."""

    connection: int
    mid: int
    topic: str
    payload: bytes
    properties: Properties | None


class TransferAssembler(PersistentSubscriber):
    """Assemble forwarded DICOM instances; :meth:`start` runs in background threads, :meth:`stop` stops."""

    def __init__(self, mqtt_settings: MqttSettings, settings: TransferSettings, on_instance: OnInstance) -> None:
        self.mqtt_settings, self.settings, self.on_instance = mqtt_settings, settings, on_instance
        root = Path(settings.staging_path)
        self._transfers, self._done, self._failed = root / "transfers", root / "done", root / "failed"
        for path in (self._transfers, self._done, self._failed):
            path.mkdir(parents=True, exist_ok=True)
        self.delivered = 0
        self.duplicates = 0
        self.deadletters: dict[str, int] = {}
        self.failed: BaseException | None = None
        self.staged_bytes = sum(f.stat().st_size for f in self._transfers.glob("*/*"))
        self._counts: dict[str, int] = {}  # staged chunks per transfer in progress (filled lazily)
        self._active: dict[str, float] = {}  # when a message of a transfer in progress last arrived
        self._full = False
        self._complete: deque[str] = deque(t.name for t in sorted(self._transfers.iterdir()) if self._is_complete(t))
        self._inbox: deque[Incoming] = deque()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        super().__init__(
            mqtt_settings,
            settings.worker_id,
            topics.dicom_filter(settings.site),  # a plain subscription on purpose (see the module docstring)
            "DICOM",
            session_expiry_s=settings.session_expiry_s,
            receive_maximum=settings.receive_maximum,
            log=log,
        )

    # --- MQTT -------------------------------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append(Incoming(self._connection, msg.mid, msg.topic, msg.payload, msg.properties))
        self._wake.set()

    def start(self, timeout: float = 15.0) -> TransferAssembler:
        """Connect and return once subscribed; staged transfers that are complete are delivered first."""
        self._connect(timeout)
        self._worker = threading.Thread(target=self._work_loop, name="aegle-dicom-assembler", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        """Finish the message in hand and disconnect; unacknowledged messages wait in the broker's session."""
        self._running.clear()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(60)
        self._disconnect()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT; exit non-zero if the worker failed."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        while not done.wait(1.0) and self.failed is None:
            pass
        self.stop()
        if self.failed is not None:
            raise SystemExit(1)

    # --- processing ---------------------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        """Stage, deliver and expire; on an unexpected error stop for good (what is unacknowledged comes again)."""
        try:
            next_sweep = 0.0
            while self._running.is_set():
                self._wake.wait(self.settings.sweep_interval_s)
                self._wake.clear()
                while self._inbox and self._running.is_set() and self._handle(self._inbox[0]):
                    self._inbox.popleft()
                while self._complete and self._running.is_set():
                    self._deliver(self._complete.popleft())
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + self.settings.sweep_interval_s
        except BaseException as exc:
            self.failed = exc
            log.critical("DICOM assembler stopped on an unexpected error: %s", type(exc).__name__, exc_info=exc)
            self._running.clear()

    def _handle(self, item: Incoming) -> bool:
        """Stage one message and acknowledge it; False (not acknowledged) if the staging area is full."""
        try:
            site, edge_id, transfer_id, index = topics.parse_dicom_topic(item.topic)
        except ValueError as exc:
            return self._reject(item, None, TransferRejected(INVALID_TOPIC, str(exc)))
        if self._finished(transfer_id):
            self.duplicates += 1
            self._ack((item,))
            return True
        self._active[transfer_id] = time.time()
        directory = self._transfers / transfer_id
        try:
            origin = self._origin(directory, site, edge_id)
            if (origin["site"], origin["edge_id"]) != (site, edge_id):
                # Another edge node used this transfer id: refuse its message, leave the transfer alone.
                return self._reject(item, None, TransferRejected(BAD_CHUNK, "transfer id in use by another edge"))
            if index is None:
                self._stage_manifest(directory, item, site, edge_id, transfer_id)
            elif not self._stage_chunk(directory, item, index):
                return False
        except TransferRejected as exc:
            return self._reject(item, transfer_id, exc)
        self._ack((item,))
        return True

    def _origin(self, directory: Path, site: str, edge_id: str) -> dict[str, Any]:
        """Which site and edge node a transfer belongs to (recorded durably with its first message)."""
        path = directory / ORIGIN
        if path.exists():
            return dict(json.loads(path.read_bytes()))
        origin = {"site": site, "edge_id": edge_id}
        directory.mkdir(exist_ok=True)
        fsync_dir(self._transfers)
        self._write(directory, ORIGIN, json.dumps(origin).encode())
        return origin

    def _stage_manifest(self, directory: Path, item: Incoming, site: str, edge_id: str, transfer_id: str) -> None:
        manifest = parse_manifest(item.payload)
        if (manifest.site, manifest.edge_id, str(manifest.transfer_id)) != (site, edge_id, transfer_id):
            raise TransferRejected(BAD_MANIFEST, "site, edge_id or transfer_id differ from the topic")
        if manifest.size > self.settings.max_instance_bytes:
            raise TransferRejected(OVERSIZE, f"{manifest.size} bytes, more than {self.settings.max_instance_bytes}")
        path = directory / MANIFEST
        if path.exists():
            if TransferManifest.model_validate_json(path.read_bytes()) != manifest:
                raise TransferRejected(BAD_MANIFEST, "a second, different manifest for the same transfer")
            return
        for chunk in directory.glob(f"*{CHUNK_SUFFIX}"):  # chunks that came before the manifest
            if chunk.stat().st_size != manifest.chunk_length(int(chunk.stem)):
                raise TransferRejected(BAD_CHUNK, f"chunk {chunk.stem} has the wrong length")
        self._write(directory, MANIFEST, item.payload)
        self._check_complete(directory, manifest)

    def _stage_chunk(self, directory: Path, item: Incoming, index: int) -> bool:
        verify_chunk(item.payload, item.properties)
        manifest = self._manifest(directory)
        if manifest is not None and len(item.payload) != manifest.chunk_length(index):
            raise TransferRejected(BAD_CHUNK, f"chunk {index} has {len(item.payload)} bytes")
        if len(item.payload) > MAX_CHUNK_BYTES:
            raise TransferRejected(BAD_CHUNK, f"chunk {index} has more than {MAX_CHUNK_BYTES} bytes")
        name = f"{index}{CHUNK_SUFFIX}"
        if (directory / name).exists():
            self.duplicates += 1
            return True
        if self.staged_bytes + len(item.payload) > self.settings.max_staging_bytes:
            if not self._full:
                log.warning("staging area full (%d bytes): holding acknowledgements", self.staged_bytes)
            self._full = True
            return False
        self._full = False
        self._write(directory, name, item.payload)
        if directory.name in self._counts:
            self._counts[directory.name] += 1
        else:  # the first chunk since the start: count what is on disk (this one included)
            self._counts[directory.name] = self._count(directory)
        if manifest is not None:
            self._check_complete(directory, manifest)
        return True

    def _write(self, directory: Path, name: str, data: bytes) -> None:
        replace_durably(directory / name, data)
        self.staged_bytes += len(data)

    @staticmethod
    def _manifest(directory: Path) -> TransferManifest | None:
        path = directory / MANIFEST
        return TransferManifest.model_validate_json(path.read_bytes()) if path.exists() else None

    @staticmethod
    def _count(directory: Path) -> int:
        return sum(1 for _ in directory.glob(f"*{CHUNK_SUFFIX}"))

    def _is_complete(self, directory: Path) -> bool:
        manifest = self._manifest(directory)
        return manifest is not None and self._count(directory) == manifest.chunk_count

    def _check_complete(self, directory: Path, manifest: TransferManifest) -> None:
        if directory.name not in self._counts:
            self._counts[directory.name] = self._count(directory)
        if self._counts[directory.name] == manifest.chunk_count:
            self._counts.pop(directory.name)
            self._complete.append(directory.name)

    def _deliver(self, transfer_id: str) -> None:
        """Read a complete transfer back, verify size and SHA-256, hand it over, remember it, free its space."""
        directory = self._transfers / transfer_id
        manifest = self._manifest(directory)
        assert manifest is not None
        digest = hashlib.sha256()
        parts = []
        for index in range(manifest.chunk_count):
            part = (directory / f"{index}{CHUNK_SUFFIX}").read_bytes()
            digest.update(part)
            parts.append(part)
        data = b"".join(parts)
        del parts
        if len(data) != manifest.size or digest.hexdigest() != manifest.sha256:
            self._fail(transfer_id, manifest.site, TransferRejected(CHECKSUM_MISMATCH, "the instance's SHA-256 "
                                                                    "differs from the manifest"))
            return
        info = TransferInfo(
            transfer_id=transfer_id, site=manifest.site, edge_id=manifest.edge_id,
            sop_instance_uid=manifest.sop_instance_uid, sop_class_uid=manifest.sop_class_uid,
            size=manifest.size, sha256=manifest.sha256, created_at=manifest.created_at,
            completed_at=datetime.now(UTC),
        )
        self.on_instance(data, info)
        self._finish(transfer_id, self._done, b"")
        self.delivered += 1
        log.info("delivered a %d-byte instance from a %d-chunk transfer", manifest.size, manifest.chunk_count)

    def _finish(self, transfer_id: str, marker_dir: Path, content: bytes) -> None:
        """Remember a transfer as delivered or failed (durably), then remove its staged files."""
        write_durably(marker_dir / transfer_id, content)
        fsync_dir(marker_dir)
        self._remove_staged(self._transfers / transfer_id)
        self._counts.pop(transfer_id, None)
        self._active.pop(transfer_id, None)

    def _remove_staged(self, directory: Path) -> None:
        if directory.exists():
            freed = sum(f.stat().st_size for f in directory.iterdir())
            shutil.rmtree(directory)
            fsync_dir(self._transfers)
            self.staged_bytes -= freed

    def _finished(self, transfer_id: str) -> bool:
        return (self._done / transfer_id).exists() or (self._failed / transfer_id).exists()

    # --- rejections -----------------------------------------------------------------------------------------------

    def _reject(self, item: Incoming, transfer_id: str | None, exc: TransferRejected) -> bool:
        """Dead-letter a message (and fail its transfer if ``transfer_id``); ack it once the letter is confirmed."""
        parts = item.topic.split("/")
        site = parts[2] if len(parts) > 2 and topics.is_segment(parts[2]) else "unknown"
        confirmed = self._deadletter(site, exc, topic=item.topic, transfer_id=transfer_id,
                                     payload_bytes=len(item.payload),
                                     payload_sha256=hashlib.sha256(item.payload).hexdigest())
        if confirmed:
            if transfer_id is not None:
                self._finish(transfer_id, self._failed, exc.reason.encode())
            self._ack((item,))
        return True  # not confirmed (disconnected): the broker redelivers the message and it is judged again

    def _fail(self, transfer_id: str, site: str, exc: TransferRejected) -> None:
        """Dead-letter and drop a whole staged transfer (checksum mismatch at completion, timeout)."""
        if self._deadletter(site, exc, topic=None, transfer_id=transfer_id):
            self._finish(transfer_id, self._failed, exc.reason.encode())

    def _deadletter(self, site: str, exc: TransferRejected, **fields: Any) -> bool:
        """Publish a dead letter (never the payload: DICOM carries patient data); True once the broker has it."""
        letter = {
            "reason": exc.reason,
            "detail": exc.detail,
            "kind": "dicom-transfer",
            "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "worker": self.settings.worker_id,
            **fields,
        }
        self.deadletters[exc.reason] = self.deadletters.get(exc.reason, 0) + 1
        log.info("dead-lettered a DICOM transfer message: %s", exc.reason)
        info = self.client.publish(topics.deadletter(site, exc.reason), dumps_compact(letter), qos=1)
        return broker_confirmed(info)

    def _sweep(self) -> None:
        """Dead-letter transfers incomplete for too long; forget delivered/failed ids after their retention."""
        now = time.time()
        for directory in sorted(self._transfers.iterdir()):
            if directory.name in self._complete:
                continue
            try:
                origin = json.loads((directory / ORIGIN).read_bytes())
            except FileNotFoundError:  # a crash between mkdir and the origin record: nothing was acknowledged
                self._remove_staged(directory)
                continue
            idle = now - max(directory.stat().st_mtime, self._active.get(directory.name, 0.0))
            if idle > self.settings.incomplete_timeout_s:
                detail = f"no progress for {idle:.0f} s ({self._count(directory)} chunks staged)"
                self._fail(directory.name, origin["site"], TransferRejected(INCOMPLETE_TIMEOUT, detail))
        for marker_dir in (self._done, self._failed):
            for marker in marker_dir.iterdir():
                if now - marker.stat().st_mtime > self.settings.done_retention_s:
                    marker.unlink()


class DirectorySink:
    """An ``on_instance`` that files each instance as ``{transfer_id}.dcm`` and appends a line to
    ``deliveries.jsonl`` (both fsynced): a drop folder for another system until the study pipeline consumes it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __call__(self, data: bytes, info: TransferInfo) -> None:
        replace_durably(self.path / f"{info.transfer_id}.dcm", data)
        with (self.path / "deliveries.jsonl").open("a") as log_file:
            log_file.write(json.dumps(asdict(info), default=str) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
        fsync_dir(self.path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server.study.assembly``: run an assembler that files instances into ``--deliver-dir``."""
    from core import Settings

    settings = Settings()
    defaults = settings.dicom_transfer  # AEGLE_DICOM_TRANSFER__* / the config file; flags override
    parser = argparse.ArgumentParser(prog="python -m server.study.assembly", description=main.__doc__)
    parser.add_argument("--worker-id", default=defaults.worker_id)
    parser.add_argument("--site", default=defaults.site, help="the site this assembler serves (default: all)")
    parser.add_argument("--staging", type=Path, default=defaults.staging_path)
    parser.add_argument("--deliver-dir", type=Path, required=True)
    parser.add_argument("--incomplete-timeout", type=float, default=defaults.incomplete_timeout_s)
    parser.add_argument("--max-instance-bytes", type=int, default=defaults.max_instance_bytes)
    args = parser.parse_args(argv)
    configure_logging(settings.log_level)
    transfer = defaults.model_copy(update={
        "worker_id": args.worker_id, "site": args.site, "staging_path": args.staging,
        "incomplete_timeout_s": args.incomplete_timeout, "max_instance_bytes": args.max_instance_bytes,
    })
    TransferAssembler(settings.mqtt, transfer, DirectorySink(args.deliver_dir)).run_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
