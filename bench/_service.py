"""What the service benchmarks share: the real ``aegle serve`` process, its tokens and metrics, real MR slices,
process memory and CPU from ``/proc``, percentiles, and re-running a benchmark in a loopback-only namespace.

The service runs as a child process (not in the benchmark's process) so that its resident memory and CPU time
are its own: the clients, the study builder and their libraries are not counted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aegle import LOOPBACK, LocalService, Orthanc, http_ok, loopback_only_network
from bench.ingest import cpu_seconds

#: Set in the environment of a benchmark that re-executed itself under ``unshare -n``.
NETNS_ENV = "AEGLE_BENCH_NETNS"
#: The pyradiomics 3.0.1 case used as real MR: T1 brain, 25 axial slices of 256 × 256 (0.78 mm, 6.5 mm apart).
BRAIN_MR = "pyradiomics:brain1"
SERVED_MODELS = ("enhancer-x2", "triage-classifier")
#: One scrape of the service's ``/metrics``: sample value by (sample name, labels).
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def run_isolated(module: str) -> str:
    """Make sure this process runs in a loopback-only network namespace; returns how, for the output.

    Orthanc binds every interface, so it may only run where loopback is the one interface. Outside such a
    namespace this re-executes ``python -m module`` with the same arguments under ``unshare -n`` (``-rn`` when
    not root) after ``ip link set lo up``; it does not return then.
    """
    if loopback_only_network():
        return "re-executed under unshare -n" if os.environ.get(NETNS_ENV) else "already in a loopback-only namespace"
    if os.environ.get(NETNS_ENV):
        raise RuntimeError("re-executed under unshare -n, but the namespace still has other interfaces")
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    argv = [*unshare, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, "-m", module, *sys.argv[1:]]
    print(f"{module}: re-executing in a loopback-only network namespace ({' '.join(unshare)})", file=sys.stderr,
          flush=True)  # fmt: skip
    os.execvpe(argv[0], argv, os.environ | {NETNS_ENV: "1"})
    raise AssertionError("unreachable")


class AegleService(LocalService):
    """``aegle serve`` on a free loopback port with its own tokens, audit log, vitals store and settings file.

    ``inference`` overrides ``[inference]`` settings (``max_batch``, ``max_wait_ms``, ``queue_max``, ``threads``,
    ``weights_dir``, ``cache_dir``…); ``pacs`` is the Orthanc the derived series go to. Settings reach the process
    through an ``AEGLE_CONFIG`` TOML file (mode 0600), so no secret appears on its command line. Tokens for the
    roles ``operator`` and ``device`` are created before the start and kept in :attr:`tokens`.
    """

    name = "aegle-serve"

    def __init__(self, workdir: Path, inference: dict[str, Any] | None = None, pacs: Orthanc | None = None) -> None:
        super().__init__(workdir)
        self.inference = {"cache_dir": "var/model-cache", **(inference or {})}
        self.pacs = pacs
        self.tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def settings_toml(self) -> str:
        """The service's settings file: its files in the working directory, the model cache in ``cache_dir``."""
        work = self.workdir
        sections: dict[str, dict[str, Any]] = {
            "api": {"tokens_path": work / "tokens.sqlite", "audit_path": work / "audit.sqlite",
                    "studies_path": work / "studies.sqlite", "token_secret_file": work / "token-secret"},
            "store": {"backend": "sqlite", "sqlite_path": work / "vitals.sqlite"},
            "dashboard": {"frames_path": work / "frames"},
            "inference": {k: Path(v).resolve() if k.endswith("_dir") else v for k, v in self.inference.items()},
        }  # fmt: skip
        if self.pacs is not None:
            user, password = self.pacs.auth
            secret = work / "pacs-password"
            secret.write_text(password)
            secret.chmod(0o600)
            sections["pacs"] = {"dicomweb_url": self.pacs.dicomweb_url, "username": user, "password_file": secret}
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            # JSON strings, numbers and booleans are valid TOML values.
            lines += [f"{key} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for key, v in values.items()]
        return "\n".join(lines) + "\n"

    def command(self) -> Sequence[str]:
        from core import ApiSettings
        from server import TokenStore

        config = self.workdir / "aegle.toml"
        config.write_text(self.settings_toml())
        config.chmod(0o600)
        if not self.tokens:
            store = TokenStore.from_settings(ApiSettings(tokens_path=self.workdir / "tokens.sqlite",
                                                         token_secret_file=self.workdir / "token-secret"))
            try:
                self.tokens = {role: store.create(f"bench-{role}", role) for role in ("operator", "device")}
            finally:
                store.close()
        # ``env`` execs the service in place: the child's pid is the service's (for /proc), and the settings
        # file path is the only thing on its command line.
        return ["env", f"AEGLE_CONFIG={config}", sys.executable, "-m", "aegle.cli", "serve", "--port", str(self.port)]

    def ready(self) -> bool:
        # uvicorn answers only after the lifespan start-up: the models are loaded (or recorded as missing) by then.
        return http_ok(f"{self.url}/healthz", timeout=1.0)

    def start(self, timeout: float = 300.0) -> AegleService:
        """Start and wait for the service (the first start exports the models to ONNX: allow minutes)."""
        super().start(timeout)
        return self

    def auth(self, role: str = "operator") -> dict[str, str]:
        """The Authorization header of the bench token for ``role``."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def models(self) -> dict[str, Any]:
        """``GET /api/v1/models``: the served models and the ones that failed to load (with the reason)."""
        answer = httpx.get(f"{self.url}/api/v1/models", headers=self.auth(), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def metrics(self) -> Scrape:
        """Every sample of ``GET /metrics`` by (name, labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        answer = httpx.get(f"{self.url}/metrics", headers=self.auth(), timeout=30)
        answer.raise_for_status()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(answer.text) for s in family.samples}  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None, "the service is not running"
        return self.process.pid

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now (``VmRSS``) and its peak so far (``VmHWM``), MiB."""
        return process_memory_mb(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time the service has used so far."""
        return cpu_seconds(self.pid)


def metric_delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much the samples called ``name`` whose labels include ``labels`` grew between two scrapes (summed)."""
    wanted = set(labels.items())

    def total(scrape: Scrape) -> float:
        return sum(v for (n, have), v in scrape.items() if n == name and wanted <= have)

    return total(after) - total(before)


def process_memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak resident set) of a process from ``/proc/<pid>/status``, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def missing_models(models: dict[str, Any]) -> dict[str, str]:
    """The missing models of a ``GET /api/v1/models`` answer (name → reason), and any expected one it does not
    list (reason: the engine's start-up error, if it failed)."""
    served = {m["name"] for m in models.get("models", [])}
    missing = dict(models.get("missing", {}))
    reason = models.get("engine_error") or "not served"
    missing.update({name: reason for name in SERVED_MODELS if name not in served and name not in missing})
    return missing


def brain_mr(*subjects: str) -> dict[str, tuple[np.ndarray, tuple[float, ...]]]:
    """Real T1 brain MR volumes of pyradiomics 3.0.1 (``pyradiomics:brain1``, ``…:brain2``): native 256 × 256
    axial slices as (z, 256, 256) uint16 stored values, with their (z, y, x) spacing in mm."""
    from gan import load_pyradiomics

    volumes = {v.subject: v for v in load_pyradiomics() if v.subject in subjects}
    out = {}
    for subject in subjects:
        volume = volumes.get(subject)
        if volume is None or volume.spacing is None or volume.pixels.shape[1:] != (256, 256):
            raise ValueError(f"{subject}: expected a volume of 256 × 256 slices with its spacing")
        out[subject] = np.clip(volume.pixels, 0, None).astype(np.uint16), volume.spacing
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation; with few values p95 lies near the maximum)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
