"""``python -m edge`` (and ``aegle edge``): run an edge node.

The broker connection comes from the Aegle settings (``AEGLE_MQTT__HOST``, ``AEGLE_MQTT__USERNAME`` = the edge
id, ``AEGLE_MQTT__PASSWORD_FILE``, …); the edge node's own settings from ``AEGLE_EDGE__*`` (or the config file),
and the flags override them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from core import EdgeSettings, configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The edge node's flags (shared by ``python -m edge`` and ``aegle edge``); unset flags keep the settings."""
    parser.add_argument("--site", default=None)
    parser.add_argument("--edge-id", default=None, help="default: the MQTT username (they must be equal)")
    parser.add_argument("--outbox", dest="outbox_path", type=Path, default=None, help="durable outbox directory")
    parser.add_argument("--max-outbox-bytes", type=int, default=None)
    parser.add_argument("--ae-title", default=None, help="called AE title the SCP answers to")
    parser.add_argument("--dicom-host", default=None, help="address the SCP listens on")
    parser.add_argument("--dicom-port", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None, help="bytes per MQTT chunk")
    parser.add_argument("--window", type=int, default=None, help="chunks awaiting PUBACK at most")
    parser.add_argument("--status-interval", dest="status_interval_s", type=float, default=None,
                        help="seconds between the node's retained status messages")


def settings_from(args: argparse.Namespace, base: EdgeSettings) -> EdgeSettings:
    """``base`` (from ``AEGLE_EDGE__*`` / the config file) with the flags that were given, validated."""
    given = {name: getattr(args, name) for name in EdgeSettings.model_fields if getattr(args, name, None) is not None}
    return EdgeSettings.model_validate({**base.model_dump(), **given})


def main(argv: Sequence[str] | None = None) -> int:
    """Run an edge node until SIGTERM."""
    from core import Settings
    from edge.node import EdgeNode

    parser = argparse.ArgumentParser(prog="python -m edge", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        node = EdgeNode(settings_from(args, settings.edge), settings.mqtt)
    except ValueError as exc:
        parser.error(str(exc))
    node.run_forever()
    return 0
