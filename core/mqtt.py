"""The one way Aegle talks MQTT: paho-mqtt 2.x, MQTT v5, with the broker, login and TLS of :class:`MqttSettings`.

* :func:`new_client` builds every paho client (username and secret, TLS, client id) and :func:`connect` connects
  it to ``cfg``'s host and port with its keepalive, returning with the broker's answer (:func:`connect_nowait`:
  without waiting for it); :func:`disconnect` stops it. :func:`subscribe` subscribes and returns the SUBACK;
  :func:`probe` logs in and out again for readiness checks.
* :class:`MqttPublisher` publishes QoS 1 with a bounded backlog (devices, the edge forwarder, benchmarks, tests),
  optionally publishing again what the broker answered "No matching subscribers".
* :class:`PersistentSubscriber` holds one QoS 1 subscription in a persistent session and acknowledges in batches
  (the ingest worker and the DICOM assembler).
"""

from __future__ import annotations

import logging
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.settings import MqttSettings

_PUBACK = struct.Struct("!BBH")
_Client = TypeVar("_Client", bound=mqtt.Client)
MAX_REFUSALS_KEPT = 10_000
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code: accepted, but no subscription matched, so dropped


class MqttConnectError(ConnectionError):
    """The broker could not be reached or refused the connection; ``reason`` says why, ``code`` is the broker's
    CONNACK reason code (None when it did not answer)."""

    def __init__(self, host: str, port: int, client_id: str, reason: str, code: int | None = None) -> None:
        super().__init__(f"MQTT connection of {client_id!r} to {host}:{port} failed: {reason}")
        self.reason = reason
        self.code = code


def new_client(cfg: MqttSettings, client_id: str, client_class: type[_Client] = mqtt.Client, **options: Any) -> _Client:
    """A paho client for the broker of ``cfg``: MQTT v5, ``cfg``'s username and secret, TLS when ``cfg.tls``
    (verified against the system's CA certificates), reconnecting after 0.2 s backing off to 10 s.

    ``client_class``: paho's client or a subclass taking the same arguments (the ingest worker's
    ``LeanPublishClient``); ``options``: more of its constructor's arguments (``manual_ack``...). Set callbacks,
    then :func:`connect`.
    """
    client = client_class(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **options)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.secret())
    if cfg.tls:
        client.tls_set()
    client.reconnect_delay_set(0.2, 10)
    return client


def connect_nowait(client: _Client, cfg: MqttSettings, *, retry_unreachable: bool = False, **options: Any) -> _Client:
    """Connect ``client`` to ``cfg.host:cfg.port`` (keepalive ``cfg.keepalive``) and start its network thread,
    without waiting for the broker's answer: the client's ``on_connect`` sees it, and paho reconnects whenever the
    connection is lost. A broker that cannot be reached is :class:`MqttConnectError` at once — or, with
    ``retry_unreachable``, tried again in the background until it is up. ``options``: more arguments of paho's
    ``connect`` (``clean_start``, ``properties``).
    """
    if retry_unreachable:
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, **options)
    else:
        try:
            client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, **options)
        except OSError as exc:
            raise MqttConnectError(cfg.host, cfg.port, _client_id(client), f"{type(exc).__name__}: {exc}") from exc
    client.loop_start()
    return client


def connect(client: _Client, cfg: MqttSettings, timeout: float = 10.0, **options: Any) -> _Client:
    """Connect ``client`` as :func:`connect_nowait` does and return once the broker accepted the login.

    :class:`MqttConnectError` if the broker could not be reached, refused (the client makes no further attempt)
    or did not answer within ``timeout`` seconds; the client is stopped then. The client's own ``on_connect``
    runs as usual.
    """
    answered = threading.Event()
    connack: list[ReasonCode] = []
    own = client.on_connect

    def first_answer(c: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        c.on_connect = own
        if reason.is_failure:
            c.disconnect()  # no reconnection attempts with credentials the broker has refused
        connack.append(reason)
        answered.set()
        if own is not None:
            own(c, userdata, flags, reason, props)

    client.on_connect = first_answer
    try:
        connect_nowait(client, cfg, **options)
        if not answered.wait(timeout):
            raise MqttConnectError(cfg.host, cfg.port, _client_id(client), f"no CONNACK within {timeout:g} s")
        if connack[0].is_failure:
            reason = f"{connack[0].getName()} (0x{connack[0].value:02X})"
            raise MqttConnectError(cfg.host, cfg.port, _client_id(client), reason, connack[0].value)
    except MqttConnectError:
        client.on_connect = own
        disconnect(client)
        raise
    return client


def _client_id(client: mqtt.Client) -> str:
    return client._client_id.decode()  # paho 2.x keeps it private (pinned <3)


def disconnect(client: mqtt.Client, properties: Properties | None = None) -> None:
    """Disconnect (with DISCONNECT ``properties``, if any) and stop the client's network thread."""
    client.disconnect(properties=properties)
    client.loop_stop()


def subscribe(
    client: mqtt.Client, filters: str | Sequence[str], qos: int = 1, timeout: float = 10.0
) -> list[ReasonCode]:
    """Subscribe to one topic filter or several (in one SUBSCRIBE) and wait for the broker's SUBACK.

    Returns one reason code per filter: the granted QoS or why the broker refused (``is_failure``).
    TimeoutError if no SUBACK arrives within ``timeout`` seconds. The client's own ``on_subscribe`` runs as usual.
    """
    answers: dict[int, list[ReasonCode]] = {}
    arrived = threading.Condition()
    own = client.on_subscribe

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        with arrived:
            answers[mid] = codes
            arrived.notify_all()
        if own is not None:
            own(c, userdata, mid, codes, props)

    client.on_subscribe = on_subscribe
    try:
        wanted = filters if isinstance(filters, str) else [(f, qos) for f in filters]
        rc, mid = client.subscribe(wanted, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribing to {filters} failed: {mqtt.error_string(rc)}")
        with arrived:
            if not arrived.wait_for(lambda: mid in answers, timeout):
                raise TimeoutError(f"no SUBACK for {filters} within {timeout:g} s")
        return answers[mid]
    finally:
        client.on_subscribe = own


def probe(cfg: MqttSettings, timeout: float, client_id: str) -> tuple[bool, str]:
    """Log in to the broker of ``cfg`` and leave at once (readiness checks): ``(True, "connected to …")`` or
    ``(False, why not)`` — unreachable, refused with the broker's reason, or no answer within ``timeout`` s."""
    where = f"{cfg.host}:{cfg.port}"
    client = new_client(cfg, client_id)
    try:
        connect(client, cfg, timeout)
    except MqttConnectError as exc:
        if exc.code is not None:
            return False, f"broker {where} refused the connection: {exc.reason}"
        return False, f"cannot reach broker {where}: {exc.reason}"
    disconnect(client)
    return True, f"connected to {where}"


def broker_confirmed(info: mqtt.MQTTMessageInfo, timeout: float = 30.0) -> bool:
    """True once the broker acknowledged a QoS ≥ 1 publish (e.g. a dead letter); False if not within ``timeout``."""
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):  # not connected
        return False
    return info.is_published()


# --- publishing with a bounded backlog ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A publish as handed to paho, kept until acknowledged (to publish it again after a 0x10 answer)."""

    topic: str
    payload: bytes
    qos: int
    properties: Properties | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A publish the broker acknowledged with a failure reason code (MQTT v5 PUBACK >= 0x80)."""

    topic: str
    mid: int
    code: int
    reason: str


class MqttPublisher:
    """One MQTT v5 connection that publishes with at most ``max_backlog`` unacknowledged messages.

    paho keeps every unacknowledged QoS 1 message in memory and silently loses messages once more than 65 535 are
    outstanding (the packet id space), so :meth:`publish` blocks while ``max_backlog`` messages await their
    PUBACK. MQTT v5 brokers refuse a publish with a PUBACK reason code (0x87 "Not authorized" when the ACL denies
    the topic); those refusals are recorded in :attr:`refused`, not lost.

    A QoS 1 publish that no subscription matches is acknowledged with reason code 0x10 "No matching subscribers"
    and dropped by the broker. With ``unmatched_retry_s`` such a message keeps its backlog slot and is published
    again every ``unmatched_retry_s`` seconds until a subscriber takes it (:attr:`unmatched` counts the 0x10
    answers): a vitals device does so, because Mosquitto 2.0.11 does not restore the ingest workers' shared
    subscription after a restart, and until each worker has reconnected and subscribed again nothing matches.
    None (the default: ``cfg.unmatched_retry_s``, itself None unless set): 0x10 counts as acknowledged, MQTT's
    own semantics (result events, statuses).

    Connects in the constructor with the login of ``cfg`` (:class:`MqttConnectError` with the broker's reason on
    failure), then paho reconnects by itself. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        cfg: MqttSettings,
        client_id: str,
        max_backlog: int = 1000,
        connect_timeout: float = 10.0,
        unmatched_retry_s: float | None = None,
    ) -> None:
        if not 1 <= max_backlog <= 65_535:
            raise ValueError("max_backlog must be within [1, 65535]")
        if unmatched_retry_s is None:
            unmatched_retry_s = cfg.unmatched_retry_s
        elif unmatched_retry_s <= 0:
            raise ValueError("unmatched_retry_s must be positive (or None)")
        self.client_id = client_id
        self.max_backlog = max_backlog
        self.unmatched_retry_s = unmatched_retry_s
        self.unmatched = 0  # 0x10 "No matching subscribers" answers (each published again when retrying)
        self.refused: list[Refusal] = []  # the first MAX_REFUSALS_KEPT refusals
        self.refused_count = 0
        self.published = 0
        self.acknowledged = 0
        self.peak_backlog = 0
        self._slots = threading.Semaphore(max_backlog)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: dict[int, _Outgoing] = {}  # mid -> message awaiting on_publish
        self._early: dict[int, ReasonCode | None] = {}  # on_publish that ran before publish() recorded the mid
        self._unmatched: list[_Outgoing] = []  # answered 0x10, to be published again (holding their slots)
        self._closing = threading.Event()
        self._retrier: threading.Thread | None = None
        if unmatched_retry_s is not None:
            self._retrier = threading.Thread(target=self._retry_unmatched, name=f"{client_id}-retry", daemon=True)

        client = new_client(cfg, client_id)
        # The semaphore bounds the backlog. paho's own limit would rescan every outstanding message on each PUBACK
        # (O(backlog) per ack), so it is switched off: paho never holds more than max_backlog messages anyway.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._client = connect(client, cfg, connect_timeout)
        if self._retrier is not None:
            self._retrier.start()

    # -- paho callbacks (network thread) -------------------------------------------------------------------

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        # QoS 0 messages still queued when the connection drops are discarded by paho without an on_publish.
        with self._lock:
            lost = [mid for mid, out in self._pending.items() if out.qos == 0]
            for mid in lost:
                del self._pending[mid]
        for _ in lost:
            self._done()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, props: object) -> None:
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._early[mid] = reason
                return
            finished = self._settle(entry, mid, reason)
        if finished:
            self._done()

    # -- internals -----------------------------------------------------------------------------------------

    def _settle(self, out: _Outgoing, mid: int, reason: ReasonCode | None) -> bool:
        """Count an acknowledgement, or keep a 0x10 answer for publishing again; True when the slot is free
        (``self._lock`` held)."""
        if reason is not None and reason.value == NO_MATCHING_SUBSCRIBERS and self.unmatched_retry_s is not None:
            self.unmatched += 1
            self._unmatched.append(out)
            return False
        self._record(out.topic, mid, reason)
        return True

    def _record(self, topic: str, mid: int, reason: ReasonCode | None) -> None:
        """Count an acknowledgement (``self._lock`` held)."""
        self.acknowledged += 1
        if reason is not None and reason.is_failure:
            self.refused_count += 1
            if len(self.refused) < MAX_REFUSALS_KEPT:
                self.refused.append(Refusal(topic, mid, reason.value, reason.getName()))

    def _done(self) -> None:
        self._slots.release()
        with self._lock:
            if not self._pending and not self._unmatched:
                self._idle.notify_all()

    def _retry_unmatched(self) -> None:
        """Publish the messages answered 0x10 again, every ``unmatched_retry_s`` seconds, until closed."""
        assert self.unmatched_retry_s is not None
        while not self._closing.wait(self.unmatched_retry_s):
            with self._lock:
                due, self._unmatched = self._unmatched, []
            for out in due:
                info = self._client.publish(out.topic, out.payload, out.qos, properties=out.properties)
                self._track(out, info.mid)

    def _track(self, out: _Outgoing, mid: int) -> None:
        """Record a message handed to paho as ``mid`` (its slot already taken), or settle it at once if its
        acknowledgement came first."""
        with self._lock:
            if mid in self._early:
                finished = self._settle(out, mid, self._early.pop(mid))
            else:
                self._pending[mid] = out
                self.peak_backlog = max(self.peak_backlog, len(self._pending) + len(self._unmatched))
                finished = False
        if finished:
            self._done()

    # -- public API ----------------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Messages handed to paho and not yet acknowledged (or answered 0x10 and waiting to be published again)."""
        with self._lock:
            return len(self._pending) + len(self._unmatched)

    def publish(self, topic: str, payload: bytes, qos: int = 1, properties: Properties | None = None) -> int:
        """Publish, blocking while ``max_backlog`` messages are unacknowledged; returns the packet id (mid).

        ``properties``: MQTT v5 properties of the PUBLISH (e.g. user properties), or None.
        """
        self._slots.acquire()
        try:
            info = self._client.publish(topic, payload, qos, properties=properties)
        except BaseException:
            self._slots.release()
            raise
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN) or (
            qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS
        ):
            self._slots.release()
            raise RuntimeError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            self.published += 1
        self._track(_Outgoing(topic, payload, qos, properties), info.mid)
        return info.mid

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every published message is acknowledged; False if ``timeout`` seconds pass first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending and not self._unmatched, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout`` seconds), disconnect and stop the network thread (and the retries: what
        still waits for a subscriber then is given up)."""
        self.flush(timeout)
        self._closing.set()
        if self._retrier is not None:
            self._retrier.join(10)
        disconnect(self._client)

    def __enter__(self) -> MqttPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- subscribing in a persistent session ----------------------------------------------------------------------


class Delivered(Protocol):
    """A received message as far as acknowledging it goes: its packet id and the connection it arrived on."""

    connection: int
    mid: int


class PersistentSubscriber(ABC):
    """Base of a worker holding one QoS 1 subscription in a persistent MQTT v5 session with manual acknowledgement.

    * A fixed client id ``aegle-<worker_id>``, ``clean_start=False`` and a session expiry, so messages published
      while the subscriber is down wait for it in the broker; ``receive_maximum`` bounds the unacknowledged backlog.
    * Manual acknowledgement at QoS 1. A packet id is only meaningful on the connection that received it (a resumed
      session redelivers with the same ids, a new session reuses them), so every connect and disconnect starts a
      new connection generation and acknowledgements of messages from an earlier one are dropped: the broker
      redelivers.

    Subclasses handle ``_on_message`` and may plug in their own client class in ``_new_client``; they start with
    :meth:`_connect` and stop with :meth:`_disconnect`. ``_connection`` is the current connection generation,
    ``_subscribed`` is set while the subscription is granted, ``_running`` while the worker is meant to run.
    """

    def __init__(
        self,
        mqtt_settings: MqttSettings,
        worker_id: str,
        subscription: str,
        subject: str,
        *,
        session_expiry_s: int,
        receive_maximum: int,
        log: logging.Logger,
    ) -> None:
        self._mqtt = mqtt_settings
        self._subscription = subscription
        self._subject = subject  # what is subscribed to, for the log: "vitals", "DICOM"
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._log = log
        self._connection = 0
        self._subscribed = threading.Event()
        self._running = threading.Event()
        self.client = self._new_client(f"aegle-{worker_id}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _new_client(self, client_id: str) -> mqtt.Client:
        """A client of :func:`new_client` with a fixed id and manual acknowledgement."""
        return new_client(self._mqtt, client_id, manual_ack=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._log.error("broker refused the connection: %s", reason)
            return
        self._connection += 1
        client.subscribe(self._subscription, qos=1)
        self._log.info("connected (session %s)", "resumed" if flags.session_present else "new")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connection += 1
        self._subscribed.clear()
        if self._running.is_set():
            self._log.warning("disconnected from broker: %s; reconnecting", reason)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._log.error("the broker refused the %s subscription: %s", self._subject, [str(r) for r in reasons])
            return
        self._subscribed.set()

    @abstractmethod
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """What a delivered message does (each subscriber's own processing)."""

    def _connect(self, timeout: float) -> None:
        """Mark the worker running, connect (resuming the session) and return once subscribed.

        If the subscription is not granted within ``timeout`` the worker is stopped and ConnectionError raised.
        """
        self._running.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        connect_nowait(self.client, self._mqtt, clean_start=False, properties=props)
        if not self._subscribed.wait(timeout):
            self.stop()
            raise ConnectionError(f"not subscribed at the broker {self._mqtt.host}:{self._mqtt.port} (see the log)")

    def stop(self) -> None:
        """Stop the worker (subclasses finish their work, then :meth:`_disconnect`)."""
        self._disconnect()

    def _disconnect(self, end_session: bool = False) -> None:
        """Disconnect and stop paho's loop; the broker keeps the session unless ``end_session``."""
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        disconnect(self.client, props)

    def _ack(self, delivered: Iterable[Delivered]) -> None:
        """Acknowledge messages received on the current connection, with one write.

        MQTT v5 allows a 4-byte PUBACK (success, no properties): the bytes paho's ``ack()`` would send. ``ack()``
        queues one packet and wakes paho's loop per message; one write per batch drained a queued stream of
        50 000 messages about 10 % faster on a 2-core machine. ``_packet_queue`` is paho 2.x's internal queue
        (pinned ``<3``). QoS 0 messages (packet id 0) have nothing to acknowledge: a PUBACK for id 0 is a
        protocol error.
        """
        connection = self._connection
        mids = [item.mid for item in delivered if item.connection == connection and item.mid]
        if mids:
            self.client._packet_queue(mqtt.PUBACK, b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids), 0, 0)
