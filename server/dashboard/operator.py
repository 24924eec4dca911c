"""The operator view's data beyond ``/readyz``: edge nodes, ingest workers, dead letters, and the audit log for admins.

:class:`OperatorMonitor` is one small MQTT subscriber, started by the service when MQTT is configured. It keeps
the latest retained status of every edge node and ingest worker (``aegle/v1/+/status/+/+``), and counts the dead
letters (``aegle/v1/+/deadletter/+``) by reason with the last :data:`RECENT_DEADLETTERS` of them: reason, site,
the topic the rejected message came on and when — never the payload, its detail or its checksum (a vitals payload
holds patient values; a DICOM one, patient data). Dead letters published while the service is down are not seen
(the subscription is not persistent); statuses are retained, so each is there again at once.

:func:`view` is what the operator stream adds to the readiness checks: each edge node (queue depth and age, last
seen, flagged stale after :data:`STALE_INTERVALS` missed statuses or offline), the ingest rate and workers, and
the dead letters. :func:`recent_audit` is the newest audit-log entries, shown only to the roles that may read the
audit log through the API (``GET /api/v1/admin/audit``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter, deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core import Settings, connect_nowait, disconnect, new_client, topics
from server.api.routes.admin import ADMIN_ROLES

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from server.api.deps import ServiceState

log = logging.getLogger("aegle.dashboard.operator")
RECENT_DEADLETTERS = 50
RECENT_AUDIT = 50
#: A status not renewed for this many of its own intervals is flagged stale.
STALE_INTERVALS = 3
MAX_STATUS_BYTES = 16 * 1024
#: The fields of a status message the view keeps, by kind (anything else is dropped).
STATUS_FIELDS = {
    "edge": ("state", "cause", "at", "interval_s", "queue", "counts", "last_error"),
    "ingest": ("state", "cause", "at", "interval_s", "received", "stored", "deadlettered", "rate_per_s",
               "rate_window_s", "spool_pending"),
}  # fmt: skip
#: Who may see the audit log on the operator view: who may read it through the API.
AUDIT_ROLES = ADMIN_ROLES


def _ms(value: Any) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 time with an offset, else None."""
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(at.timestamp() * 1000) if at.tzinfo is not None else None


class OperatorMonitor:
    """The latest edge and ingest statuses and the recent dead letters, from the broker of ``settings.mqtt``."""

    def __init__(self, settings: Settings, keep: int = RECENT_DEADLETTERS) -> None:
        self.settings = settings
        self.connected = False
        self.error: str | None = None
        self.started_ms = int(time.time() * 1000)
        self._lock = threading.Lock()
        self._statuses: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, site, id) → fields + seen_ms
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._by_reason: Counter[str] = Counter()
        self._client = new_client(settings.mqtt, f"aegle-operator-{uuid.uuid4().hex[:12]}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> OperatorMonitor:
        """Connect in the background (retrying while the broker is down) and subscribe at every connection."""
        connect_nowait(self._client, self.settings.mqtt, retry_unreachable=True)
        return self

    def stop(self) -> None:
        """Disconnect."""
        disconnect(self._client)

    # --- paho callbacks (network thread) ----------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.error = f"the broker refused the connection: {reason}"
            return
        self.connected, self.error = True, None
        client.subscribe([(topics.status_filter(), 1), (topics.deadletter_filter(), 1)])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        self.error = f"disconnected from the broker: {reason}"

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.error = f"the broker refused the status or dead-letter subscription: {', '.join(refused)}"
            log.error("%s", self.error)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now_ms = int(time.time() * 1000)
        try:
            site, kind, ident = topics.parse_status_topic(message.topic)
        except ValueError:
            self._dead_letter(message.topic, message.payload, now_ms)
            return
        if not message.payload:  # a retained status cleared
            with self._lock:
                self._statuses.pop((kind, site, ident), None)
            return
        fields = self._object(message.payload)
        if fields is None:
            log.warning("ignored a %s status that is not a JSON object", kind)
            return
        kept = {k: fields[k] for k in STATUS_FIELDS[kind] if k in fields}
        with self._lock:
            self._statuses[(kind, site, ident)] = kept | {"seen_ms": now_ms}

    def _dead_letter(self, topic: str, payload: bytes, now_ms: int) -> None:
        """Count a dead letter and keep its reason, site, original topic and time (nothing of its payload)."""
        try:
            site, reason = topics.parse_deadletter_topic(topic)
        except ValueError:
            return
        letter = self._object(payload) or {}
        source = letter.get("topic")
        at = _ms(letter.get("received_at"))
        record = {"at_ms": now_ms if at is None else at, "reason": reason[:64], "site": site[:64],
                  "topic": source if isinstance(source, str) and len(source) <= 256 else None}  # fmt: skip
        with self._lock:
            self._by_reason[record["reason"]] += 1
            self._recent.append(record)

    @staticmethod
    def _object(payload: bytes) -> dict[str, Any] | None:
        if len(payload) > MAX_STATUS_BYTES:
            return None
        try:
            value = json.loads(payload)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # --- the view ---------------------------------------------------------------------------------------------

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """Edge nodes, ingest workers and dead letters as the operator view shows them at ``now_ms``."""
        with self._lock:
            statuses = sorted(self._statuses.items())
            recent = list(self._recent)[::-1]
            by_reason = dict(self._by_reason.most_common())
        edges, workers = [], []
        for (kind, site, ident), fields in statuses:
            at_ms = _ms(fields.get("at"))
            last_seen = fields["seen_ms"] if at_ms is None else min(at_ms, fields["seen_ms"])
            interval = fields.get("interval_s")
            interval = float(interval) if isinstance(interval, int | float) and interval > 0 else 5.0
            age_s = max(0.0, (now_ms - last_seen) / 1000)
            if fields.get("state") == "offline":
                state = "offline"
            else:
                state = "stale" if age_s > STALE_INTERVALS * interval else "online"
            shown = fields | {"site": site, "state": state, "last_seen_ms": last_seen, "age_s": round(age_s, 1)}
            if kind == "edge":
                edges.append(shown | {"edge_id": ident})
            else:
                workers.append(shown | {"worker_id": ident})
        rate = sum(w["rate_per_s"] for w in workers
                   if w["state"] == "online" and isinstance(w.get("rate_per_s"), int | float))  # fmt: skip
        return {
            "mqtt": {"connected": self.connected, "error": self.error},
            "edges": edges,
            "ingest": {"rate_per_s": round(rate, 3), "workers": workers},
            "deadletters": {"since_ms": self.started_ms, "total": sum(by_reason.values()), "by_reason": by_reason,
                            "recent": recent},
        }  # fmt: skip


def attach(st: ServiceState, monitor: OperatorMonitor | None) -> None:
    """Make ``monitor`` the one the operator view of ``st`` shows (None: none, MQTT is not configured)."""
    st.operator_monitor = monitor


def view(st: ServiceState, now_ms: int) -> dict[str, Any]:
    """What the operator view shows of the monitor attached to ``st``; ``mqtt`` None when there is none."""
    monitor = st.operator_monitor
    if monitor is None:
        return {"mqtt": None, "edges": [], "ingest": None, "deadletters": None}
    return monitor.snapshot(now_ms)
