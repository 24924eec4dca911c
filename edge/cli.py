"""``python -m edge`` (and ``aegle edge``): run an edge node.

The broker connection comes from the Aegle settings (``AEGLE_MQTT__HOST``, ``AEGLE_MQTT__USERNAME`` = the edge
id, ``AEGLE_MQTT__PASSWORD_FILE``, …); the edge node's own settings from ``AEGLE_EDGE__*`` (or the config file),
and the flags override them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from server.settings import EdgeSettings


def add_arguments(parser: argparse.ArgumentParser, defaults: EdgeSettings) -> None:
    """The edge node's flags (shared by ``python -m edge`` and ``aegle edge``), defaulting to ``defaults``."""
    parser.add_argument("--site", default=defaults.site)
    parser.add_argument("--edge-id", default=defaults.edge_id, help="default: the MQTT username (they must be equal)")
    parser.add_argument("--outbox", type=Path, default=defaults.outbox_path, help="durable outbox directory")
    parser.add_argument("--max-outbox-bytes", type=int, default=defaults.max_outbox_bytes)
    parser.add_argument("--ae-title", default=defaults.ae_title, help="called AE title the SCP answers to")
    parser.add_argument("--dicom-host", default=defaults.dicom_host, help="address the SCP listens on")
    parser.add_argument("--dicom-port", type=int, default=defaults.dicom_port)
    parser.add_argument("--chunk-size", type=int, default=defaults.chunk_size, help="bytes per MQTT chunk")
    parser.add_argument("--window", type=int, default=defaults.window, help="chunks awaiting PUBACK at most")


def settings_from(args: argparse.Namespace) -> EdgeSettings:
    """EdgeSettings from parsed flags (validated)."""
    return EdgeSettings(
        site=args.site, edge_id=args.edge_id, outbox_path=args.outbox, max_outbox_bytes=args.max_outbox_bytes,
        ae_title=args.ae_title, dicom_host=args.dicom_host, dicom_port=args.dicom_port,
        chunk_size=args.chunk_size, window=args.window,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run an edge node until SIGTERM."""
    from edge.node import EdgeNode
    from server.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m edge", description=__doc__.splitlines()[0])
    add_arguments(parser, settings.edge)
    args = parser.parse_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        node = EdgeNode(settings_from(args), settings.mqtt)
    except ValueError as exc:
        parser.error(str(exc))
    node.run_forever()
    return 0
