"""MQTT ingest worker: vitals from the broker → validated → time-series store → live sensor context.

Delivery guarantees:

* MQTT v5, QoS 1, a fixed client id and a persistent session (``clean_start=False`` with a session expiry), so
  messages published while a worker is down wait for it in the broker.
* Manual acknowledgement: a message is acknowledged only after its samples are durable — written to the store,
  or to the on-disk spool when the store is unreachable — or after its dead letter is confirmed by the broker.
  A worker killed at any point loses nothing; what it had not acknowledged is redelivered, and the store's
  idempotent writes keep one row per sample.
* Bounded backlog: the broker sends at most ``receive_maximum`` unacknowledged messages (far below paho's
  65 535 packet ids), so memory is bounded and nothing is dropped inside paho.
* Several workers share the stream through the shared subscription ``$share/<group>/aegle/v1/+/+/vitals``.
* Acknowledgements are only sent on the connection that received the message (see :mod:`core.mqtt`):
  after a reconnect stale acknowledgements are dropped and the broker's redelivery is written idempotently instead.

Status: every ``ingest.status_interval_s`` the worker publishes a retained status on
``aegle/v1/{site}/status/ingest/{worker_id}`` (messages received, stored, dead-lettered by reason, messages per
second over the last minute); at stop the same marked offline, and as last will marked offline with cause
``connection lost``. Counts and reasons only, never a payload.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import signal
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core import (
    MAX_PAYLOAD_BYTES,
    ContextCache,
    PersistentSubscriber,
    Sample,
    Settings,
    VitalsRejected,
    broker_confirmed,
    dumps_compact,
    new_client,
    parse_samples,
    topics,
)
from server.store import BufferedStore, Spool, SpoolFull, VitalsStore, open_store

log = logging.getLogger("aegle.ingest")
STATUS_SCHEMA = "aegle.ingest-status/1"
RATE_WINDOW_S = 60.0  # the status's messages per second are over this window


@dataclass(slots=True)
class Received:
    """One message as paho handed it over, tagged with the connection it arrived on."""

    connection: int
    mid: int
    topic: str
    payload: bytes


class ReadBufferedSocket:
    """A connected socket read in large gulps, for paho, which reads every packet with three or more ``recv()``.

    ``recv(n)`` serves from the last gulp and only calls the socket when it is used up, so errors (would block,
    closed) surface exactly as the socket raises them. ``pending()`` counts the bytes held here (plus a TLS
    socket's own), which paho's loop already honours: it does not wait in ``select()`` while bytes are pending.
    Everything else is the wrapped socket's.
    """

    def __init__(self, sock: Any, gulp: int = 256 * 1024) -> None:
        self._sock = sock
        self._gulp = gulp
        self._data = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes, from the buffer or, when it is empty, from one ``recv()`` of the socket."""
        if self._pos >= len(self._data):
            self._data = self._sock.recv(self._gulp)
            self._pos = 0
        chunk = self._data[self._pos : self._pos + bufsize]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        """Bytes readable without touching the network."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._data) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class LeanPublishClient(mqtt.Client):
    """paho's client with a shorter receive path for the QoS 1 PUBLISH packets an ingest worker lives on.

    For every MQTT v5 PUBLISH paho builds a :class:`~paho.mqtt.properties.Properties` object (about a quarter
    of its receive path in pure Python, even when the packet carries no properties), an ``MQTTMessage`` with its
    own ``Condition``, and matches the topic against per-topic callbacks. A QoS 1 packet without properties,
    received with manual acknowledgement, is instead handed straight to ``receive(mid, topic, payload)``;
    every other packet takes paho's own path to ``on_message``. The socket is read through a
    :class:`ReadBufferedSocket`, and each wake-up of the loop handles up to ``packets_per_read`` packets already
    buffered (paho handles one per ``select()``). ``_handle_publish``, ``_in_packet`` and ``_create_socket`` are
    paho 2.x internals (pinned ``<3``); tests/test_ingest.py checks this decoding against paho's.
    """

    def __init__(
        self, *args: Any, receive: Callable[[int, str, bytes], None], packets_per_read: int = 1000, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._receive = receive
        self._packets_per_read = packets_per_read

    def _create_socket(self) -> Any:
        return ReadBufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read packets while they are buffered, up to ``packets_per_read``; the rest on the loop's next turn."""
        for _ in range(self._packets_per_read):
            rc = super().loop_read(max_packets)
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None or not self._sock.pending():
                return rc
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        packet = self._in_packet["packet"]
        header = self._in_packet["command"]
        topic_end = 2 + (packet[0] << 8 | packet[1]) if len(packet) >= 2 else 0
        # QoS 1 (bits 1-2 of the fixed header), MQTT v5, a topic, a packet id, and a property length of 0.
        if (
            header & 0x06 != 0x02
            or not self._manual_ack
            or self._protocol != mqtt.MQTTv5
            or len(packet) < topic_end + 3
            or packet[topic_end + 2] != 0
        ):
            return super()._handle_publish()
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        self._receive(packet[topic_end] << 8 | packet[topic_end + 1], topic, bytes(packet[topic_end + 3 :]))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


class IngestMetrics:
    """Prometheus metrics of one worker (own registry, so several workers can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "aegle_ingest_messages", "Vitals messages processed", ["outcome"], registry=self.registry
        )
        self.deadletters = Counter(
            "aegle_ingest_deadletters", "Rejected messages by reason", ["reason"], registry=self.registry
        )
        self.samples = Counter("aegle_ingest_samples_written", "Samples made durable", registry=self.registry)
        self.batch_seconds = Histogram(
            "aegle_ingest_batch_seconds",
            "Time to validate and persist one batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.inbox = Gauge("aegle_ingest_inbox", "Messages received, not yet persisted", registry=self.registry)
        self.spool = Gauge(
            "aegle_ingest_spool_pending", "Samples waiting on disk for the store", registry=self.registry
        )
        self.store_up = Gauge("aegle_ingest_store_up", "1 when the last store write succeeded", registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a metric sample (0 if it has not been set)."""
        return self.registry.get_sample_value(name, labels) or 0.0


class IngestWorker(PersistentSubscriber):
    """One ingest worker; :meth:`start` connects and runs in background threads, :meth:`stop` drains and stops."""

    def __init__(self, settings: Settings, store: VitalsStore | None = None) -> None:
        self.settings = settings
        cfg = settings.ingest
        self.store = BufferedStore(store or open_store(settings.store), Spool(cfg.spool_path, cfg.spool_max_samples))
        self.cache = ContextCache(settings.context.window_s, settings.context.freshness_tau_s)
        self.metrics = IngestMetrics()
        self._inbox: deque[Received] = deque()
        self._wake = threading.Event()
        self._dirty: set[str] = set()
        self._writer: threading.Thread | None = None
        self._done = threading.Event()
        self.failed: BaseException | None = None
        self._last_message = 0.0
        self.received = 0
        self.stored = 0  # messages whose samples are durable
        self.deadlettered: Tally[str] = Tally()  # by reason
        self._processed: deque[tuple[float, int]] = deque()  # (monotonic time, messages processed) per status
        super().__init__(
            settings.mqtt,
            cfg.worker_id,
            topics.shared_vitals_filter(cfg.site, cfg.share_group),
            "vitals",
            session_expiry_s=cfg.session_expiry_s,
            receive_maximum=cfg.receive_maximum,
            log=log,
        )
        self._status_topic = topics.ingest_status(cfg.site, cfg.worker_id)
        will = {"schema": STATUS_SCHEMA, "worker_id": cfg.worker_id, "state": "offline", "cause": "connection lost"}
        self.client.will_set(self._status_topic, dumps_compact(will), qos=1, retain=True)

    # --- MQTT -------------------------------------------------------------------------------------------------

    def _new_client(self, client_id: str) -> mqtt.Client:
        """A :class:`LeanPublishClient`: up to 1000 own publishes in flight, no limit on paho's outgoing queue."""
        client = new_client(self._mqtt, client_id, LeanPublishClient, receive=self._receive, manual_ack=True)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        return client

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._receive(msg.mid, msg.topic, msg.payload)

    def _receive(self, mid: int, topic: str, payload: bytes) -> None:
        self._last_message = time.monotonic()
        self.received += 1
        self._inbox.append(Received(self._connection, mid, topic, payload))
        # Wake the writer when a batch is full. Only at the crossing: a waiting writer takes nothing, so the inbox
        # grows one by one through it, and once awake the writer empties the inbox before it waits again.
        if len(self._inbox) == self.settings.ingest.batch_size:
            self._wake.set()

    def start(self, timeout: float = 15.0) -> IngestWorker:
        """Rebuild the live context from the store, connect, and return once subscribed (metrics start then)."""
        self._rebuild_context()
        self._connect(timeout)
        metrics_port = self.settings.ingest.metrics_port
        if metrics_port is not None:
            start_http_server(metrics_port, addr="127.0.0.1", registry=self.metrics.registry)
        self._writer = threading.Thread(target=self._write_loop, name="aegle-ingest-writer", daemon=True)
        self._writer.start()
        return self

    def stop(self, end_session: bool = False) -> None:
        """Persist and acknowledge what has arrived, publish contexts, disconnect.

        The broker keeps the session (and queues this worker's share of the stream) unless ``end_session``.
        """
        self._running.clear()
        self._wake.set()
        if self._writer is not None:
            self._writer.join(30)
        offline = self._publish_status("offline")
        if offline is not None and not broker_confirmed(offline, 5.0):
            log.warning("the broker did not acknowledge the offline status")
        self._disconnect(end_session)
        self.store.close()
        self.store.store.close()

    def retire(self, quiet_s: float = 2.0, timeout_s: float = 600.0) -> None:
        """Take a worker out of service for good without losing its share of the stream.

        A stopped worker's persistent session keeps its place in the shared subscription, so the broker goes
        on queueing part of the stream for it. Retiring drains what is queued, unsubscribes (the other
        workers then get everything), persists the rest and ends the session.
        """
        self.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self._last_message < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)
        self.client.unsubscribe(self._subscription)
        time.sleep(quiet_s)  # whatever was in flight before the UNSUBACK arrives and is processed
        self.stop(end_session=True)

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT (the CLI's ``aegle ingest``); exit non-zero if the writer failed."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._done.set())
        self.start()
        log.info("ingesting; metrics on port %s", self.settings.ingest.metrics_port)
        self._done.wait()
        self.stop()
        if self.failed is not None:
            raise SystemExit(1)

    # --- processing -------------------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Run the batches; on an unexpected error, stop for good (fail-stop) rather than hang half-alive.

        Nothing is lost by stopping: what was not acknowledged is redelivered to the restarted worker.
        """
        try:
            self._batches()
        except BaseException as exc:
            self.failed = exc
            log.critical("ingest writer stopped on an unexpected error: %s", type(exc).__name__, exc_info=exc)
            self._running.clear()
            self._done.set()

    def _batches(self) -> None:
        cfg = self.settings.ingest
        next_context = time.monotonic() + cfg.context_publish_interval_s
        next_status = time.monotonic()
        while self._running.is_set() or self._inbox:
            self._wake.wait(cfg.batch_interval_s)
            self._wake.clear()
            while self._inbox:
                self._process(self._take(cfg.batch_size))
            if self.store.pending:
                self.store.drain_when_due(max_batches=5)
                self.metrics.spool.set(self.store.pending)
            if time.monotonic() >= next_context or not self._running.is_set():
                self._publish_contexts()
                next_context = time.monotonic() + cfg.context_publish_interval_s
            if time.monotonic() >= next_status and self._running.is_set():
                self._publish_status("online")
                next_status = time.monotonic() + cfg.status_interval_s

    def _take(self, n: int) -> list[Received]:
        batch = []
        while self._inbox and len(batch) < n:
            batch.append(self._inbox.popleft())
        return batch

    def _process(self, batch: list[Received]) -> None:
        started = time.perf_counter()
        now = datetime.now(UTC)
        samples: list[Sample] = []
        letters: list[mqtt.MQTTMessageInfo] = []
        letter_reasons: list[str] = []
        for item in batch:
            try:
                site, device_id = topics.parse_vitals_topic(item.topic)
                found = parse_samples(item.payload, now)
                if (found[0].site, found[0].device_id) != (site, device_id):
                    raise VitalsRejected("topic_mismatch", "site/device_id in the payload differ from the topic")
                samples.extend(found)
            except (VitalsRejected, ValueError) as exc:
                reason = exc.reason if isinstance(exc, VitalsRejected) else "invalid_topic"
                letters.append(self._deadletter(item, reason, exc, now))
                letter_reasons.append(reason)
        self._persist(samples)
        letters_safe = all(broker_confirmed(info) for info in letters)
        self._dirty |= self.cache.add(samples)
        if letters_safe:  # otherwise the batch comes again: samples are idempotent, letters at least once
            self._ack(batch)
            self.stored += len(batch) - len(letters)
            self.deadlettered.update(letter_reasons)
        self.metrics.messages.labels("accepted").inc(len(batch) - len(letters))
        self.metrics.messages.labels("rejected").inc(len(letters))
        self.metrics.samples.inc(len(samples))
        self.metrics.inbox.set(len(self._inbox))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _persist(self, samples: list[Sample]) -> None:
        """Make samples durable; while neither store nor spool can take them, wait (messages stay unacked)."""
        while True:
            try:
                self.store.write(samples)
                self.metrics.store_up.set(0 if self.store.pending else 1)
                self.metrics.spool.set(self.store.pending)
                return
            except SpoolFull:
                self.metrics.store_up.set(0)
                log.error("store unreachable and spool full (%d samples): holding acknowledgements", self.store.pending)
                time.sleep(1.0)
                self.store.drain(max_batches=5)

    def _deadletter(self, item: Received, reason: str, exc: Exception, now: datetime) -> mqtt.MQTTMessageInfo:
        detail = exc.detail if isinstance(exc, VitalsRejected) else str(exc)
        parts = item.topic.split("/")
        site = parts[2] if len(parts) > 2 and topics.is_segment(parts[2]) else "unknown"
        kept = item.payload[:MAX_PAYLOAD_BYTES]
        letter = {
            "reason": reason,
            "detail": detail,
            "topic": item.topic,
            "received_at": now.isoformat().replace("+00:00", "Z"),
            "worker": self.settings.ingest.worker_id,
            "payload_bytes": len(item.payload),
            "payload_sha256": hashlib.sha256(item.payload).hexdigest(),
            "payload_b64": base64.b64encode(kept).decode(),
            "truncated": len(kept) < len(item.payload),
        }
        self.metrics.deadletters.labels(reason).inc()
        log.info("dead-lettered a message: %s", reason)
        return self.client.publish(topics.deadletter(site, reason), dumps_compact(letter), qos=1)

    # --- status -----------------------------------------------------------------------------------------------

    def status(self, state: str = "online") -> dict[str, Any]:
        """The worker's status: messages received, stored and dead-lettered by reason since it started, and
        messages processed per second over the last :data:`RATE_WINDOW_S` (from the statuses published in it)."""
        now, processed = time.monotonic(), self.stored + sum(self.deadlettered.values())
        window = self._processed
        window.append((now, processed))
        while len(window) > 2 and now - window[1][0] >= RATE_WINDOW_S:
            window.popleft()
        span = now - window[0][0]
        return {
            "schema": STATUS_SCHEMA, "worker_id": self.settings.ingest.worker_id, "state": state,
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "interval_s": self.settings.ingest.status_interval_s,
            "received": self.received, "stored": self.stored, "deadlettered": dict(self.deadlettered),
            "rate_per_s": round((processed - window[0][1]) / span, 3) if span > 0 else 0.0,
            "rate_window_s": round(span, 1), "spool_pending": self.store.pending,
        }  # fmt: skip

    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo | None:
        """Publish the status (retained, QoS 1); None while not connected (statuses are not queued)."""
        if not self.client.is_connected():
            return None
        return self.client.publish(self._status_topic, dumps_compact(self.status(state)), qos=1, retain=True)

    # --- live context -----------------------------------------------------------------------------------------

    def _publish_contexts(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for patient_id in dirty:
            site = self.cache.site_of(patient_id)
            if site is None:
                continue
            ctx = self.cache.context(patient_id)
            self.client.publish(topics.context(site, patient_id), dumps_compact(ctx.to_dict()), qos=1, retain=True)

    def _rebuild_context(self) -> None:
        since = int(time.time() * 1000) - int(self.settings.context.window_s * 1000 * 2)
        try:
            self._dirty |= self.cache.add(self.store.store.recent(since))
        except Exception as exc:  # the store may be down at start: spooling covers writes, context starts empty
            log.warning("could not rebuild the live context from the store: %s", exc)
        log.info("live context rebuilt for %d patients", len(self.cache.patients()))
