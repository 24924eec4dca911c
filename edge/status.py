"""The edge node's status on the broker: a retained message at ``aegle/v1/{site}/status/edge/{edge_id}``.

While the node runs, :class:`StatusPublisher` publishes what ``status()`` returns (outbox depth and oldest-item age,
counts, the node's clock) every ``interval_s`` seconds and at every (re)connection, at QoS 1 with the retain flag,
so a subscriber that connects later gets the latest one at once. :meth:`StatusPublisher.stop` publishes the final
status marked ``offline`` (cause ``stopped``); the connection's last will, sent by the broker when the node
disappears without a DISCONNECT (crash, kill -9, network loss), is the same topic marked ``offline`` (cause
``connection lost``). Statuses hold counts and times only, never patient data or UIDs. The publisher has its own
connection: the forwarder's counts its acknowledgements as the chunks it sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core import MqttSettings, broker_confirmed, connect_nowait, disconnect, dumps_compact, new_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("aegle.edge.status")
SCHEMA = "aegle.edge-status/1"


class StatusPublisher:
    """Publish ``status()`` retained on ``topic`` every ``interval_s`` on its own connection, with ``will`` (marked
    offline) as last will; :meth:`stop` publishes the final status marked offline."""

    def __init__(
        self,
        mqtt: MqttSettings,
        client_id: str,
        topic: str,
        interval_s: float,
        status: Callable[[], dict[str, Any]],
        will: dict[str, Any],
    ) -> None:
        self.mqtt, self.topic, self.interval_s, self.status = mqtt, topic, interval_s, status
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = new_client(mqtt, client_id)
        offline = dumps_compact(will | {"state": "offline", "cause": "connection lost"})
        self._client.will_set(topic, offline, qos=1, retain=True)
        self._client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else self._wake.set()

    def start(self) -> StatusPublisher:
        """Connect (retrying in the background while the broker is down) and publish until :meth:`stop`."""
        connect_nowait(self._client, self.mqtt, retry_unreachable=True)
        self._thread = threading.Thread(target=self._run, name="aegle-edge-status", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the final status marked offline (cause ``stopped``), wait up to ``timeout`` for the broker's
        acknowledgement, disconnect."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        info = self._publish({"state": "offline", "cause": "stopped"})
        if info is not None and not broker_confirmed(info, timeout):
            log.warning("the broker did not acknowledge the offline status within %.0f s", timeout)
        disconnect(self._client)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._publish({"state": "online"})
            self._wake.wait(self.interval_s)

    def _publish(self, state: dict[str, Any]) -> mqtt.MQTTMessageInfo | None:
        """Publish the current status with ``state``; None (nothing queued) while not connected."""
        if not self._client.is_connected():
            return None
        try:
            payload = dumps_compact(self.status() | state)
        except OSError as exc:  # the outbox could not be read: say so rather than stop reporting
            log.error("status not published: %s", exc)
            return None
        return self._client.publish(self.topic, payload, qos=1, retain=True)
