"""One edge node process: the C-STORE SCP and the MQTT forwarder sharing one durable outbox."""

from __future__ import annotations

import logging
import signal
import threading

from core import EdgeSettings, MqttSettings
from edge.forwarder import Forwarder
from edge.outbox import Outbox
from edge.scp import StorageSCP

log = logging.getLogger("aegle.edge")


class EdgeNode:
    """SCP + forwarder; :meth:`start` runs both in background threads, :meth:`stop` stops both."""

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

    def start(self) -> EdgeNode:
        """Start forwarding what the outbox holds, then accept associations."""
        self.forwarder.start()
        self.scp.start()
        return self

    def stop(self) -> None:
        """Stop accepting, then stop forwarding (what is left stays in the outbox)."""
        self.scp.stop()
        self.forwarder.stop()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.info("edge node running; %d instances in the outbox", len(self.outbox))
        done.wait()
        self.stop()
