"""The HTTP service: auth matrix over every route, audit log, plain-image enhance/classify, patients, metrics.

The models are the real architectures with random-init weights in a temporary registry (tests/api_support.py):
real plumbing (registry, ONNX export + parity, ONNX Runtime, batching), not meaningful pictures — quality is
measured by the benches on trained weights.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.routing import iter_route_contexts
from pydantic import SecretStr

from core.settings import MqttSettings
from server.api.images import png_text
from server.api.tokens import ROLES
from server.inference import InferenceEngine
from tests.api_support import (
    PATIENT,
    LiveServer,
    Service,
    inference_settings,
    npy_bytes,
    png_bytes,
    real_slice,
    seed_vitals,
    service_settings,
)

PUBLIC = {"/healthz", "/readyz"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def live(service: Service) -> Iterator[LiveServer]:
    with LiveServer(service.app) as server:
        yield server


# --------------------------------------------------------------------------- auth matrix


def all_routes(app: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """(method, path, allowed roles) of every route of the app; a route without a role check fails here."""
    found = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        for method in sorted(ctx.methods or ()):
            if method == "HEAD":
                continue
            roles = None
            for dep in getattr(route, "dependant").dependencies:  # noqa: B009
                roles = getattr(dep.call, "roles", roles)
            if ctx.path in PUBLIC:
                assert roles is None, f"{ctx.path} is public but checks roles"
                continue
            assert roles, f"{method} {ctx.path} has no role check"
            found.append((method, ctx.path, tuple(roles)))
    return found


def concrete(path: str) -> str:
    return path.replace("{patient_id}", PATIENT).replace("{study_uid}", "1.2.3").replace("{name}", "nobody")


def test_every_non_health_route_refuses_missing_invalid_and_wrong_role_tokens(service: Service) -> None:
    routes = all_routes(service.app)
    assert len(routes) >= 12
    for method, path, roles in routes:
        url = concrete(path)
        r = service.client.request(method, url)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["detail"]["reason"] == "missing-token"
        r = service.client.request(method, url, headers={"Authorization": "Bearer aegle_not-a-token"})
        assert r.status_code == 401 and r.json()["detail"]["reason"] == "invalid-token", (method, path)
        for role in set(ROLES) - set(roles):
            r = service.client.request(method, url, headers=service.auth(role))
            assert r.status_code == 403, (method, path, role, r.text)
            detail = r.json()["detail"]
            assert detail["reason"] == "forbidden-role"
            assert all(allowed in detail["message"] for allowed in roles)


def test_revoked_token_is_refused_and_tokens_are_stored_hashed(service: Service) -> None:
    created = service.client.post("/api/v1/admin/tokens", json={"name": "ward-7", "role": "clinician"},
                                  headers=service.auth("admin"))  # fmt: skip
    assert created.status_code == 201
    token = created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert service.client.get("/api/v1/models", headers=headers).status_code == 200
    raw = service.settings.api.tokens_path.read_bytes()
    assert token.encode() not in raw and token.removeprefix("aegle_").encode() not in raw
    assert service.client.delete("/api/v1/admin/tokens/ward-7", headers=service.auth("admin")).status_code == 200
    assert service.client.get("/api/v1/models", headers=headers).status_code == 401
    listed = service.client.get("/api/v1/admin/tokens", headers=service.auth("admin")).json()["tokens"]
    assert {t["name"]: t["revoked"] is not None for t in listed}["ward-7"]
    assert "token" not in listed[0]


# --------------------------------------------------------------------------- audit


def test_every_patient_data_access_leaves_an_audit_entry(service: Service) -> None:
    c, clin, op = service.client, service.auth("clinician"), service.auth("operator")
    image = png_bytes((real_slice() * 255).astype(np.uint8))
    accesses = [
        (c.get(f"/api/v1/patients/{PATIENT}/context", headers=clin), "patient.context.read", f"patient:{PATIENT}"),
        (c.get(f"/api/v1/patients/{PATIENT}/vitals", headers=clin), "patient.vitals.read", f"patient:{PATIENT}"),
        (c.post(f"/api/v1/enhance?patient_id={PATIENT}", content=image, headers=clin), "image.enhance",
         f"patient:{PATIENT}"),
        (c.post("/api/v1/classify", content=image, headers=op), "image.classify", None),
        (c.get("/api/v1/studies", headers=op), "study.list", "study:*"),
        (c.get("/api/v1/studies/1.2.3", headers=clin), "study.read", "study:1.2.3"),
    ]  # fmt: skip
    assert [r.status_code for r, _, _ in accesses] == [200, 200, 200, 200, 200, 404]
    entries = c.get("/api/v1/admin/audit", headers=service.auth("admin")).json()["entries"]
    assert [e["action"] for e in entries] == [a for _, a, _ in accesses]
    for entry, (_, _, resource) in zip(entries, accesses, strict=True):
        assert entry["resource"] == resource or (resource is None and entry["resource"].startswith("image:sha256:"))
        assert entry["client"] == "127.0.0.1:50000" and entry["at"].endswith("+00:00")
    assert {e["actor"] for e in entries} == {"clinician-1", "operator-1"}
    filtered = c.get("/api/v1/admin/audit", params={"resource": f"patient:{PATIENT}", "action": "patient.*"},
                     headers=service.auth("admin")).json()["entries"]  # fmt: skip
    assert [e["action"] for e in filtered] == ["patient.context.read", "patient.vitals.read"]
    # The admin's own query is audited too.
    again = c.get("/api/v1/admin/audit", params={"action": "audit.read"}, headers=service.auth("admin")).json()
    assert len(again["entries"]) == 2


def test_audit_table_refuses_update_and_delete(service: Service) -> None:
    service.client.get(f"/api/v1/patients/{PATIENT}/context", headers=service.auth("clinician"))
    db = sqlite3.connect(service.settings.api.audit_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only: UPDATE refused"):
            db.execute("UPDATE audit SET actor = 'someone-else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE refused"):
            db.execute("DELETE FROM audit")
        assert db.execute("SELECT actor FROM audit").fetchall() == [("clinician-1",)]
    finally:
        db.close()


def test_no_patient_identifier_in_logs(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    seed_vitals(service.settings, PATIENT, datetime.now(UTC))
    clin = service.auth("clinician")
    with caplog.at_level(logging.DEBUG):
        assert service.client.get(f"/api/v1/patients/{PATIENT}/context", headers=clin).status_code == 200
        assert service.client.get(f"/api/v1/patients/{PATIENT}/vitals", headers=clin).status_code == 200
        image = png_bytes((real_slice() * 255).astype(np.uint8))
        assert service.client.post(f"/api/v1/enhance?patient_id={PATIENT}", content=image, headers=clin).is_success
    # The test's own HTTP client (httpx) logs the URLs it requests; everything else is the server's.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "httpx")
    assert "/api/v1/patients/{patient_id}/context" in text  # the route template is logged ...
    assert PATIENT not in text  # ... never the identifier
    assert service.tokens["clinician"] not in text


def test_an_unexpected_failure_is_a_500_with_a_reason_and_the_connection_lives_on(
    service: Service, live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A real fault no route expects (the audit database closed under the service): 500 ``internal-error`` as
    an ordinary response, the keep-alive connection serves the next request, and the log names the exception
    type and route template but not the request's patient id."""
    service.state.audit.close()
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        with caplog.at_level(logging.INFO):
            conn.request("GET", f"/api/v1/patients/{PATIENT}/context", headers=service.auth("clinician"))
            r = conn.getresponse()
            assert r.status == 500 and json.loads(r.read())["detail"]["reason"] == "internal-error"
            local = conn.sock.getsockname()
            conn.request("GET", "/healthz")
            ok = conn.getresponse()
            ok.read()
            assert ok.status == 200 and conn.sock is not None and conn.sock.getsockname() == local
    finally:
        conn.close()
    # uvicorn's access log prints concrete paths; `aegle serve` turns it off (tests/test_outside_probe.py reads
    # the real server's log), this in-test uvicorn does not.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "uvicorn.access")
    assert "unhandled ProgrammingError in GET /api/v1/patients/{patient_id}/context" in text
    assert PATIENT not in text


# --------------------------------------------------------------------------- routes


def test_patient_context_and_vitals_come_from_the_store(service: Service) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    seed_vitals(service.settings, PATIENT, now)
    clin = service.auth("clinician")
    ctx = service.client.get(f"/api/v1/patients/{PATIENT}/context", params={"at": now.isoformat()}, headers=clin)
    assert ctx.status_code == 200
    body = ctx.json()
    assert body["levels"]["heart_rate"] == pytest.approx(74.0) and body["levels"]["spo2"] == 97.0
    assert body["vector"][-1] == pytest.approx(2 / 7, abs=1e-5)  # 2 of 7 channels present
    assert body["completeness"] == round(2 / 7, 4)
    # One JSON form of a context: what an enhancement at that time reports is the same, without the patient id.
    image = png_bytes((real_slice(64) * 255).astype(np.uint8))
    r = service.client.post("/api/v1/enhance", params={"patient_id": PATIENT, "at": now.isoformat()}, content=image,
                            headers=clin)  # fmt: skip
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["X-Aegle-Applied"])["context"] == {k: v for k, v in body.items() if k != "patient_id"}
    vit = service.client.get(
        f"/api/v1/patients/{PATIENT}/vitals",
        params={"from": (now - timedelta(minutes=2)).isoformat(), "to": now.isoformat()}, headers=clin,
    ).json()  # fmt: skip
    assert len(vit["samples"]) == 2 * 13  # 10 s apart, both ends inclusive
    naive = service.client.get(f"/api/v1/patients/{PATIENT}/context", params={"at": "2026-01-01T10:00:00"},
                               headers=clin)  # fmt: skip
    assert naive.status_code == 400 and naive.json()["detail"]["reason"] == "naive-time"


def test_enhance_png_8_and_16_bit_and_npy_keep_format_and_report_what_was_applied(service: Service) -> None:
    clin = service.auth("clinician")
    img = real_slice()
    seed_vitals(service.settings, PATIENT, datetime.now(UTC))
    r8 = service.client.post(f"/api/v1/enhance?patient_id={PATIENT}", content=png_bytes((img * 255).astype(np.uint8)),
                             headers=clin)  # fmt: skip
    assert r8.status_code == 200 and r8.headers["content-type"] == "image/png"
    applied = json.loads(r8.headers["X-Aegle-Applied"])
    assert applied["model"] == "enhancer-x2" and applied["version"] == "0.0.0-test" and applied["scale"] == 2
    assert applied["backend"] == "onnxruntime" and 0 < applied["strength"] < 2 and len(applied["alphas"]) == 4
    assert applied["context"]["completeness"] == pytest.approx(2 / 7, abs=1e-4)
    assert set(applied["context"]) == {"at", "window_s", "completeness", "levels", "ages_s", "fields", "vector"}
    assert json.loads(png_text(r8.content)["aegle:applied"]) == applied
    from PIL import Image

    out8 = Image.open(io.BytesIO(r8.content))
    assert out8.mode == "L" and out8.size == (128, 128)

    r16 = service.client.post("/api/v1/enhance", content=png_bytes((img * 4000).astype(np.uint16)), headers=clin)
    out16 = np.asarray(Image.open(io.BytesIO(r16.content)))
    assert out16.shape == (128, 128) and out16.max() > 255  # still 16-bit values
    assert json.loads(r16.headers["X-Aegle-Applied"])["context"] is None

    hu = (img * 2000 - 1000).astype(np.float32)  # a float image outside [0, 1] (HU-like)
    rn = service.client.post("/api/v1/enhance", content=npy_bytes(hu), headers=clin)
    out = np.load(io.BytesIO(rn.content))
    assert rn.headers["content-type"] == "application/x-npy" and out.dtype == np.float32 and out.shape == (128, 128)
    assert out.min() >= hu.min() - 1e-3 and out.max() <= hu.max() + 1e-3


def test_classify_returns_the_triage_decision(service: Service) -> None:
    r = service.client.post("/api/v1/classify", content=png_bytes((real_slice(96) * 255).astype(np.uint8)),
                            headers=service.auth("clinician"))  # fmt: skip
    assert r.status_code == 200
    body = r.json()
    assert set(body["probabilities"]) == {"diagnostic", "noisy", "motion-blurred", "low-resolution"}
    assert isinstance(body["enhance"], bool) and body["reason"] and body["model"] == "triage-classifier"


def test_models_route_lists_the_served_models_and_the_paths_that_use_them(service: Service) -> None:
    body = service.client.get("/api/v1/models", headers=service.auth("operator")).json()
    assert {m["name"]: (m["version"], m["backend"]) for m in body["models"]} == {
        "enhancer-x2": ("0.0.0-test", "onnxruntime"), "enhancer-x2-quality": ("0.0.1-test", "onnxruntime"),
        "triage-classifier": ("0.0.0-test", "onnxruntime"),
    }  # fmt: skip
    assert body["missing"] == {}
    assert body["served"] == {  # the tests' settings: both operating points, any version
        "enhancer": {"name": "enhancer-x2", "version": None, "paths": ["live"]},
        "quality_enhancer": {"name": "enhancer-x2-quality", "version": None, "paths": ["study"]},
        "triage": {"name": "triage-classifier", "version": None, "paths": ["study", "classify"]},
    }


def test_readyz_reports_each_check_with_a_reason(service: Service, broker: Any) -> None:
    r = service.client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["models"]["ok"] and checks["store"]["ok"] and checks["pacs"]["ok"]
    assert checks["models"]["reason"] == ("loaded: enhancer enhancer-x2 for live; quality_enhancer enhancer-x2-quality "
                                          "for study; triage triage-classifier for study, classify")
    assert not checks["broker"]["ok"] and "cannot reach broker" in checks["broker"]["reason"]
    service.settings.mqtt = MqttSettings(host="127.0.0.1", port=broker.port, username="aegle-test",
                                         password=broker.users["aegle-test"])  # fmt: skip
    r = service.client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"], r.text
    service.settings.mqtt.password = SecretStr("wrong")
    r = service.client.get("/readyz")
    assert r.status_code == 503 and "refused" in r.json()["checks"]["broker"]["reason"]
    assert service.client.get("/healthz").json() == {"status": "alive"}


def test_readyz_names_a_missing_model(tmp_path: Path, model_root: Path) -> None:
    settings = inference_settings(model_root, tmp_path / "cache", triage={"name": "no-such-model"})
    eng = InferenceEngine.from_settings(settings)
    try:
        svc = Service(service_settings(tmp_path), eng)
        with svc.client:
            checks = svc.client.get("/readyz").json()["checks"]
            assert not checks["models"]["ok"] and "no-such-model" in checks["models"]["reason"]
            r = svc.client.post("/api/v1/classify", content=png_bytes(np.zeros((64, 64), np.uint8)),
                                headers=svc.auth("clinician"))  # fmt: skip
            assert r.status_code == 503 and r.json()["detail"]["reason"] == "model-not-loaded"
    finally:
        eng.close()


# --------------------------------------------------------------------------- over real HTTP


def test_route_families_over_real_http(service: Service, live: LiveServer) -> None:
    seed_vitals(service.settings, PATIENT, datetime.now(UTC))
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/api/v1/models").status_code == 401
        clin, op, admin = service.auth("clinician"), service.auth("operator"), service.auth("admin")
        assert http.get(f"/api/v1/patients/{PATIENT}/context", headers=clin).json()["levels"]["spo2"] == 97.0
        assert http.get(f"/api/v1/patients/{PATIENT}/vitals", headers=clin).json()["samples"]
        image = png_bytes((real_slice() * 255).astype(np.uint8))
        assert http.post("/api/v1/enhance", content=image, headers=clin).headers["content-type"] == "image/png"
        assert http.post("/api/v1/classify", content=image, headers=op).json()["degradations"] is not None
        assert http.get("/api/v1/studies", headers=op).json() == {"results": []}
        assert http.get("/api/v1/models", headers=op).status_code == 200
        assert http.get("/api/v1/admin/audit", headers=admin).json()["entries"]
        assert http.get("/openapi.json", headers=op).json()["paths"]["/api/v1/enhance"]
        metrics = http.get("/metrics", headers=op)
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        for name in ("aegle_api_requests_total", "aegle_api_request_seconds_bucket", "aegle_inference_queue_depth",
                     "aegle_inference_batch_size_bucket", "aegle_inference_seconds_bucket", "aegle_series_total"):
            assert name in text, name  # fmt: skip
        assert 'route="/api/v1/patients/{patient_id}/context"' in text and PATIENT not in text


def test_docs_role_table_matches_the_code(service: Service) -> None:
    table = Path(__file__).resolve().parent.parent / "docs" / "api.md"
    rows = set()
    for line in table.read_text().splitlines():
        if line.startswith("| `") and line.count("|") == 6:
            cells = [c.strip() for c in line.strip("|").split("|")]
            method, path = cells[0].strip("`").split(" ", 1)
            rows.add((method, path, tuple(r for r, mark in zip(ROLES, cells[1:], strict=True) if mark == "✓")))
    assert rows == set(all_routes(service.app))
