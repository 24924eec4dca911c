"""Real Mosquitto, VictoriaMetrics and Orthanc processes on loopback, for the demo, the tests and the benchmarks.

Each service binds 127.0.0.1 on a free port, keeps its files in a directory it is given, and is stopped by
:meth:`LocalService.stop` (or by leaving its ``with`` block). Production deployments run the same daemons from
``deploy/`` and ``k8s/``; the broker settings here are the ones documented there. Orthanc cannot be told to bind
loopback only, so it runs only inside a network namespace whose one interface is loopback (see
:func:`loopback_only_network`).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from core import Account, accounts

if TYPE_CHECKING:
    from core import MqttSettings

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0, auth: tuple[str, str] | None = None) -> bool:
    """True if ``url`` answers 200 now (readiness checks of local services and workers); ``auth``: basic auth."""
    try:
        return httpx.get(url, timeout=timeout, auth=auth).status_code == 200
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
    """A Mosquitto broker with Aegle's policy (``mosquitto-policy.conf``) and its accounts.

    Logins and topic grants are Mosquitto's dynamic-security plugin, configured from the accounts registered here
    (:mod:`core.accounts` says what each may publish and subscribe to; ``users`` maps usernames to passwords).
    The plugin, not ``acl_file``, because Mosquitto 2.0's ``acl_file`` grants every SUBSCRIBE (see
    :mod:`core.accounts`). Accounts registered while the broker runs are created through the plugin's control
    topic by the ``aegle-broker-admin`` account, which every authenticating broker has. ``service_users`` are
    service accounts registered at once. With ``anonymous=True`` (tests that need it only) no login is required
    and nothing is refused.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        service_users: Iterable[str] = (),
        anonymous: bool = False,
    ) -> None:
        super().__init__(workdir, port)
        self.accounts: dict[str, Account] = {}
        self.users: dict[str, str] = {}
        self.anonymous = anonymous
        self.add_users([*([] if anonymous else [accounts.BROKER_ADMIN]), *service_users])

    def add_accounts(self, new: Iterable[Account], passwords: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """Register accounts (passwords generated unless given) and return their passwords.

        A running broker gets them at once through the dynamic-security control topic; a username it already has
        is refused there (the broker's error is raised).
        """
        wanted = list(new)
        added = {a.username: (passwords or {}).get(a.username) or secrets.token_urlsafe(18) for a in wanted}
        if self.process is not None and self.process.poll() is None and not self.anonymous:
            self._control(accounts.mosquitto_dynsec_commands(wanted, added))
        self.accounts.update((a.username, a) for a in wanted)
        self.users.update(added)
        return added

    def add_users(self, users: dict[str, str | None] | list[str]) -> dict[str, str]:
        """Register service accounts by name (:data:`core.accounts.SERVICE_ACCOUNTS`); returns their passwords.

        Devices and edge nodes belong to a site: register them with :meth:`add_accounts`.
        """
        wanted = dict.fromkeys(users) if isinstance(users, list) else users
        return self.add_accounts([accounts.service(name) for name in wanted], wanted)

    def add_user(self, username: str, password: str | None = None) -> str:
        """Register one service account; returns its password."""
        return self.add_users({username: password})[username]

    def mqtt_settings(self, user: str | None = None) -> MqttSettings:
        """Settings that log in to this broker as ``user`` (one of :attr:`users`); None: no login (anonymous)."""
        from core import MqttSettings

        return MqttSettings(host=LOOPBACK, port=self.port, username=user, password=self.users[user] if user else None)

    def _control(self, commands: list[dict[str, object]], timeout: float = 10.0) -> None:
        """Send dynamic-security commands as the broker admin; raise if the broker refuses any of them."""
        from core import connect, disconnect, new_client, subscribe

        answers: queue.Queue[bytes] = queue.Queue()
        cfg = self.mqtt_settings(accounts.BROKER_ADMIN)
        client = new_client(cfg, f"{accounts.BROKER_ADMIN}-{time.time_ns()}")
        client.on_message = lambda _c, _u, message: answers.put(message.payload)
        connect(client, cfg, timeout)
        try:
            codes = subscribe(client, accounts.DYNSEC_RESPONSE, timeout=timeout)
            if codes[0].is_failure:
                raise RuntimeError(f"the broker admin may not subscribe to {accounts.DYNSEC_RESPONSE}: {codes}")
            client.publish(accounts.DYNSEC_CONTROL, json.dumps({"commands": commands}), qos=1)
            responses = json.loads(answers.get(timeout=timeout))["responses"]
        except (queue.Empty, TimeoutError):
            raise TimeoutError(f"no answer from the dynamic-security plugin in {timeout:g} s: {self.log_tail()}") \
                from None
        finally:
            disconnect(client)
        refused = [r for r in responses if "error" in r]
        if refused:
            raise RuntimeError(f"the broker refused to register accounts: {refused}")

    def restart(self, timeout: float = 20.0) -> Mosquitto:
        """A graceful restart on the same port: SIGTERM (the broker writes its persistence file on the way out),
        then start again; it restores sessions, queued messages and retained messages from that file."""
        self.stop()
        self.start(timeout)
        return self

    def kill(self) -> None:
        """A crash: SIGKILL and wait. :meth:`start` then restores what the last autosave wrote
        (``autosave_interval`` in ``core/mosquitto-policy.conf``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            accounts.MOSQUITTO_POLICY.read_text(),
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
                f"plugin {self.dynsec_plugin()}",
                f"plugin_opt_config_file {self.workdir / 'dynamic-security.json'}",
            ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def dynsec_plugin() -> Path:
        """Mosquitto's dynamic-security plugin (Debian's ``mosquitto`` package ships it in the multiarch lib dir)."""
        found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so")) or sorted(
            Path("/usr/lib").glob("mosquitto_dynamic_security.so")
        )
        if not found:
            raise FileNotFoundError("mosquitto_dynamic_security.so not found: install the Debian package 'mosquitto'")
        return found[0]

    def command(self) -> Sequence[str]:
        binary = require("mosquitto", "mosquitto")
        if not self.anonymous:
            # Written from the registered accounts at every start; the plugin rewrites it as accounts are added.
            config = self.workdir / "dynamic-security.json"
            tmp = config.with_suffix(".tmp")
            tmp.write_text(json.dumps(accounts.mosquitto_dynsec_config(self.accounts.values(), self.users), indent=1))
            tmp.chmod(0o600)  # password hashes
            tmp.replace(config)
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


ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian orthanc-dicomweb
ORTHANC_POSTGRESQL_INDEX_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")  # orthanc-postgresql


def network_interfaces() -> list[str]:
    """Names of the network interfaces of this process's network namespace.

    Read from ``/proc/net/dev``, which follows the namespace; ``/sys/class/net`` does not (sysfs is not
    remounted by ``unshare -n``) and would still list the host's interfaces.
    """
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]  # two header lines
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


def loopback_only_network() -> bool:
    """True inside a network namespace whose only interface is loopback (``unshare -n``)."""
    return network_interfaces() == ["lo"]


class Orthanc(LocalService):
    """Orthanc with its DICOMweb plugin (root ``/dicom-web/``), HTTP authentication on and no remote peers.

    ``users`` maps HTTP usernames to passwords (one user ``aegle`` with a generated password if not given).
    ``stable_age`` is Orthanc's ``StableAge``: seconds without a new instance before a series counts as stable
    (Orthanc's default is 60). Orthanc listens on every interface and cannot be restricted to loopback, so
    :meth:`start` refuses unless this process runs in a loopback-only network namespace.

    ``index_url`` (a libpq connection URI, e.g. ``postgresql:///orthanc?host=/var/run/postgresql&user=orthanc``)
    keeps the index in PostgreSQL through Debian's ``orthanc-postgresql`` index plugin instead of a SQLite file,
    with the plugin's database lock off, so several Orthanc processes can share it; they must then share
    ``storage`` too, the directory of the DICOM files (default: ``workdir/storage``).
    """

    name = "orthanc"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        dicom_port: int | None = None,
        users: dict[str, str] | None = None,
        stable_age: int = 60,
        index_url: str | None = None,
        storage: Path | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.index_url = index_url
        self.storage = Path(storage).resolve() if storage is not None else self.workdir / "storage"
        self.dicom_port = dicom_port or free_port()
        self.users = dict(users) if users else {"aegle": secrets.token_urlsafe(18)}
        if stable_age < 1:
            raise ValueError(f"stable_age must be at least 1 s (Orthanc counts whole seconds), got {stable_age}")
        self.stable_age = stable_age

    @property
    def url(self) -> str:
        """Orthanc's REST API."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        """Credentials of the first registered user, for clients and readiness checks."""
        return next(iter(self.users.items()))

    def config(self) -> dict[str, object]:
        """The Orthanc configuration this server runs with."""
        plugins = {ORTHANC_DICOMWEB_PLUGIN: "orthanc-dicomweb"}
        if self.index_url is not None:
            plugins[ORTHANC_POSTGRESQL_INDEX_PLUGIN] = "orthanc-postgresql"
        for plugin, package in plugins.items():
            if not plugin.is_file():
                raise FileNotFoundError(f"{plugin} not found: install the Debian package '{package}'")
        config: dict[str, object] = {
            "Name": "aegle-pacs",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),  # the SQLite index (unused with index_url)
            "Plugins": [str(p) for p in plugins],
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            # Only clients on loopback; with the namespace there is nothing else to reach it anyway.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": self.users,
            "DicomServerEnabled": True,
            "DicomAet": "AEGLE-PACS",
            "DicomPort": self.dicom_port,
            # No DICOM or HTTP peers: Orthanc sends nothing anywhere, and only C-ECHO is accepted from unknown
            # modalities (no C-STORE from an AET that is not configured).
            "DicomModalities": {},
            "OrthancPeers": {},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "DeidentifyLogs": True,
            "StableAge": self.stable_age,
            "HttpThreadsCount": 8,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Servers": {}},
        }
        if self.index_url is not None:
            # The plugin's "Lock" would let only one Orthanc use the database; Orthanc ≥ 1.9.2 with plugin 4.0
            # retries transactions that conflict between processes.
            config["PostgreSQL"] = {
                "EnableIndex": True, "EnableStorage": False, "ConnectionUri": self.index_url, "Lock": False,
                "MaximumConnectionRetries": 10, "ConnectionRetryInterval": 1,
            }  # fmt: skip
        return config

    def command(self) -> Sequence[str]:
        binary = require("Orthanc", "orthanc")
        conf = self.workdir / "orthanc.json"
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config(), indent=2))
        tmp.chmod(0o600)  # holds the registered users' passwords
        tmp.replace(conf)
        return [binary, str(conf)]

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Start Orthanc (only inside a loopback-only network namespace) and wait for its authenticated API."""
        if not loopback_only_network():
            raise RuntimeError(
                "refusing to start Orthanc: it listens on every network interface and this process sees "
                f"{', '.join(network_interfaces())}. Run it inside a network namespace whose only interface is "
                "loopback, e.g. unshare -n sh -c 'ip link set lo up && scripts/test ...' (scripts/test does this "
                "for the test suite)."
            )
        super().start(timeout)
        return self

    def ready(self) -> bool:
        return http_ok(f"{self.url}/system", timeout=0.5, auth=self.auth)
