"""deploy/: container images, the single-box stack, its secrets; and (opt-in) the live images.

Static checks run everywhere (a second or two): every Containerfile (the GPU one too, which cannot be built here)
takes its base as a build argument, pins what it installs, runs as a numeric non-root user with a health check,
and copies nothing secret; the requirements are pinned with the CPU torch; the stack YAML has the services a
ward runs, each read-only and non-root, secrets only as mounted files; the shell scripts parse and stop on errors;
``deploy/stack/make_secrets.py`` writes working broker accounts (the password files verify against the plugin's
PBKDF2 hashes), per-container secrets a container's user can read, keeps them on a second run and replaces them
with ``--rotate``.

The live test builds nothing: with ``AEGLE_CONTAINER_TESTS=1`` and the images built by ``deploy/build``, it runs
``python -m bench.images --quick`` (start-up, the stack in a loopback-only namespace, vitals over MQTT, a CT by
STOW-RS, an MR by C-STORE to the edge, derived series back from Orthanc, nothing left running). It is skipped
otherwise, with the reason: a cold build takes minutes, more than the CI budget has room for.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from core import accounts

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILES = sorted(DEPLOY.rglob("Containerfile*"))
SCRIPTS = [DEPLOY / "build", DEPLOY / "stack" / "up", DEPLOY / "stack" / "down",
           *sorted(DEPLOY.glob("*/entrypoint.sh"))]  # fmt: skip


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))  # fmt: skip
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_there_are_the_images_of_the_issue() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in CONTAINERFILES}
    assert names == {"aegle/Containerfile", "aegle/Containerfile.gpu", "mosquitto/Containerfile",
                     "orthanc/Containerfile", "victoria-metrics/Containerfile"}  # fmt: skip


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_containerfiles_lint(path: Path) -> None:
    steps = instructions(path)
    keywords = [k for k, _ in steps]
    known = {"ARG", "FROM", "RUN", "COPY", "ENV", "LABEL", "WORKDIR", "VOLUME", "USER", "EXPOSE", "HEALTHCHECK",
             "ENTRYPOINT", "CMD"}  # fmt: skip
    assert set(keywords) <= known, f"unknown instructions {set(keywords) - known}"
    # The base is a build argument, declared before the first FROM, with a default.
    assert keywords[0] == "ARG" and steps[0][1].startswith("BASE=")
    assert any(k == "FROM" and a.startswith("${BASE}") for k, a in steps)
    # Runs as a numeric non-root user, with a health check and an exec-form entrypoint.
    users = [a for k, a in steps if k == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), users
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert "HEALTHCHECK" in keywords and "ENTRYPOINT" in keywords
    assert all(a.startswith("[") for k, a in steps if k in ("ENTRYPOINT", "CMD", "HEALTHCHECK") and "CMD [" not in a)
    # Debian packages at pinned versions (name=version, the versions as ARGs), lists removed in the same step.
    for k, a in steps:
        if k == "RUN" and "apt-get install" in a:
            args = a.split("apt-get install", 1)[1].split(";", 1)[0].split()
            packages = [p for p in args if not p.startswith("-") and p != "$pkgs"]
            if path.name == "Containerfile":  # the GPU image's two tools come from NVIDIA's pinned base
                assert packages or "$pkgs" in args
                assert all("=" in p for p in packages), f"unpinned packages: {packages}"
            assert "rm -rf /var/lib/apt/lists/*" in a
    # Nothing secret goes into a layer: the CA bundle only as a build secret, no password or key files copied.
    text = path.read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*=", text.replace("--mount=type=secret", ""))
    for k, a in steps:
        if k == "COPY":
            assert not re.search(r"(?i)(secret|password|\.pem|\.key|ca-certificates)", a), a
    assert "ca-certificates.crt" not in text


def test_the_serving_image_is_cpu_only_pinned_and_exports_onnx_at_build_time() -> None:
    lines = [ln for ln in (DEPLOY / "aegle" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]  # fmt: skip
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][^\s]*", ln) for ln in lines), lines
    pins = dict(ln.split("==") for ln in lines)
    assert "onnxruntime" in pins and not {"torch", "scipy", "onnx"} & set(pins)  # serving runs ONNX files only
    assert not any(name.startswith(("nvidia-", "torch-tensorrt")) for name in pins)
    build_only = (DEPLOY / "aegle" / "build-requirements.txt").read_text()
    build_pins = dict(ln.split("==") for ln in build_only.splitlines() if ln.strip() and not ln.startswith("#"))
    assert "onnx" in build_pins and build_pins["torch"].endswith("+cpu") and "scipy" in build_pins
    text = (DEPLOY / "aegle" / "Containerfile").read_text()
    assert "export_models.py /opt/aegle/model-cache" in text
    assert "AEGLE_INFERENCE__CACHE_DIR=/opt/aegle/model-cache" in text
    assert "uninstall -y -q -r /ctx/build-requirements.txt" in text
    gpu = (DEPLOY / "aegle" / "Containerfile.gpu").read_text()
    assert "tensorrt" in gpu.lower() and "AEGLE_INFERENCE__BACKEND=tensorrt" in gpu
    assert "grep -v '^torch=='" in gpu  # the CUDA torch, never the +cpu pin


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shell_scripts_parse_and_stop_on_errors(path: Path) -> None:
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert "set -euo pipefail" in path.read_text()
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def stack() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "stack" / "aegle-stack.yaml").read_text())


def test_the_stack_is_a_ward_read_only_non_root_with_secrets_as_files() -> None:
    pod = stack()
    assert pod["kind"] == "Pod" and pod["spec"]["hostNetwork"] is True
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"broker", "store", "pacs", "server", "ingest-1", "ingest-2", "edge"}
    assert [c["args"][0] for n, c in containers.items() if n not in ("broker", "store", "pacs")] == \
        ["serve", "ingest", "ingest", "edge"]  # fmt: skip
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for name, c in containers.items():
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["runAsUser"] >= 10000, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        # A read-only root gets no /tmp of its own in a pod: a tmpfs of its own (the entrypoints write there).
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {"medium": "Memory"}, name
        for mount in mounts.values():
            if mount["mountPath"] != "/tmp":
                assert volumes[mount["name"]]["hostPath"]["path"].startswith("@STATE@/"), mount
            if mount["mountPath"] == "/run/secrets/aegle":
                assert mount.get("readOnly") is True, name
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        # Passwords, tokens and users only as files.
        assert not any(re.search(r"PASSWORD$|TOKEN$|SECRET$|USERS$", k) for k in env), (name, env)
        assert all(v.startswith("/run/secrets/aegle/") for k, v in env.items() if k.endswith("_FILE")), env
    # The two ingest workers share the broker account (one share group), each with its own id and state.
    ids = [containers[w]["args"][2] for w in ("ingest-1", "ingest-2")]
    assert ids == ["ingest-1", "ingest-2"]
    assert {m["name"] for w in ("ingest-1", "ingest-2") for m in containers[w]["volumeMounts"]} >= \
        {"ingest-1-data", "ingest-2-data"}  # fmt: skip
    # Every login the stack uses is an account make_secrets.py registers.
    users = {e["value"] for c in containers.values() for e in c.get("env", []) if e["name"] == "AEGLE_MQTT__USERNAME"}
    assert users == {"aegle-server", "aegle-ingest", "edge-1"}


def verify(password: str, entry: dict[str, Any]) -> bool:
    """The dynamic-security plugin's check of ``password`` against a client's stored hash."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(entry["salt"]), entry["iterations"])
    return base64.b64encode(digest).decode() == entry["password"]


@pytest.fixture
def secrets_module() -> ModuleType:
    """deploy/stack/make_secrets.py as a module."""
    spec = importlib.util.spec_from_file_location("aegle_stack_secrets", DEPLOY / "stack" / "make_secrets.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(os.geteuid() != 0, reason="make_secrets.py hands files to the containers' users (chown): root only")
def test_stack_secrets_make_working_accounts_kept_then_rotated(tmp_path: Path, secrets_module: ModuleType) -> None:
    devices = ["monitor-01", "monitor-02"]
    described = secrets_module.generate(tmp_path, "ward-1", "edge-1", devices)
    assert described["site"] == "ward-1" and "monitor-02" in described["mqtt_users"]
    dynsec = json.loads((tmp_path / "mosquitto" / "dynamic-security.json").read_text())
    clients = {c["username"]: c for c in dynsec["clients"]}
    roles = {r["rolename"]: r for r in dynsec["roles"]}
    device_passwords = json.loads((tmp_path / "secrets" / "devices.json").read_text())
    assert set(device_passwords) == set(devices)
    for user in ["aegle-server", "aegle-ingest", "edge-1", *devices]:
        password = (tmp_path / "secrets" / "mqtt" / user).read_text().strip()
        assert verify(password, clients[user]), user
        assert not verify(password + "x", clients[user])
    # Grants are core.accounts' own: a device may publish only its vitals, at its site.
    assert roles["monitor-01"] == accounts.dynsec_role(accounts.device("monitor-01", "ward-1"))
    assert roles["edge-1"] == accounts.dynsec_role(accounts.edge("edge-1", "ward-1"))
    # Per-container secrets: the server's files are the server's, readable by its uid only, and match.
    server = tmp_path / "secrets" / "server"
    assert (server / "mqtt-password").read_text() == (tmp_path / "secrets" / "mqtt" / "aegle-server").read_text()
    info = (server / "token-secret").stat()
    assert info.st_uid == secrets_module.AEGLE_UID and stat.S_IMODE(info.st_mode) == 0o400
    users = json.loads((tmp_path / "secrets" / "pacs" / "users.json").read_text())
    assert users == {"aegle": (server / "pacs-password").read_text().strip()}
    assert (tmp_path / "secrets" / "pacs" / "users.json").stat().st_uid == secrets_module.ORTHANC_UID
    assert (tmp_path / "mosquitto").stat().st_uid == secrets_module.MOSQUITTO_UID
    assert "password" not in (tmp_path / "stack.json").read_text().lower().replace("mqtt_users", "")
    # A second run keeps everything; --rotate replaces it.
    before = {p: p.read_bytes() for p in (tmp_path / "secrets").rglob("*") if p.is_file()}
    secrets_module.generate(tmp_path, "ward-1", "edge-1", devices)
    assert {p: p.read_bytes() for p in before} == before
    secrets_module.generate(tmp_path, "ward-1", "edge-1", devices, rotate=True)
    assert (tmp_path / "secrets" / "token-secret").read_bytes() != before[tmp_path / "secrets" / "token-secret"]
    dynsec = json.loads((tmp_path / "mosquitto" / "dynamic-security.json").read_text())
    rotated = (tmp_path / "secrets" / "mqtt" / "edge-1").read_text().strip()
    assert verify(rotated, {c["username"]: c for c in dynsec["clients"]}["edge-1"])


def test_healthcheck_reads_the_command_line_options() -> None:
    sys.path.insert(0, str(DEPLOY / "aegle"))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(DEPLOY / "aegle"))
    argv = ["/usr/bin/tini", "--", "/opt/aegle/bin/aegle", "serve", "--port", "9400", "--host=0.0.0.0"]
    assert healthcheck.option(argv, "--port", "AEGLE_NOPE", "8400") == "9400"
    assert healthcheck.option(argv, "--host", "AEGLE_NOPE", None) == "0.0.0.0"
    assert healthcheck.option(argv, "--dicom-port", "AEGLE_NOPE", "11112") == "11112"
    assert healthcheck.loopback("0.0.0.0") == "127.0.0.1" and healthcheck.loopback("10.1.2.3") == "10.1.2.3"
    assert healthcheck.port_open("127.0.0.1", 9) is False


def live_skip_reason() -> str | None:
    """Why the live image test does not run here (None: it runs)."""
    if os.environ.get("AEGLE_CONTAINER_TESTS") != "1":
        return ("live container test off: set AEGLE_CONTAINER_TESTS=1 after deploy/build (a cold build takes "
                "minutes, beyond the CI budget); python -m bench.images builds and runs the same smoke test")
    from bench.images import missing_images, unavailable_reason

    reason = unavailable_reason()
    if reason is None and missing_images():
        reason = f"images missing (run deploy/build): {', '.join(missing_images())}"
    return reason


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_live_images_stack_and_smoke() -> None:
    reason = live_skip_reason()
    if reason:
        pytest.skip(reason)
    done = subprocess.run([sys.executable, "-m", "bench.images", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=880)  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (result, done.stderr[-3000:])
    assert result["smoke"]["ok"] and result["smoke"]["ct_derived"] == 1 and result["smoke"]["mr_derived"] == 7
    assert result["containers_left"] == 0
    assert result["start_s"] > 0 and result["stack_up_s"] > 0 and result["serve_image_mb"] > 0
