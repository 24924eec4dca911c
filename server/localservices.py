"""Real Mosquitto and VictoriaMetrics processes on loopback, for the demo, the tests and the benchmarks.

Each service binds 127.0.0.1 on a free port, keeps its files in a directory it is given, and is stopped by
:meth:`LocalService.stop` (or by leaving its ``with`` block). Production deployments run the same daemons from
``deploy/`` and ``k8s/``; the broker settings here are the ones documented there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from sensors import topics

LOOPBACK = "127.0.0.1"
POLICY = Path(__file__).with_name("mosquitto-policy.conf")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True if ``url`` answers 200 now (readiness checks of local services and workers)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


class LocalService(ABC):
    """A daemon started as a child process; subclasses say how to start it and when it is ready."""

    name = "service"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    @abstractmethod
    def command(self) -> Sequence[str]:
        """The argv that starts the daemon."""

    def ready(self) -> bool:
        """True once the daemon serves requests."""
        return _port_open(self.port)

    def start(self, timeout: float = 20.0) -> LocalService:
        """Start the daemon and wait until it is ready; raise with its log if it dies or times out."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.command()), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the daemon's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> LocalService:
        return self.start() if self.process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def require(binary: str, package: str) -> str:
    """Path of a daemon binary, or an error naming the Debian package that provides it."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise FileNotFoundError(f"{binary} not found: install the Debian package '{package}'")
    return path


class Mosquitto(LocalService):
    """A Mosquitto broker with Aegle's policy (``mosquitto-policy.conf``), a password file and the topic ACL.

    ``users`` maps MQTT usernames to passwords; with ``anonymous=True`` (tests that need it only) no login
    is required and no ACL is applied.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        users: dict[str, str] | None = None,
        service_users: tuple[str, ...] = ("aegle-ingest",),
        anonymous: bool = False,
    ) -> None:
        super().__init__(workdir, port)
        self.users = dict(users or {})
        self.service_users = service_users
        self.anonymous = anonymous

    def add_user(self, username: str, password: str | None = None) -> str:
        """Register a user; returns the password, generated if not given. Live brokers reload (SIGHUP)."""
        return self.add_users({username: password})[username]

    def add_users(self, users: dict[str, str | None] | list[str]) -> dict[str, str]:
        """Register several users at once (one reload when the broker is running); returns their passwords."""
        wanted = dict.fromkeys(users) if isinstance(users, list) else users
        added = {name: password or secrets.token_urlsafe(18) for name, password in wanted.items()}
        self.users.update(added)
        if self.process is not None and self.process.poll() is None:
            self._write_passwd()
            self.process.send_signal(signal.SIGHUP)
            self._wait_login(*next(iter(reversed(added.items()))))
        return added

    def _write_passwd(self) -> None:
        passwd = self.workdir / "passwd"
        lines = []
        for user, password in self.users.items():
            done = subprocess.run(
                [require("mosquitto_passwd", "mosquitto"), "-b", "-c", "/dev/stdout", user, password],
                check=True, capture_output=True, text=True,
            )
            lines.append(done.stdout.strip())
        tmp = passwd.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(passwd)

    def _wait_login(self, username: str, password: str, timeout: float = 10.0) -> None:
        """Wait until the reloaded password file accepts ``username``."""
        import paho.mqtt.client as mqtt

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.username_pw_set(username, password)
            ok = threading.Event()
            client.on_connect = lambda _c, _u, _f, rc, _p, ok=ok: rc.is_failure or ok.set()
            try:
                client.connect(LOOPBACK, self.port)
                client.loop_start()
                if ok.wait(1.0):
                    return
            finally:
                client.disconnect()
                client.loop_stop()
            time.sleep(0.05)
        raise TimeoutError(f"mosquitto did not accept the new user {username!r} after reload")

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            POLICY.read_text(),
            f"listener {self.port} {LOOPBACK}",
            "log_dest stderr",
            f"persistence_location {self.workdir}/",
        ]
        if os.geteuid() == 0:
            # Files live in a private directory of the caller; a broker started by root stays root to read them.
            lines.append("user root")
        if self.anonymous:
            lines.append("allow_anonymous true")
        else:
            lines += [
                "allow_anonymous false",
                f"password_file {self.workdir / 'passwd'}",
                f"acl_file {self.workdir / 'acl'}",
            ]
        return "\n".join(lines) + "\n"

    def command(self) -> Sequence[str]:
        binary = require("mosquitto", "mosquitto")
        if not self.anonymous:
            self._write_passwd()
            (self.workdir / "acl").write_text(topics.mosquitto_acl(self.service_users))
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        return [binary, "-c", str(conf)]


class VictoriaMetrics(LocalService):
    """VictoriaMetrics single-node: accepts the InfluxDB ``/api/v2/write`` protocol, read through its HTTP API.

    ``-dedup.minScrapeInterval=1ms`` makes a re-written point (same series, same millisecond) count once, which
    is what makes redelivered messages idempotent on this backend, as they are on InfluxDB.
    """

    name = "victoria-metrics"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> Sequence[str]:
        return [
            require("victoria-metrics", "victoria-metrics"),
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-search.latencyOffset=0s",
            "-dedup.minScrapeInterval=1ms",
            # The default retention (one month) silently drops older points while answering 204.
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
        ]

    def ready(self) -> bool:
        return http_ok(f"{self.url}/health", timeout=0.5)
