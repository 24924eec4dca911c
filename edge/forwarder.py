"""The edge node's forwarder: outbox → manifest + chunks over MQTT (QoS 1) → deleted once the broker has them.

Guarantees:

* Bounded in-flight window: at most ``window`` chunks await their PUBACK (the publisher blocks beyond that), so
  memory is bounded and paho's 65 535 packet ids are never exhausted.
* An instance leaves the outbox only after the broker acknowledged its manifest and every chunk with success.
  A refusal (e.g. 0x87 "Not authorized": this edge publishes under an id that is not its MQTT username) keeps
  the instance, logs the reason and retries after ``retry_s``.
* Resume: MQTT v5 requires PUBACKs in publish order, so the number of acknowledgements is the acknowledged prefix
  of the chunks; it is recorded in the outbox every ``progress_every`` chunks. After a restart (or kill -9) the
  forwarder republishes the manifest and continues from the recorded prefix under the same transfer id; chunks
  sent twice are ignored by the receiver.
* The broker being down is not an error: the forwarder reconnects with backoff while the SCP keeps accepting.
"""

from __future__ import annotations

import logging
import threading

from core import MqttConnectError, MqttPublisher, MqttSettings, chunk_properties, topics
from edge.outbox import Outbox, Pending

log = logging.getLogger("aegle.edge.forwarder")


class ForwardRefused(RuntimeError):
    """The broker refused part of a transfer (the instance stays in the outbox)."""


class Forwarder:
    """Forward every instance of an :class:`~edge.outbox.Outbox`, oldest first, in a background thread, to the
    broker of ``mqtt`` with its login and TLS."""

    def __init__(
        self,
        outbox: Outbox,
        mqtt: MqttSettings,
        window: int = 32,
        progress_every: int = 64,
        retry_s: float = 5.0,
        poll_s: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.mqtt = mqtt
        self.window, self.progress_every, self.retry_s, self.poll_s = window, progress_every, retry_s, poll_s
        self.forwarded = 0
        self.retried = 0  # forwarding paused and tried again (broker down, a refusal, an unreadable item)
        self.refused = 0  # transfers the broker refused (0x87 …)
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publisher: MqttPublisher | None = None

    def notify(self) -> None:
        """Tell the forwarder a new instance is in the outbox (it also polls every ``poll_s``)."""
        self._wake.set()

    def start(self) -> Forwarder:
        """Run in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="aegle-edge-forwarder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the chunk in hand, wait for outstanding acknowledgements (up to ``timeout``), disconnect."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._publisher is not None:
            self._publisher.close(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                for item in self.outbox.pending():
                    if self._stop.is_set():
                        return
                    if not self.forward(item):
                        return
                    self.outbox.remove(item)
                    self.forwarded += 1
                    log.info("forwarded a %d-byte instance in %d chunks", item.manifest.size,
                             item.manifest.chunk_count)
                self.last_error = None
                self._wake.wait(self.poll_s)
            except (ForwardRefused, MqttConnectError, OSError, ValueError) as exc:  # ValueError: unreadable manifest
                self.last_error = str(exc)
                self.retried += 1
                if isinstance(exc, ForwardRefused):
                    self.refused += 1
                log.error("forwarding paused for %.0f s: %s", self.retry_s, exc)
                self._stop.wait(self.retry_s)

    def _connected(self) -> MqttPublisher:
        if self._publisher is None:
            self._publisher = MqttPublisher(self.mqtt, f"aegle-edge-{self.outbox.edge_id}", max_backlog=self.window)
        return self._publisher

    def forward(self, item: Pending) -> bool:
        """Publish one instance's manifest and remaining chunks; True once the broker acknowledged all of them.

        False if :meth:`stop` interrupted it (progress is recorded); :class:`ForwardRefused` if the broker
        refused any of them.
        """
        publisher = self._connected()
        manifest = item.manifest
        site, edge_id, transfer_id = manifest.site, manifest.edge_id, str(manifest.transfer_id)
        if not self._drained(publisher):
            return False
        refused_before = publisher.refused_count
        start = item.progress()
        acked_base = publisher.acknowledged  # nothing is outstanding, so acknowledgements from here are ours
        publisher.publish(topics.dicom_manifest(site, edge_id, transfer_id), manifest.to_json())
        with item.instance_path.open("rb") as f:
            f.seek(start * manifest.chunk_size)
            for index in range(start, manifest.chunk_count):
                if self._stop.is_set():
                    self._record(item, publisher, acked_base, start, refused_before)
                    return False
                chunk = f.read(manifest.chunk_length(index))
                publisher.publish(topics.dicom_chunk(site, edge_id, transfer_id, index), chunk,
                                  properties=chunk_properties(chunk))
                if (index + 1) % self.progress_every == 0:
                    self._record(item, publisher, acked_base, start, refused_before)
        if not self._drained(publisher):
            self._record(item, publisher, acked_base, start, refused_before)
            return False
        if publisher.refused_count != refused_before:
            refusal = publisher.refused[-1] if publisher.refused else None
            raise ForwardRefused(
                f"the broker refused {publisher.refused_count - refused_before} messages of a transfer"
                + (f" ({refusal.reason}, 0x{refusal.code:02X})" if refusal else "")
            )
        return True

    def _drained(self, publisher: MqttPublisher) -> bool:
        """Wait until the broker acknowledged everything published; False if stopped first."""
        while not publisher.flush(self.retry_s):
            if self._stop.is_set():
                return False
            log.warning("waiting for the broker to acknowledge %d messages", publisher.backlog)
        return True

    @staticmethod
    def _record(item: Pending, publisher: MqttPublisher, acked_base: int, start: int, refused_before: int) -> None:
        """Record the acknowledged prefix of the chunks (nothing if anything was refused)."""
        if publisher.refused_count == refused_before:
            acknowledged = publisher.acknowledged - acked_base - 1  # minus the manifest
            if acknowledged > 0:
                item.record_progress(start + acknowledged)
