"""``aegle token`` and ``aegle serve``: the real console entry point, a real uvicorn process on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aegle.cli import main
from aegle.localservices import free_port


def env_for(tmp_path: Path, model_root: Path) -> dict[str, str]:
    return {
        "AEGLE_API__TOKENS_PATH": str(tmp_path / "tokens.sqlite"),
        "AEGLE_API__AUDIT_PATH": str(tmp_path / "audit.sqlite"),
        "AEGLE_API__STUDIES_PATH": str(tmp_path / "studies.sqlite"),
        "AEGLE_API__TOKEN_SECRET_FILE": str(tmp_path / "secret"),
        "AEGLE_STORE__SQLITE_PATH": str(tmp_path / "vitals.sqlite"),
        "AEGLE_INFERENCE__WEIGHTS_DIR": str(model_root),
        "AEGLE_INFERENCE__ENHANCER__VERSION": "0.0.0-test",  # the test registry's models
        "AEGLE_INFERENCE__TRIAGE__VERSION": "0.0.0-test",
        "AEGLE_INFERENCE__CACHE_DIR": str(tmp_path / "cache"),
        "AEGLE_INFERENCE__THREADS": "1",
    }


def test_token_commands_create_list_revoke(tmp_path: Path, model_root: Path, monkeypatch, capsys) -> None:
    for key, value in env_for(tmp_path, model_root).items():
        monkeypatch.setenv(key, value)
    assert main(["token", "create", "--role", "clinician", "--name", "dr-who"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("aegle_") and len(token) > 40
    assert main(["token", "create", "--role", "clinician", "--name", "dr-who"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["token", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed[0]["name"] == "dr-who" and listed[0]["role"] == "clinician" and listed[0]["revoked"] is None
    assert token not in json.dumps(listed)
    assert main(["token", "revoke", "dr-who"]) == 0
    assert main(["token", "revoke", "dr-who"]) == 1
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0  # the generated HMAC key is private


def test_serve_runs_the_service_until_sigterm(tmp_path: Path, model_root: Path) -> None:
    env = os.environ | env_for(tmp_path, model_root)
    token = subprocess.run([sys.executable, "-m", "aegle.cli", "token", "create", "--role", "operator", "--name",
                            "ops"], env=env, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aegle.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "aegle serve did not come up"
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/api/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert {m["name"] for m in models.json()["models"]} == {"enhancer-x2", "triage-classifier"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    # uvicorn shuts down gracefully, then re-raises the signal (exit status −SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
    assert "warmed up enhancer-x2" in output and "GET /api/v1/models -> 200" in output
    assert token not in output


def test_serve_refuses_the_watch_mode_without_a_dicomweb_pacs(tmp_path: Path, model_root: Path) -> None:
    env = os.environ | env_for(tmp_path, model_root)
    done = subprocess.run([sys.executable, "-m", "aegle.cli", "serve", "--port", str(free_port()), "--watch"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "set AEGLE_PACS__DICOMWEB_URL" in output, output
