"""aegle.localservices.Orthanc: a real Orthanc, only inside a loopback-only network namespace, auth on."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from aegle.localservices import Orthanc, network_interfaces


def test_start_is_refused_in_a_namespace_with_another_interface(tmp_path: Path) -> None:
    # A nested private namespace with a veth pair stands for "not loopback only" without touching the host's
    # network: even if the refusal were broken, the Orthanc started there could reach nothing.
    script = textwrap.dedent(f"""
        from aegle.localservices import Orthanc, network_interfaces
        print("interfaces", network_interfaces())
        try:
            with Orthanc({str(tmp_path / "orthanc")!r}):
                print("STARTED")
        except RuntimeError as exc:
            print("REFUSED", exc)
    """)
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         'ip link set lo up && ip link add aegle0 type veth peer name aegle1 && exec "$0" -c "$1"',
         sys.executable, script],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "'aegle0'" in done.stdout, done.stdout + done.stderr
    assert "STARTED" not in done.stdout
    assert "REFUSED refusing to start Orthanc" in done.stdout
    assert "unshare -n" in done.stdout  # the message says how to run it
    assert not (tmp_path / "orthanc" / "orthanc.json").exists()  # refused before writing any configuration


def test_the_suite_runs_in_a_loopback_only_namespace() -> None:
    assert network_interfaces() == ["lo"], "run the tests through scripts/test (unshare -n)"


def test_authentication_is_on(orthanc: Orthanc) -> None:
    user, password = orthanc.auth
    for url in (f"{orthanc.url}/system", f"{orthanc.dicomweb_url}/studies", f"{orthanc.url}/changes"):
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=(user, password + "x")).status_code == 401
        assert httpx.get(url, auth=(user, password)).status_code == 200


def test_configuration_on_disk_and_as_running(orthanc: Orthanc) -> None:
    conf = orthanc.workdir / "orthanc.json"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the passwords
    system = httpx.get(f"{orthanc.url}/system", auth=orthanc.auth).json()
    assert system["HttpPort"] == orthanc.port and system["DicomPort"] == orthanc.dicom_port
    plugins = httpx.get(f"{orthanc.url}/plugins", auth=orthanc.auth).json()
    assert [p for p in plugins if p != "explorer.js"] == ["dicom-web"]  # explorer.js: Orthanc's own web UI
    peers = httpx.get(f"{orthanc.url}/peers", auth=orthanc.auth).json()
    modalities = httpx.get(f"{orthanc.url}/modalities", auth=orthanc.auth).json()
    assert peers == [] and modalities == []
    assert "remote access is not allowed" in orthanc.log_tail(100_000)


def test_stable_age_must_be_whole_positive_seconds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stable_age"):
        Orthanc(tmp_path, stable_age=0)
