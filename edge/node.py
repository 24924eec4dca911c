"""One edge node process: the C-STORE SCP and the MQTT forwarder sharing one durable outbox, and the node's
retained status on the broker (``edge.status``)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from core import EdgeSettings, MqttSettings, topics
from edge.forwarder import Forwarder
from edge.outbox import Outbox
from edge.scp import StorageSCP
from edge.status import SCHEMA, StatusPublisher

log = logging.getLogger("aegle.edge")


class EdgeNode:
    """SCP + forwarder + status; :meth:`start` runs them in background threads, :meth:`stop` stops them."""

    def __init__(self, edge: EdgeSettings, mqtt: MqttSettings) -> None:
        edge_id = edge.edge_id or mqtt.username
        if edge_id is None:
            raise ValueError("no edge id: set the edge id or the MQTT username (they must be equal)")
        if mqtt.username is not None and edge_id != mqtt.username:
            raise ValueError(
                f"edge id {edge_id!r} differs from the MQTT username {mqtt.username!r}: the broker lets an edge "
                "node publish only under its own username"
            )
        self.outbox = Outbox(edge.outbox_path, edge.site, edge_id, edge.chunk_size, edge.max_outbox_bytes)
        self.forwarder = Forwarder(self.outbox, mqtt, window=edge.window)
        self.scp = StorageSCP(
            self.outbox, edge.ae_title, edge.dicom_host, edge.dicom_port, on_stored=self.forwarder.notify
        )
        self.site, self.edge_id, self.status_interval_s = edge.site, edge_id, edge.status_interval_s
        self.status_publisher = StatusPublisher(
            mqtt, f"aegle-edge-{edge_id}-status", topics.edge_status(edge.site, edge_id), edge.status_interval_s,
            self.status, {"schema": SCHEMA, "site": edge.site, "edge_id": edge_id},
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        """The node's status now: outbox depth, bytes and oldest item's age by kind of item, counts of the SCP
        (stored, unusable, out of resources) and of the forwarder (forwarded, retried, refused), its last error
        and this node's clock."""
        now_ns = time.time_ns()
        depth, oldest_ns = self.outbox.depth()
        error = self.forwarder.last_error
        return {
            "schema": SCHEMA, "site": self.site, "edge_id": self.edge_id,
            "at": datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat().replace("+00:00", "Z"),
            "interval_s": self.status_interval_s,
            "queue": {"dicom": {"depth": depth, "bytes": self.outbox.used_bytes,
                                "oldest_age_s": None if oldest_ns is None else round((now_ns - oldest_ns) / 1e9, 3)}},
            "counts": {"stored": self.scp.stored, "unusable": self.scp.unusable, "out_of_resources": self.scp.refused,
                       "forwarded": self.forwarder.forwarded, "retried": self.forwarder.retried,
                       "refused": self.forwarder.refused},
            "last_error": None if error is None else error[:300],
        }  # fmt: skip

    def start(self) -> EdgeNode:
        """Start forwarding what the outbox holds, then accept associations and publish the status."""
        self.forwarder.start()
        self.scp.start()
        self.status_publisher.start()
        return self

    def stop(self) -> None:
        """Stop accepting, then stop forwarding (what is left stays in the outbox), then publish the final status
        marked offline."""
        self.scp.stop()
        self.forwarder.stop()
        self.status_publisher.stop()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.info("edge node running; %d instances in the outbox", len(self.outbox))
        done.wait()
        self.stop()
