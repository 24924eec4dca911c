"""DICOM through the API (instance, series, STOW-RS into a real Orthanc), synthesis, and bad input of every kind.

Every bad request gets a 4xx with a reason code, and a normal request succeeds right after it (the server keeps
serving). DICOM inputs are pydicom's real CT_small.dcm, edited where a defect is the point.
"""

from __future__ import annotations

import io
import json
import logging
import re
import select
import socket
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from core.settings import DEFAULT_ENHANCER as FAST
from core.settings import DEFAULT_QUALITY_ENHANCER as QUALITY
from core.settings import PacsSettings, Settings
from server.api.images import png_text
from server.inference import InferenceEngine
from server.pacs import DicomWebStore
from server.pacs.dicomweb import decode_multipart, encode_multipart
from tests.api_support import (
    PATIENT,
    LiveServer,
    Service,
    derived_model,
    inference_settings,
    npy_bytes,
    png_bytes,
    real_slice,
    seed_vitals,
    service_settings,
)
from tests.dicom_support import pydicom_file

MAX_UPLOAD = 2 * 1024 * 1024


def ct(instance: int = 1, series_uid: str = "1.2.826.0.1.3680043.8.498.1") -> Dataset:
    """Real CT_small.dcm as one instance of a series of ours, acquired now, for ``PATIENT``."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientID = PATIENT
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = f"{series_uid}.{instance}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = instance
    ds.AcquisitionDateTime = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = "aegle-test-boundary"
    return encode_multipart(parts, boundary), f'multipart/related; type="application/dicom"; boundary={boundary}'


def no_pixel_data() -> bytes:
    ds = ct()
    del ds.PixelData
    return dicom_bytes(ds)


def unsupported_syntax() -> bytes:
    ds = ct()
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML  # video: no decoder here
    return dicom_bytes(ds)


def absurd_dimensions() -> bytes:
    ds = ct()
    ds.Rows = ds.Columns = 65535
    return dicom_bytes(ds)


def npy_header_only(descr: str, shape: tuple[int, ...]) -> bytes:
    """An NPY header declaring ``descr`` × ``shape`` followed by a few bytes, not the array it declares."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.getvalue() + b"\0" * 64


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` (a decompression bomb is refused before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def small_service(tmp_path: Path, engine: InferenceEngine) -> Iterator[Service]:
    svc = Service(service_settings(tmp_path, max_upload_bytes=MAX_UPLOAD, max_pixels=2048 * 2048), engine)
    with svc.client:
        yield svc


# --------------------------------------------------------------------------- DICOM enhance


def test_enhance_one_instance_returns_the_derived_dicom_with_context(service: Service) -> None:
    seed_vitals(service.settings, PATIENT, datetime.now(UTC))
    source = ct()
    r = service.client.post("/api/v1/enhance/dicom", content=dicom_bytes(source),
                            headers=service.auth("clinician") | {"Content-Type": "application/dicom"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    derived = pydicom.dcmread(io.BytesIO(r.content))
    assert (derived.Rows, derived.Columns) == (256, 256)
    assert derived.StudyInstanceUID == source.StudyInstanceUID and derived.SeriesInstanceUID != source.SeriesInstanceUID
    assert derived.ImageType[0] == "DERIVED" and derived.PatientID == PATIENT
    applied = json.loads(r.headers["X-Aegle-Result"])
    assert applied["model"] == QUALITY and applied["scale"] == 2 and applied["strength"] is not None  # study path
    assert derived_model(derived) == (QUALITY, applied["model_version"]) == (QUALITY, "0.0.1-test")
    assert applied["context"]["completeness"] == pytest.approx(2 / 7, abs=1e-4)
    assert set(applied["context"]) == {"at", "window_s", "completeness", "levels", "ages_s"}  # the summary: no vector
    assert PATIENT not in r.headers["X-Aegle-Result"]
    studies = service.client.get(f"/api/v1/studies/{source.StudyInstanceUID}", headers=service.auth("operator"))
    assert studies.json()["results"][0]["outcome"] == "processed"
    entries = service.client.get("/api/v1/admin/audit", params={"action": "dicom.enhance"},
                                 headers=service.auth("admin")).json()["entries"]  # fmt: skip
    assert [(e["resource"], e["detail"]) for e in entries] == [
        (f"patient:{PATIENT}", f"study:{source.StudyInstanceUID}")
    ]


def test_enhance_a_series_returns_multipart(service: Service) -> None:
    body, content_type = multipart([dicom_bytes(ct(i)) for i in (1, 2, 3)])
    r = service.client.post("/api/v1/enhance/dicom", content=body,
                            headers=service.auth("operator") | {"Content-Type": content_type})  # fmt: skip
    assert r.status_code == 200, r.text
    parts = [pydicom.dcmread(io.BytesIO(p)) for p in decode_multipart(r.content, r.headers["content-type"])]
    assert len(parts) == 3 and len({p.SeriesInstanceUID for p in parts}) == 1
    assert sorted(str(p.SourceImageSequence[0].ReferencedSOPInstanceUID) for p in parts) == [
        ct(i).SOPInstanceUID for i in (1, 2, 3)
    ]
    metrics = service.client.get("/metrics", headers=service.auth("admin")).text
    assert 'aegle_series_total{outcome="processed"} 1.0' in metrics
    assert 'aegle_instances_total{outcome="enhanced"} 3.0' in metrics


def test_stow_rs_into_a_real_orthanc(tmp_path: Path, engine: InferenceEngine, orthanc: object) -> None:
    settings = service_settings(tmp_path)
    username, password = orthanc.auth  # type: ignore[attr-defined]
    settings.pacs = PacsSettings(dicomweb_url=orthanc.dicomweb_url, username=username, password=password)  # type: ignore[attr-defined]
    svc = Service(settings, engine)
    series = "1.2.826.0.1.3680043.8.498.77"
    body, content_type = multipart([dicom_bytes(ct(1, series)), dicom_bytes(ct(2, series)), b"not dicom at all"])
    with svc.client, LiveServer(svc.app) as live:
        assert svc.client.get("/readyz").json()["checks"]["pacs"] == {"ok": True, "reason": "PACS answers QIDO-RS"}
        r = httpx.post(f"{live.url}/dicom-web/studies", content=body, timeout=60,
                       headers=svc.auth("device") | {"Content-Type": content_type})  # fmt: skip
    assert r.status_code == 202, r.text  # two stored, one refused
    answer = r.json()
    assert sorted(i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]) == [f"{series}.1", f"{series}.2"]
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    with DicomWebStore(orthanc.dicomweb_url, *orthanc.auth) as pacs:  # type: ignore[attr-defined]
        found = pacs.search_series(ct().StudyInstanceUID)
        derived = [s for s in found if "enhanced" in str(s.get("SeriesDescription", "")).lower()]
        assert derived, [str(s.get("SeriesDescription")) for s in found]
        stored = pacs.retrieve_series(ct().StudyInstanceUID, str(derived[-1].SeriesInstanceUID))
    assert len(stored) == 2 and {(d.Rows, d.Columns) for d in stored} == {(256, 256)}


# --------------------------------------------------------------------------- the model each path uses


def enhanced_by(svc: Service) -> dict[str, tuple[str, str]]:
    """The model each input path used, as it reports it: live (X-Aegle-Applied), DICOM enhance (the derived
    instance's Contributing Equipment and private block, and X-Aegle-Result), STOW-RS (X-Aegle-Result)."""
    live = svc.client.post("/api/v1/enhance", content=png_bytes((real_slice() * 255).astype(np.uint8)),
                           headers=svc.auth("clinician"))  # fmt: skip
    assert live.status_code == 200, live.text
    applied = json.loads(live.headers["X-Aegle-Applied"])
    r = svc.client.post("/api/v1/enhance/dicom", content=dicom_bytes(ct()),
                        headers=svc.auth("clinician") | {"Content-Type": "application/dicom"})  # fmt: skip
    assert r.status_code == 200, r.text
    result = json.loads(r.headers["X-Aegle-Result"])
    assert derived_model(pydicom.dcmread(io.BytesIO(r.content))) == (result["model"], result["model_version"])
    body, content_type = multipart([dicom_bytes(ct(1, "1.2.826.0.1.3680043.8.498.78"))])
    stow = svc.client.post("/dicom-web/studies", content=body,
                           headers=svc.auth("device") | {"Content-Type": content_type})  # fmt: skip
    assert stow.status_code == 200, stow.text
    (series,) = json.loads(stow.headers["X-Aegle-Result"])["series"]
    return {"live": (applied["model"], applied["version"]), "dicom": (result["model"], result["model_version"]),
            "stow": (series["model"], series["model_version"])}  # fmt: skip


def test_the_live_path_uses_the_fast_model_and_the_dicom_paths_the_quality_one(service: Service) -> None:
    assert enhanced_by(service) == {
        "live": (FAST, "0.0.0-test"), "dicom": (QUALITY, "0.0.1-test"), "stow": (QUALITY, "0.0.1-test")}


def test_the_environment_chooses_the_model_of_each_path(
    tmp_path: Path, engine: InferenceEngine, model_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AEGLE_INFERENCE__STUDY_MODEL / __LIVE_MODEL, read by Settings, flip the defaults; /models says so."""
    monkeypatch.delenv("AEGLE_CONFIG", raising=False)
    env = {
        "WEIGHTS_DIR": str(model_root), "CACHE_DIR": str(engine.settings.cache_dir), "THREADS": "1",
        "ENHANCER__VERSION": "0.0.0-test", "QUALITY_ENHANCER__VERSION": "0.0.1-test",
        "TRIAGE__VERSION": "0.0.0-test", "STUDY_MODEL": "fast", "LIVE_MODEL": "quality",
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(f"AEGLE_INFERENCE__{key}", value)
    eng = InferenceEngine.from_settings(Settings().inference)
    try:
        svc = Service(service_settings(tmp_path), eng)
        with svc.client:
            assert enhanced_by(svc) == {
                "live": (QUALITY, "0.0.1-test"), "dicom": (FAST, "0.0.0-test"), "stow": (FAST, "0.0.0-test")}
            served = svc.client.get("/api/v1/models", headers=svc.auth("operator")).json()["served"]
            assert (served["enhancer"]["paths"], served["quality_enhancer"]["paths"]) == (["study"], ["live"])
    finally:
        eng.close()


def test_without_a_quality_model_the_fast_one_serves_the_dicom_paths(
    tmp_path: Path, engine: InferenceEngine, model_root: Path
) -> None:
    """quality_enhancer unset (None): every path uses the fast model and the service is ready."""
    eng = InferenceEngine.from_settings(inference_settings(model_root, engine.settings.cache_dir,
                                                           quality_enhancer=None))  # fmt: skip
    try:
        svc = Service(service_settings(tmp_path), eng)
        with svc.client:
            assert set(enhanced_by(svc).values()) == {(FAST, "0.0.0-test")}
            models = svc.client.get("/readyz").json()["checks"]["models"]
            assert models == {"ok": True, "reason": "loaded: enhancer enhancer-x2 for live, study; "
                                                    "triage triage-classifier for study, classify"}  # fmt: skip
            body = svc.client.get("/api/v1/models", headers=svc.auth("operator")).json()
            assert body["served"]["quality_enhancer"] is None
            assert body["served"]["enhancer"]["paths"] == ["live", "study"]
            assert {m["name"] for m in body["models"]} == {FAST, "triage-classifier"}  # QUALITY, though in the registry
    finally:
        eng.close()


def test_a_quality_model_that_does_not_load_stops_the_dicom_paths_not_the_live_one(
    tmp_path: Path, engine: InferenceEngine, model_root: Path
) -> None:
    """A quality model that is set but absent is not replaced silently: not ready, named with the reason; DICOM
    input fails with it (STOW-RS: A700, retry later), the live path keeps the fast model."""
    absent = "enhancer-x2-quality-absent"
    eng = InferenceEngine.from_settings(inference_settings(model_root, engine.settings.cache_dir,
                                                           quality_enhancer={"name": absent}))  # fmt: skip
    try:
        svc = Service(service_settings(tmp_path), eng)
        with svc.client:
            models = svc.client.get("/readyz").json()["checks"]["models"]
            assert not models["ok"] and models["reason"].startswith(f"{absent}: ")
            body = svc.client.get("/api/v1/models", headers=svc.auth("operator")).json()
            assert set(body["missing"]) == {absent} and body["served"]["quality_enhancer"]["paths"] == ["study"]
            live = svc.client.post("/api/v1/enhance", content=png_bytes((real_slice() * 255).astype(np.uint8)),
                                   headers=svc.auth("clinician"))  # fmt: skip
            assert live.status_code == 200 and json.loads(live.headers["X-Aegle-Applied"])["model"] == FAST
            r = svc.client.post("/api/v1/enhance/dicom", content=dicom_bytes(ct()),
                                headers=svc.auth("clinician") | {"Content-Type": "application/dicom"})  # fmt: skip
            assert r.status_code == 422 and r.json()["detail"]["reason"] == "not-enhanced"
            assert f"model '{absent}' is not loaded" in r.json()["detail"]["message"]
            body, content_type = multipart([dicom_bytes(ct(1, "1.2.826.0.1.3680043.8.498.79"))])
            stow = svc.client.post("/dicom-web/studies", content=body,
                                   headers=svc.auth("device") | {"Content-Type": content_type})  # fmt: skip
            assert stow.status_code == 409 and stow.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    finally:
        eng.close()


def test_dicom_requests_log_no_patient_data(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    source = ct()
    body, content_type = multipart([dicom_bytes(ct(i)) for i in (1, 2)])
    with caplog.at_level(logging.DEBUG):
        assert service.client.post("/api/v1/enhance/dicom", content=dicom_bytes(source),
                                   headers=service.auth("clinician") | {"Content-Type": "application/dicom"}).is_success
        assert service.client.post("/dicom-web/studies", content=body,
                                   headers=service.auth("device") | {"Content-Type": content_type}).is_success
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "httpx")  # httpx: the test's client
    assert "POST /dicom-web/studies -> 200" in text
    for identifier in (PATIENT, str(source.PatientName), str(source.get("PatientBirthDate", "")) or PATIENT):
        assert identifier not in text


def test_classify_a_dicom_instance(service: Service) -> None:
    r = service.client.post("/api/v1/classify", content=dicom_bytes(ct()), headers=service.auth("clinician"))
    assert r.status_code == 200, r.text
    assert set(r.json()["probabilities"]) == {"diagnostic", "noisy", "motion-blurred", "low-resolution"}
    entries = service.client.get("/api/v1/admin/audit", params={"action": "image.classify"},
                                 headers=service.auth("admin")).json()["entries"]  # fmt: skip
    assert [e["resource"] for e in entries] == [f"patient:{PATIENT}"]
    bad = service.client.post("/api/v1/classify", content=no_pixel_data(), headers=service.auth("clinician"))
    assert bad.status_code == 400 and bad.json()["detail"]["reason"] == "no-pixel-data"


# --------------------------------------------------------------------------- synthesis


def test_synthesize_returns_a_png_marked_synthetic(service: Service) -> None:
    r = service.client.post("/api/v1/synthesize", params={"label": 1, "seed": 3}, headers=service.auth("operator"))
    assert r.status_code == 200, r.text
    assert r.headers["X-Aegle-Synthetic"] == "true"
    marks = png_text(r.content)
    assert marks["aegle:synthetic"] == "true" and marks["aegle:label"] == "1" and ">" in marks["aegle:generator"]
    from PIL import Image

    assert Image.open(io.BytesIO(r.content)).size == (128, 128)
    again = service.client.post("/api/v1/synthesize", params={"label": 1, "seed": 3}, headers=service.auth("operator"))
    assert again.content == r.content  # deterministic for a seed


# --------------------------------------------------------------------------- bad input


BAD_DICOM = [
    ("truncated", lambda: dicom_bytes(ct())[:4000], 400, "truncated"),
    ("no pixel data", no_pixel_data, 400, "no-pixel-data"),
    ("unsupported transfer syntax", unsupported_syntax, 415, "unsupported-transfer-syntax"),
    ("absurd dimensions", absurd_dimensions, 413, "absurd-dimensions"),
    ("not DICOM", lambda: b"GET / HTTP/1.1 this is no DICOM file" * 10, 400, "not-dicom"),
]


@pytest.mark.parametrize(("what", "make", "status", "reason"), BAD_DICOM, ids=[b[0] for b in BAD_DICOM])
def test_bad_dicom_gets_a_4xx_with_a_reason_and_the_server_keeps_serving(
    small_service: Service, what: str, make: object, status: int, reason: str
) -> None:
    headers = small_service.auth("clinician") | {"Content-Type": "application/dicom"}
    r = small_service.client.post("/api/v1/enhance/dicom", content=make(), headers=headers)  # type: ignore[operator]
    assert r.status_code == status, (what, r.text)
    assert r.json()["detail"]["reason"] == reason
    ok = small_service.client.post("/api/v1/enhance/dicom", content=dicom_bytes(ct()), headers=headers)
    assert ok.status_code == 200


BAD_IMAGES = [
    ("empty body", b"", 400, "empty-body"),
    ("unknown format", b"GIF89a" + b"\0" * 100, 415, "unsupported-format"),
    ("corrupt PNG", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, 400, "corrupt-image"),
    ("PNG bomb", png_header_only(60000, 60000), 413, "absurd-dimensions"),
    ("tiny image", None, 400, "too-small"),
    ("NPY 3-D", npy_bytes(np.zeros((2, 32, 32), np.float32)), 400, "bad-shape"),
    ("NPY NaN", npy_bytes(np.full((32, 32), np.nan, np.float32)), 400, "non-finite"),
    ("NPY complex", npy_bytes(np.zeros((32, 32), np.complex64)), 415, "unsupported-dtype"),
    ("NPY truncated", npy_bytes(np.zeros((64, 64), np.float32))[:500], 400, "corrupt-image"),
    ("NPY trailing bytes", npy_bytes(np.zeros((64, 64), np.float32)) + b"\0" * 8, 400, "corrupt-image"),
    ("NPY header of 37 GiB", npy_header_only("<f4", (100000, 100000)), 413, "absurd-dimensions"),
    ("NPY object dtype", npy_header_only("|O", (32, 32)), 415, "unsupported-dtype"),
    ("NPY garbage header", b"\x93NUMPY\x01\x00\x10\x00{'descr': 1,     }\n", 400, "corrupt-image"),
]


@pytest.mark.parametrize(("what", "body", "status", "reason"), BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_plain_images_get_a_4xx_with_a_reason(
    small_service: Service, what: str, body: bytes | None, status: int, reason: str
) -> None:
    if body is None:
        body = png_bytes(np.zeros((8, 8), np.uint8))
    clin = small_service.auth("clinician")
    for route in ("/api/v1/enhance", "/api/v1/classify"):
        r = small_service.client.post(route, content=body, headers=clin)
        assert r.status_code == status, (what, route, r.text)
        assert r.json()["detail"]["reason"] == reason
    ok = small_service.client.post("/api/v1/enhance", content=png_bytes((real_slice() * 255).astype(np.uint8)),
                                   headers=clin)  # fmt: skip
    assert ok.status_code == 200


def chunked_upload_until_answered(port: int, path: str, headers: dict[str, str], limit: int) -> tuple[int, bytes]:
    """Stream a chunked body over a raw socket until the server answers; (bytes sent, response head)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    chunk = b"\0" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        while sent < 64 * limit:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(30)
        answer = b""
        while True:  # read the head, then the body up to its Content-Length (or until the server closes)
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            if length and len(body) >= int(length.group(1)):
                return sent, answer
            data = sock.recv(65536)
            if not data:
                return sent, answer
            answer += data


def test_huge_uploads_are_refused_while_streaming_over_http(small_service: Service) -> None:
    headers = small_service.auth("clinician") | {"Content-Type": "application/dicom"}
    with LiveServer(small_service.app) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        # Declared too large: refused from the Content-Length header.
        r = http.post("/api/v1/enhance/dicom", content=b"\0" * (MAX_UPLOAD + 1), headers=headers)
        assert r.status_code == 413 and r.json()["detail"]["reason"] == "body-too-large"
        # Chunked, no length: answered once the limit is crossed, long before the 64× larger body is sent.
        sent, answer = chunked_upload_until_answered(live.port, "/api/v1/enhance/dicom", headers, MAX_UPLOAD)
        assert answer.startswith(b"HTTP/1.1 413") and b"body-too-large" in answer
        assert sent < 8 * MAX_UPLOAD
        ok = http.post("/api/v1/enhance/dicom", content=dicom_bytes(ct()), headers=headers)
        assert ok.status_code == 200


def test_binary_uploads_describe_their_body_in_the_openapi_schema(service: Service) -> None:
    """An OpenAPI client (or fuzzer) learns which media types each upload route takes."""
    paths = service.client.get("/openapi.json", headers=service.auth("operator")).json()["paths"]
    expected = {
        "/api/v1/enhance": {"image/png", "application/x-npy"},
        "/api/v1/classify": {"image/png", "application/x-npy", "application/dicom"},
        "/api/v1/enhance/dicom": {"application/dicom", 'multipart/related; type="application/dicom"'},
        "/dicom-web/studies": {'multipart/related; type="application/dicom"'},
    }
    for path, media in expected.items():
        body = paths[path]["post"]["requestBody"]
        assert body["required"] and set(body["content"]) == media, path
        assert all(c["schema"] == {"type": "string", "format": "binary"} for c in body["content"].values())


def test_stow_refuses_other_media_types(service: Service) -> None:
    r = service.client.post("/dicom-web/studies", content=dicom_bytes(ct()),
                            headers=service.auth("device") | {"Content-Type": "application/dicom"})  # fmt: skip
    assert r.status_code == 415 and r.json()["detail"]["reason"] == "unsupported-media-type"
