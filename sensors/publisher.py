"""Publishing to the broker the way devices do: paho-mqtt, MQTT v5, QoS 1, with a bounded backlog.

paho keeps every unacknowledged QoS 1 message in memory and silently loses messages once more than 65 535 are
outstanding (the packet id space), so :class:`MqttPublisher` blocks in :meth:`~MqttPublisher.publish` while
``max_backlog`` messages await their PUBACK. MQTT v5 brokers refuse a publish with a PUBACK reason code
(0x87 "Not authorized" when the ACL denies the topic); those refusals are recorded, not lost.

:class:`DeviceFleet` opens one connection per device, with the device's own credentials (the username is the
device id), which is how the broker's per-device ACL is exercised.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensors.simulator import Outgoing

MAX_REFUSALS_KEPT = 10_000


class MqttConnectError(ConnectionError):
    """The broker could not be reached or refused the connection; ``reason`` is the MQTT reason string."""

    def __init__(self, host: str, port: int, client_id: str, reason: str, code: int | None = None) -> None:
        super().__init__(f"MQTT connection of {client_id!r} to {host}:{port} failed: {reason}")
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class Refusal:
    """A publish the broker acknowledged with a failure reason code (MQTT v5 PUBACK >= 0x80)."""

    topic: str
    mid: int
    code: int
    reason: str


class MqttPublisher:
    """One MQTT v5 client connection that publishes with at most ``max_backlog`` unacknowledged messages.

    Connects in the constructor (raising :class:`MqttConnectError` with the broker's reason on failure) and runs
    paho's network loop in a background thread. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        max_backlog: int = 1000,
        connect_timeout: float = 10.0,
        keepalive: int = 60,
    ) -> None:
        if not 1 <= max_backlog <= 65_535:
            raise ValueError("max_backlog must be within [1, 65535]")
        self.host, self.port, self.client_id = host, port, client_id
        self.max_backlog = max_backlog
        self.refused: list[Refusal] = []  # the first MAX_REFUSALS_KEPT refusals
        self.refused_count = 0
        self.published = 0
        self.acknowledged = 0
        self.peak_backlog = 0
        self._slots = threading.Semaphore(max_backlog)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: dict[int, tuple[str, int]] = {}  # mid -> (topic, qos) awaiting on_publish
        self._early: dict[int, ReasonCode | None] = {}  # on_publish that ran before publish() recorded the mid
        self._connected = threading.Event()
        self._connack: ReasonCode | None = None

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=True
        )
        # The semaphore bounds the backlog. paho's own limit would rescan every outstanding message on each PUBACK
        # (O(backlog) per ack), so it is switched off: paho never holds more than max_backlog messages anyway.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._client = client
        try:
            client.connect(host, port, keepalive)
        except OSError as exc:
            raise MqttConnectError(host, port, client_id, f"{type(exc).__name__}: {exc}") from exc
        client.loop_start()
        if not self._connected.wait(connect_timeout):
            self._abort()
            raise MqttConnectError(host, port, client_id, f"no CONNACK within {connect_timeout:g} s")
        if self._connack is not None and self._connack.is_failure:
            self._abort()
            reason = f"{self._connack.getName()} (0x{self._connack.value:02X})"
            raise MqttConnectError(host, port, client_id, reason, self._connack.value)

    # -- paho callbacks (network thread) -------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, props: object
    ) -> None:
        self._connack = reason
        if reason.is_failure and not self._connected.is_set():
            client.disconnect()  # no reconnection attempts with credentials the broker has refused
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        # QoS 0 messages still queued when the connection drops are discarded by paho without an on_publish.
        with self._lock:
            lost = [mid for mid, (_, qos) in self._pending.items() if qos == 0]
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
            self._record(entry[0], mid, reason)
        self._done()

    # -- internals -----------------------------------------------------------------------------------------

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
            if not self._pending:
                self._idle.notify_all()

    def _abort(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- public API ----------------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Messages handed to paho and not yet acknowledged."""
        return len(self._pending)

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
        mid = info.mid
        with self._lock:
            self.published += 1
            if mid in self._early:
                self._record(topic, mid, self._early.pop(mid))
                finished = True
            else:
                self._pending[mid] = (topic, qos)
                self.peak_backlog = max(self.peak_backlog, len(self._pending))
                finished = False
        if finished:
            self._done()
        return mid

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every published message is acknowledged; False if ``timeout`` seconds pass first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout`` seconds), disconnect and stop the network thread."""
        self.flush(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DeviceFleet:
    """One :class:`MqttPublisher` per device, logged in as that device; routes each :class:`Outgoing` to it.

    ``credentials`` maps device ids to passwords (the username is the device id). For a broker without
    authentication pass ``devices`` instead. A fleet is callable, so it can be the ``publish_fn`` of
    :func:`sensors.simulator.run`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Mapping[str, str] | None = None,
        devices: Iterable[str] | None = None,
        max_backlog: int = 1000,
        client_id_prefix: str = "",
    ) -> None:
        names = list(credentials) if credentials is not None else list(devices or [])
        if not names:
            raise ValueError("a fleet needs credentials or devices")
        self.publishers: dict[str, MqttPublisher] = {}
        try:
            for device_id in names:
                password = credentials.get(device_id) if credentials is not None else None
                self.publishers[device_id] = MqttPublisher(
                    host,
                    port,
                    client_id=f"{client_id_prefix}{device_id}",
                    username=device_id if credentials is not None else None,
                    password=password,
                    max_backlog=max_backlog,
                )
        except BaseException:
            self.close(timeout=0)
            raise

    def __getitem__(self, device_id: str) -> MqttPublisher:
        return self.publishers[device_id]

    def publish(self, out: Outgoing, qos: int = 1) -> int:
        """Publish one simulated message on its device's own connection."""
        return self.publishers[out.device_id].publish(out.topic, out.payload, qos)

    __call__ = publish

    @property
    def refused(self) -> list[Refusal]:
        """Refusals of every device's connection."""
        return [r for p in self.publishers.values() for r in p.refused]

    @property
    def refused_count(self) -> int:
        """Number of refusals of every device's connection."""
        return sum(p.refused_count for p in self.publishers.values())

    @property
    def published(self) -> int:
        """Messages published by all devices."""
        return sum(p.published for p in self.publishers.values())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every device's messages are acknowledged (``timeout`` applies to each device)."""
        return all([p.flush(timeout) for p in self.publishers.values()])

    def close(self, timeout: float = 10.0) -> None:
        """Flush and disconnect every device."""
        for publisher in self.publishers.values():
            publisher.close(timeout)

    def __enter__(self) -> DeviceFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
