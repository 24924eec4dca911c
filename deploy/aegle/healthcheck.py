#!/opt/aegle/bin/python
"""Container health check of the Aegle image: what "healthy" means depends on the command the container runs.

``serve``: ``GET /healthz`` answers 200 (liveness; readiness is ``/readyz``). ``ingest`` with ``--metrics-port``:
its metrics answer. ``edge``: its DICOM port accepts a connection. The command is read from PID 1's argv (tini's,
which holds the ``aegle`` command line).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path


def option(argv: list[str], name: str, env: str, default: str | None) -> str | None:
    """``--name VALUE`` / ``--name=VALUE`` from argv, else the environment variable ``env``, else ``default``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return os.environ.get(env, default)


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200 within 4 s."""
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return response.status == 200
    except OSError:
        return False


def port_open(host: str, port: int) -> bool:
    """True when ``host:port`` accepts a TCP connection within 4 s."""
    try:
        with socket.create_connection((host, port), timeout=4):
            return True
    except OSError:
        return False


def loopback(host: str | None) -> str:
    """Where to reach a server listening on ``host`` from inside the container."""
    return "127.0.0.1" if host in (None, "", "0.0.0.0", "::") else str(host)


def main() -> int:
    """0 when the command PID 1 runs is healthy, 1 otherwise."""
    argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    command = next((a for a in argv if a in ("serve", "ingest", "edge")), None)
    if command == "serve":
        host = loopback(option(argv, "--host", "AEGLE_API__HOST", None))
        port = option(argv, "--port", "AEGLE_API__PORT", "8400")
        return 0 if http_ok(f"http://{host}:{port}/healthz") else 1
    if command == "ingest":
        port = option(argv, "--metrics-port", "AEGLE_INGEST__METRICS_PORT", None)
        return 0 if port is None or http_ok(f"http://127.0.0.1:{port}/metrics") else 1
    if command == "edge":
        host = loopback(option(argv, "--dicom-host", "AEGLE_EDGE__DICOM_HOST", None))
        port = option(argv, "--dicom-port", "AEGLE_EDGE__DICOM_PORT", "11112")
        return 0 if port_open(host, int(str(port))) else 1
    return 0  # one-off commands (token, status, models): nothing long-running to check


if __name__ == "__main__":
    sys.exit(main())
