"""What an outside probe broke, replayed against the real ``aegle serve`` process (shipped weights, loopback).

One server runs for the module; its log is a file the tests read. Each test is one of the probe's findings:
a 16 KB PNG that decoded to 4000² and took 14.7 GB; an NPY header declaring 37 GiB; malformed DICOM answered
with 500 (and the keep-alive connection then reset); pydicom's warnings putting header values (patient name and
id) into the log; a date before the epoch answered with 500.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from aegle.localservices import free_port
from core.settings import ApiSettings
from server.api.tokens import TokenStore
from tests.api_support import png_bytes
from tests.dicom_support import pydicom_file

# Identifiers in the files the probe used: pydicom's rtplan.dcm and a CT_small whose UIDs hold free text.
RTPLAN_PATIENT = ("Last^First", "id00001")
LEAKY_UID_TEXT = "Jane Doe 1962-04-01"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    tokens: dict[str, str]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def peak_rss_mb(self) -> float:
        """The server process's peak resident set (VmHWM), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``aegle serve`` with the shipped models, two inference threads, every file in a temporary directory."""
    work = tmp_path_factory.mktemp("probe")
    api = ApiSettings(tokens_path=work / "tokens.sqlite", token_secret_file=work / "secret")
    store = TokenStore.from_settings(api)
    tokens = {role: store.create(f"{role}-probe", role) for role in ("clinician", "device")}
    store.close()
    env = os.environ | {
        "AEGLE_API__TOKENS_PATH": str(api.tokens_path), "AEGLE_API__TOKEN_SECRET_FILE": str(api.token_secret_file),
        "AEGLE_API__AUDIT_PATH": str(work / "audit.sqlite"), "AEGLE_API__STUDIES_PATH": str(work / "studies.sqlite"),
        "AEGLE_STORE__SQLITE_PATH": str(work / "vitals.sqlite"), "AEGLE_INFERENCE__CACHE_DIR": str(work / "cache"),
        "AEGLE_INFERENCE__THREADS": "2", "AEGLE_LOG_LEVEL": "DEBUG",
    }  # fmt: skip
    port = free_port()
    log_path = work / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aegle.cli", "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    running = Server(proc, port, tokens, log_path)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(running.url):
            assert proc.poll() is None, running.log()
            assert time.monotonic() < deadline, "aegle serve did not come up"
            time.sleep(0.2)
        yield running
    finally:
        proc.terminate()
        proc.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_huge_sparse_png_is_enhanced_in_tiles_within_bounded_memory(server: Server) -> None:
    """4000×4000 zeros, 15 KB compressed: enhanced to 8000×8000 while the server's peak RSS stays under 1.3 GB
    (before: 65 s and 14.7 GB, and it stayed there)."""
    body = png_bytes(np.zeros((4000, 4000), np.uint8))
    assert len(body) < 20_000
    r = httpx.post(f"{server.url}/api/v1/enhance", content=body, headers=server.auth("clinician"), timeout=300)
    assert r.status_code == 200, r.text
    with Image.open(io.BytesIO(r.content)) as out:
        assert out.size == (8000, 8000) and out.mode == "L"
    assert server.peak_rss_mb() < 1300, server.peak_rss_mb()


def test_an_npy_header_declaring_37_gib_is_refused_before_allocating(server: Server) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
    before = server.peak_rss_mb()
    r = httpx.post(f"{server.url}/api/v1/enhance", content=header.getvalue() + b"\0" * 64,
                   headers=server.auth("clinician"), timeout=60)  # fmt: skip
    assert r.status_code == 413 and r.json()["detail"]["reason"] == "absurd-dimensions", r.text
    assert server.peak_rss_mb() - before < 50


def _ct() -> bytes:
    return pydicom_file("CT_small.dcm").read_bytes()


def _empty_transfer_syntax() -> bytes:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ""
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _invalid_vr_on_rows() -> bytes:
    ct = _ct()
    rows = b"\x28\x00\x10\x00US"  # (0028,0010) Rows, explicit VR little endian
    assert rows in ct
    return ct.replace(rows, b"\x28\x00\x10\x00QQ", 1)


MALFORMED = {"empty TransferSyntaxUID": _empty_transfer_syntax, "invalid VR on Rows": _invalid_vr_on_rows}


def _multipart(part: bytes, boundary: str = "probe") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_dicom_is_a_4xx_on_every_dicom_route_and_the_connection_lives_on(server: Server, what: str) -> None:
    data = MALFORMED[what]()
    stow_body, stow_type = _multipart(data)
    calls = [
        ("/api/v1/enhance/dicom", data, "application/dicom", "clinician"),
        ("/api/v1/classify", data, "application/dicom", "clinician"),
        ("/dicom-web/studies", stow_body, stow_type, "device"),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.connect()
        local = conn.sock.getsockname()
        for path, body, media, role in calls:
            conn.request("POST", path, body=body, headers=server.auth(role) | {"Content-Type": media})
            r = conn.getresponse()
            answer = r.read()
            assert 400 <= r.status < 500, (path, r.status, answer[:300])
            refusal = json.loads(answer)
            if path == "/dicom-web/studies":  # STOW-RS: the instance in the Failed SOP Sequence
                assert r.status == 409 and refusal["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
            else:
                assert refusal["detail"]["reason"] == "malformed", (path, refusal)
            assert r.getheader("connection") != "close", path
            # the same connection serves a good request next
            conn.request("GET", "/api/v1/models", headers=server.auth("clinician"))
            ok = conn.getresponse()
            ok.read()
            assert ok.status == 200
            assert conn.sock is not None and conn.sock.getsockname() == local, f"{path} closed the connection"
    finally:
        conn.close()


def _rtplan_with_ffff() -> bytes:
    """pydicom's rtplan.dcm with two bytes of a meta element's length set to FF FF: a UID swallows the header."""
    data = pydicom_file("rtplan.dcm").read_bytes()
    return data[:158] + b"\xff\xff" + data[160:]


def _uid_holding_text() -> bytes:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SeriesInstanceUID = LEAKY_UID_TEXT
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_no_dicom_header_value_reaches_the_log(server: Server) -> None:
    """Header values in third-party warnings (pydicom's, about bad VRs and UIDs) never reach the server log."""
    for data in (_rtplan_with_ffff(), _uid_holding_text()):
        for path in ("/api/v1/enhance/dicom", "/api/v1/classify"):
            r = httpx.post(f"{server.url}{path}", content=data, timeout=120,
                           headers=server.auth("clinician") | {"Content-Type": "application/dicom"})  # fmt: skip
            assert r.status_code < 500, (path, r.text)
    log = server.log()
    assert "POST /api/v1/enhance/dicom" in log  # the requests are logged ...
    for value in (*RTPLAN_PATIENT, "First", LEAKY_UID_TEXT, "Jane"):
        assert value not in log  # ... the header values are not


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z"])
def test_dates_outside_the_store_are_a_400(server: Server, when: str) -> None:
    clin = server.auth("clinician")
    patient = "enc-probe-5d1e"
    for path, params in (
        (f"/api/v1/patients/{patient}/vitals", {"to": when}),
        (f"/api/v1/patients/{patient}/vitals", {"from": when}),
        (f"/api/v1/patients/{patient}/context", {"at": when}),
    ):
        r = httpx.get(f"{server.url}{path}", params=params, headers=clin, timeout=30)
        assert r.status_code == 400 and r.json()["detail"]["reason"] == "time-out-of-range", (path, params, r.text)
    log = server.log()
    assert "GET /api/v1/patients/{patient_id}/vitals -> 400" in log and patient not in log
