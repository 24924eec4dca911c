"""The browser dashboard (``/dashboard``, server/dashboard/): login, roles, CSRF, sessions, the ward feed, and the
pages in a real browser.

The first tests drive the real app over HTTP (no models: an empty registry, so nothing is exported). The browser
tests run the real service (``server.service.AegleService`` under uvicorn on loopback, the random-init test
registry of tests/api_support.py) with a real Mosquitto (authentication and the production ACL) and the real
ingest worker writing the SQLite store, and drive Debian's Chromium through Playwright: vitals a device publishes
over MQTT must appear on the ward view, flagged when out of range; the operator view must show each component's
health; no request the page makes may leave 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from aegle.localservices import Mosquitto, free_port
from core import topics
from core.accounts import device
from core.mqtt import MqttPublisher
from core.settings import DashboardSettings, InferenceSettings, PacsSettings, Settings, StoreSettings
from core.vitals import AEGLE_CODES, Observation, Sample, VitalsMessage, to_ms
from server.api import create_app
from server.api.tokens import ROLES
from server.dashboard.ward import WardFeed
from server.ingest import IngestWorker
from server.store import open_store
from tests.api_support import PATIENT, LiveServer, seed_vitals, service_settings
from tests.support import ingest_settings

CHROMIUM = Path("/usr/bin/chromium")
BASE = "http://127.0.0.1:8400"  # the TestClient's address (Host header), so the same-origin checks see a real one
STATIC = Path(__file__).resolve().parents[1] / "server" / "dashboard" / "static"


# --------------------------------------------------------------------------- the app over HTTP, no browser


@dataclass
class Dash:
    client: TestClient
    tokens: dict[str, str]
    settings: Settings
    app: Any

    def login(self, role: str, origin: str = BASE) -> httpx.Response:
        return self.client.post("/dashboard/login", data={"token": self.tokens[role]}, headers={"Origin": origin},
                                follow_redirects=False)  # fmt: skip


def no_models(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(weights_dir=tmp_path / "no-models", cache_dir=tmp_path / "cache", threads=1)


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Dash]:
    settings = service_settings(tmp_path)
    settings.inference = no_models(tmp_path)
    app = create_app(settings)
    tokens = {role: app.state.aegle.tokens.create(f"{role}-1", role) for role in ROLES}
    with TestClient(app, base_url=BASE) as client:
        yield Dash(client, tokens, settings, app)


def test_root_leads_to_the_login_page_then_to_the_view_of_the_role(dash: Dash) -> None:
    r = dash.client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/"
    r = dash.client.get("/dashboard/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    login = dash.client.get("/dashboard/login")
    assert login.status_code == 200 and 'name="token"' in login.text
    assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
    assert dash.login("operator").headers["location"] == "/dashboard/"
    assert dash.client.get("/dashboard/", follow_redirects=False).headers["location"] == "/dashboard/operator"
    dash.client.cookies.clear()
    dash.login("clinician")
    assert dash.client.get("/dashboard/", follow_redirects=False).headers["location"] == "/dashboard/ward"


def test_login_sets_an_httponly_samesite_strict_session_cookie_and_never_echoes_the_token(dash: Dash) -> None:
    r = dash.login("clinician")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("aegle_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie and "Max-Age=28800" in cookie
    assert dash.tokens["clinician"] not in cookie and dash.tokens["clinician"] not in r.text
    info = dash.client.get("/dashboard/api/session").json()
    assert info["name"] == "clinician-1" and info["role"] == "clinician" and info["views"] == ["ward", "studies"]
    assert len(info["csrf"]) >= 32 and dash.tokens["clinician"] not in json.dumps(info)
    # The cookie is the dashboard's only: the API still wants a bearer token.
    assert dash.client.get("/api/v1/models").status_code == 401


@pytest.mark.parametrize(("role", "allowed"), [
    ("clinician", {"ward", "studies"}), ("operator", {"operator", "studies"}), ("admin", {"operator"}),
])  # fmt: skip
def test_each_view_takes_exactly_the_roles_of_the_api_routes_it_shows(dash: Dash, role: str, allowed: set[str]) -> None:
    assert dash.login(role).status_code == 303
    for view, stream in (("ward", "/dashboard/api/ward/events"), ("operator", "/dashboard/api/operator/events"),
                         ("studies", "/dashboard/api/studies")):
        page = dash.client.get(f"/dashboard/{view}", follow_redirects=False)
        if view in allowed:
            assert page.status_code == 200 and f"{view}.js" in page.text, (role, view)
            continue
        assert page.status_code == 403 and "Not allowed" in page.text, (role, view)
        needed = {"ward": ("clinician",), "operator": ("operator", "admin"), "studies": ("clinician", "operator")}[view]
        assert f"needs one of: {', '.join(needed)}" in page.text
        # The streams refuse the same way (JSON, as the API answers): they never start for a wrong role.
        refused = dash.client.get(stream)
        assert refused.status_code == 403 and refused.json()["detail"]["reason"] == "forbidden-role"


def test_login_refuses_unknown_tokens_device_tokens_and_other_origins(dash: Dash) -> None:
    bad = dash.client.post("/dashboard/login", data={"token": "aegle_not-a-token"}, headers={"Origin": BASE})
    assert bad.status_code == 401 and "unknown or revoked" in bad.text and "set-cookie" not in bad.headers
    dev = dash.login("device")
    assert dev.status_code == 403 and "no dashboard view" in dev.text and "set-cookie" not in dev.headers
    for origin in ("http://evil.example", "null", "http://127.0.0.1:8401"):
        cross = dash.login("clinician", origin=origin)
        assert cross.status_code == 403 and "set-cookie" not in cross.headers, origin
    no_origin = dash.client.post("/dashboard/login", data={"token": dash.tokens["clinician"]})
    assert no_origin.status_code == 403
    # A same-origin Referer stands in for a missing Origin.
    referred = dash.client.post("/dashboard/login", data={"token": dash.tokens["clinician"]},
                                headers={"Referer": f"{BASE}/dashboard/login"}, follow_redirects=False)  # fmt: skip
    assert referred.status_code == 303


def test_logout_needs_the_csrf_token_and_ends_the_session(dash: Dash) -> None:
    dash.login("clinician")
    csrf = dash.client.get("/dashboard/api/session").json()["csrf"]
    cookie = dash.client.cookies["aegle_session"]
    for form, origin in (({}, BASE), ({"csrf": "wrong"}, BASE), ({"csrf": csrf}, "http://evil.example")):
        r = dash.client.post("/dashboard/logout", data=form, headers={"Origin": origin}, follow_redirects=False)
        assert r.status_code == 403, (form, origin)
        assert dash.client.get("/dashboard/api/session").status_code == 200  # still logged in
    r = dash.client.post("/dashboard/logout", data={"csrf": csrf}, headers={"Origin": BASE}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert 'aegle_session=""' in r.headers["set-cookie"]
    # The old cookie, replayed, is dead: the session ended on the server.
    dash.client.cookies.set("aegle_session", cookie, path="/dashboard")
    assert dash.client.get("/dashboard/api/session").status_code == 401
    assert dash.client.get("/dashboard/ward", follow_redirects=False).headers["location"] == "/dashboard/login"
    actions = [e.action for e in dash.app.state.aegle.audit.query(action="dashboard.*")]
    assert actions == ["dashboard.login", "dashboard.logout"]


def test_revoking_the_token_ends_its_sessions(dash: Dash) -> None:
    dash.login("clinician")
    assert dash.client.get("/dashboard/api/session").status_code == 200
    assert dash.app.state.aegle.tokens.revoke("clinician-1")
    r = dash.client.get("/dashboard/api/session")
    assert r.status_code == 401 and r.json()["detail"]["reason"] == "invalid-token"
    assert dash.client.get("/dashboard/api/session").json()["detail"]["reason"] == "no-session"  # ended with it


def test_a_session_expires(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    settings.inference = no_models(tmp_path)
    settings.dashboard = DashboardSettings(session_lifetime_s=1.0)
    app = create_app(settings)
    token = app.state.aegle.tokens.create("dr-a", "clinician")
    with TestClient(app, base_url=BASE) as client:
        client.post("/dashboard/login", data={"token": token}, headers={"Origin": BASE})
        assert client.get("/dashboard/ward").status_code == 200
        time.sleep(1.2)
        assert client.get("/dashboard/ward", follow_redirects=False).headers["location"] == "/dashboard/login"
        assert client.get("/dashboard/api/session").json()["detail"]["reason"] == "no-session"


def test_the_dashboard_settings_merge_limits_over_the_clinical_defaults() -> None:
    limits = DashboardSettings(limits={"heart_rate": (40, 130), "motion": (None, None)}).limits
    assert limits["heart_rate"] == (40, 130) and limits["motion"] == (None, None)
    assert limits["spo2"] == DashboardSettings.DEFAULT_LIMITS["spo2"] == (94.0, None)
    with pytest.raises(ValueError, match="unknown channels"):
        DashboardSettings(limits={"pulse": (40, 130)})
    with pytest.raises(ValueError, match="must be below"):
        DashboardSettings(limits={"heart_rate": (130, 40)})


def test_static_assets_are_package_files_that_name_no_other_host() -> None:
    files = sorted(STATIC.iterdir())
    assert {f.name for f in files} >= {"login.html", "ward.html", "operator.html", "dashboard.css", "ward.js"}
    for path in files:
        hosts = set(re.findall(r"(?:[a-z]+:)?//[\w.-]+", path.read_text())) - {"http://www.w3.org"}  # SVG namespace
        assert not hosts, (path.name, hosts)


def sse_events(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """The first ``count`` JSON events of a Server-Sent Event stream."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == count:
                break
    return events


def test_the_ward_stream_needs_a_session_sends_the_ward_and_audits_each_patient_once(dash: Dash) -> None:
    seed_vitals(dash.settings, PATIENT, datetime.now(UTC))
    with LiveServer(dash.app) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.get("/dashboard/api/ward/events").json()["detail"]["reason"] == "no-session"
        login = http.post("/dashboard/login", data={"token": dash.tokens["clinician"]}, headers={"Origin": live.url})
        assert login.status_code == 303
        for _ in range(2):  # a reconnecting page: the patient is audited once for the session
            with http.stream("GET", "/dashboard/api/ward/events") as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                ward = sse_events(r, 1)[0]
            assert ward["type"] == "ward" and [p["patient_id"] for p in ward["patients"]] == [PATIENT]
            values = ward["patients"][0]["values"]
            assert values["heart_rate"]["value"] == 72.0 and values["spo2"]["value"] == 97.0
        assert ward["limits"]["heart_rate"] == [41.0, 110.0] and ward["stale_after_s"] == 30.0
        entries = dash.app.state.aegle.audit.query(action="patient.*")
        assert [(e.action, e.actor, e.resource) for e in entries] == [("patient.ward.view", "clinician-1",
                                                                       f"patient:{PATIENT}")]  # fmt: skip


def test_the_operator_stream_reports_the_readiness_checks_and_failures_to_the_roles_that_may_list_studies(
    dash: Dash,
) -> None:
    studies = dash.app.state.aegle.studies
    studies.record("1.2.3", "1.2.3.4", "failed", {"status": "failed", "failures": [
        {"sop_instance_uid": None, "reason": "pacs-unavailable", "detail": "refused"}]})  # fmt: skip
    studies.record("1.2.5", "1.2.5.6", "processed", {"status": "ok", "failures": []})
    with LiveServer(dash.app) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        seen = {}
        for role in ("operator", "admin"):
            http.cookies.clear()
            http.post("/dashboard/login", data={"token": dash.tokens[role]}, headers={"Origin": live.url})
            with http.stream("GET", "/dashboard/api/operator/events") as r:
                seen[role] = sse_events(r, 1)[0]
        ready = json.loads(http.get("/readyz").text)
        listed = [(e.actor, e.action) for e in dash.app.state.aegle.audit.query(action="study.*")]
    event = seen["operator"]
    assert event["type"] == "operator" and event["ready"] is False
    assert event["checks"] == ready["checks"]  # the same probes as /readyz
    assert not event["checks"]["models"]["ok"] and "model card not found" in event["checks"]["models"]["reason"]
    assert event["checks"]["store"]["ok"] and not event["checks"]["broker"]["ok"] and event["checks"]["pacs"]["ok"]
    assert set(event["models"]["missing"]) == {"enhancer-x2", "enhancer-x2-quality", "triage-classifier"}
    assert event["failures"] == [{"at": event["failures"][0]["at"], "study_uid": "1.2.3", "series_uid": "1.2.3.4",
                                  "status": "failed", "reasons": ["pacs-unavailable"]}]  # fmt: skip
    # An admin sees the operator view, but not the study list: GET /api/v1/studies refuses admins too.
    assert seen["admin"]["failures"] is None and seen["admin"]["checks"] == ready["checks"]
    assert listed == [("operator-1", "study.list")]


# --------------------------------------------------------------------------- the ward feed on a real store


def test_ward_feed_flags_marks_stale_and_computes_the_enhancers_context(tmp_path: Path) -> None:
    settings = Settings(store=StoreSettings(sqlite_path=tmp_path / "vitals.sqlite"),
                        dashboard=DashboardSettings(stale_after_s=30))  # fmt: skip
    store = open_store(settings.store)
    now = to_ms(datetime.now(UTC))
    store.write([
        Sample("enc-1", "ward-1", "mon-1", "8867-4", now - 2000, 72.0, "a"),
        Sample("enc-1", "ward-1", "mon-1", "8867-4", now - 1000, 131.0, "b"),  # newest: above 110
        Sample("enc-1", "ward-1", "mon-1", "59408-5", now - 1000, 89.0, "b"),  # below 94
        Sample("enc-1", "ward-1", "mon-1", "8310-5", now - 120_000, 37.0, "c"),  # two minutes old: stale
        Sample("enc-1", "ward-1", "wear-1", "accel-x", now - 1000, 3.0, "d"),  # not a context channel
        Sample("enc-2", "ward-1", "mon-2", "9279-1", now - 500, 16.0, "e"),
    ])  # fmt: skip
    feed = WardFeed(lambda: store, settings)
    events = feed.poll(now)
    views = {v["patient_id"]: v for e in events if e["type"] == "patients" for v in e["patients"]}
    assert set(views) == {"enc-1", "enc-2"}
    values = views["enc-1"]["values"]
    assert values["heart_rate"]["value"] == 131.0 and values["heart_rate"]["flag"] == "high"
    assert values["spo2"]["flag"] == "low" and not values["spo2"]["stale"]
    assert values["temperature"]["stale"] and values["temperature"]["flag"] is None
    assert values["motion"] is None and "accel_x" not in values
    ctx = views["enc-1"]["context"]
    assert ctx["completeness"] == pytest.approx(3 / 7, abs=1e-4) and ctx["levels"]["heart_rate"] == 101.5
    assert set(ctx["missing"]) == {"respiratory_rate", "systolic_bp", "diastolic_bp", "motion"}
    assert views["enc-2"]["site"] == "ward-1" and views["enc-2"]["values"]["respiratory_rate"]["flag"] is None
    # Nothing new: nothing sent. A new value: only that patient's view.
    assert [e for e in feed.poll(now + 100) if e["type"] == "patients"] == []
    store.write([Sample("enc-2", "ward-1", "mon-2", "9279-1", now + 200, 30.0, "f")])
    changed = feed.poll(now + 300)
    assert [[v["patient_id"] for v in e["patients"]] for e in changed] == [["enc-2"]]  # one message per read
    assert changed[0]["patients"][0]["values"]["respiratory_rate"]["flag"] == "high"
    snapshot = feed.snapshot()
    assert [p["patient_id"] for p in snapshot["patients"]] == ["enc-1", "enc-2"]
    assert {c["key"]: c["unit"] for c in snapshot["channels"]}["temperature"] == "°C"
    trend = snapshot["trends"]["enc-1"]["heart_rate"]  # the newest value per 10 s over the window
    assert trend[-1] == [now - 1000, 131.0] and len(trend) in (1, 2)
    assert snapshot["trends"]["enc-2"]["respiratory_rate"][-1] == [now + 200, 30.0]
    store.close()


# --------------------------------------------------------------------------- the real service in a real browser

SITE, DEVICE = "ward-dash", "mon-dash"
USERS = ("aegle-ingest", "aegle-server", "aegle-test")


@dataclass
class Stack:
    url: str
    tokens: dict[str, str]
    broker: Mosquitto
    service: Any


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Stack]:
    """Mosquitto + the ingest worker + ``AegleService`` on loopback; the PACS is configured at a closed port."""
    from server.service import AegleService

    workdir = tmp_path_factory.mktemp("dashboard")
    broker = Mosquitto(workdir / "mosquitto", service_users=USERS)
    broker.add_accounts([device(DEVICE, SITE)])
    with broker:
        store = StoreSettings(sqlite_path=workdir / "vitals.sqlite")
        ingest = IngestWorker(ingest_settings(broker, workdir, store, worker_id="dash-ingest")).start()
        try:
            settings = service_settings(workdir)
            settings.store = store
            settings.inference = engine.settings
            settings.mqtt = broker.mqtt_settings("aegle-server")
            settings.pacs = PacsSettings(dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web")  # nobody there
            settings.dashboard = DashboardSettings(stale_after_s=4, frames_path=workdir / "frames")
            service = AegleService(settings, engine=engine)
            tokens = {role: service.state.tokens.create(f"{role}-ui", role) for role in ROLES}
            with LiveServer(service.app) as live:
                yield Stack(live.url, tokens, broker, service)
        finally:
            ingest.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed (scripts/setup installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A fresh browser context (no cookies); every request it makes must go to the service on 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()  # closes its streams before the service stops
    assert requests, "the page made no request"
    stray = [u for u in requests if urlsplit(u).hostname != "127.0.0.1" or not u.startswith(stack.url)]
    assert not stray, f"requests left the service: {stray}"


def login(page: Any, stack: Stack, role: str) -> None:
    page.goto(stack.url + "/")
    assert page.url == f"{stack.url}/dashboard/login"
    page.get_by_label("API token").fill(stack.tokens[role])
    page.get_by_role("button", name="Log in").click()


def publish(patient: str, observations: list[Observation], broker: Mosquitto, at: datetime | None = None) -> None:
    """One vitals message from the bedside monitor, over MQTT as the device itself."""
    at = at or datetime.now(UTC)
    message = VitalsMessage(message_id=f"{patient}-{time.monotonic_ns()}", site=SITE, device_id=DEVICE,
                            patient_id=patient, timestamp=at, observations=observations)  # fmt: skip
    with MqttPublisher(broker.mqtt_settings(DEVICE), f"{DEVICE}-{time.monotonic_ns()}") as pub:
        pub.publish(topics.vitals(SITE, DEVICE), message.to_json())
        assert pub.flush(10) and pub.refused_count == 0


def hr(value: float) -> Observation:
    return Observation(code="8867-4", value=value, unit="/min")


def test_browser_login_is_required_and_a_wrong_role_is_refused(page: Any, stack: Stack) -> None:
    page.goto(stack.url + "/dashboard/ward")
    assert page.url == f"{stack.url}/dashboard/login"
    page.get_by_label("API token").fill("aegle_not-a-token")
    page.get_by_role("button", name="Log in").click()
    assert "unknown or revoked" in page.locator("#message").inner_text()
    login(page, stack, "operator")
    page.wait_for_url(f"{stack.url}/dashboard/operator")
    cookie = next(c for c in page.context.cookies() if c["name"] == "aegle_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "aegle_session" not in page.evaluate("document.cookie")  # scripts cannot read it
    response = page.goto(stack.url + "/dashboard/ward")
    assert response.status == 403 and "needs one of: clinician" in page.locator("#message").inner_text()
    page.goto(stack.url + "/dashboard/operator")
    page.get_by_text("operator-ui (operator)").wait_for()
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{stack.url}/dashboard/login")
    page.goto(stack.url + "/dashboard/operator")
    assert page.url == f"{stack.url}/dashboard/login"


def test_browser_vitals_from_mqtt_appear_on_the_ward_view_flagged_when_out_of_range(page: Any, stack: Stack) -> None:
    login(page, stack, "clinician")
    page.wait_for_url(f"{stack.url}/dashboard/ward")
    page.locator("#status", has_text=re.compile(r"^Live$")).wait_for()
    patient = f"enc-ui-{time.monotonic_ns() % 10**6}"
    publish(patient, [hr(72), Observation(code="59408-5", value=97, unit="%"),
                      Observation(code="motion-rms", system=AEGLE_CODES, value=0.2, unit="m/s2")],
            stack.broker)  # fmt: skip
    row = page.locator(f'tr[data-patient="{patient}"]')
    heart = row.locator('td[data-channel="heart_rate"]')
    heart.locator(".num", has_text="72").wait_for()
    assert heart.get_attribute("data-flag") is None
    assert row.locator('td[data-channel="spo2"] .num').inner_text() == "97"
    assert "/min" in page.locator("#ward-head").inner_text() and "°C" in page.locator("#ward-head").inner_text()
    assert row.locator("td.context .pct").inner_text() == "43%"  # 3 of 7 channels: what the enhancer sees now
    started = time.monotonic()
    publish(patient, [hr(150), Observation(code="59408-5", value=88, unit="%")], stack.broker)
    heart.locator(".num", has_text="150").wait_for()
    pushed_s = time.monotonic() - started
    assert heart.get_attribute("data-flag") == "high" and "▲" in heart.inner_text()
    assert row.locator('td[data-channel="spo2"]').get_attribute("data-flag") == "low"
    assert pushed_s < 5, f"the page showed the new value {pushed_s:.1f} s after it was published"
    # No new value for longer than stale_after_s (4 s here): the sensors are marked stale.
    page.wait_for_selector(f'tr[data-patient="{patient}"] td[data-channel="heart_rate"][data-stale="true"]',
                           timeout=15_000)  # fmt: skip
    assert "stale" in heart.inner_text()
    # Each patient shown is audited once for this session, as the API audits a read.
    entries = stack.service.state.audit.query(resource=f"patient:{patient}")
    assert [(e.action, e.actor) for e in entries] == [("patient.ward.view", "clinician-ui")]


def test_browser_operator_view_shows_each_components_health(page: Any, stack: Stack) -> None:
    login(page, stack, "operator")
    page.wait_for_url(f"{stack.url}/dashboard/operator")
    checks = page.locator("#checks tbody tr")
    checks.first.wait_for()
    states = {r.get_attribute("data-component"): r.get_attribute("data-ok") for r in checks.all()}
    assert states == {"models": "true", "broker": "true", "store": "true", "pacs": "false"}
    pacs = page.locator('#checks tr[data-component="pacs"]').inner_text()
    assert "down" in pacs
    assert "Not ready" in page.locator("#overall").inner_text()
    models = page.locator("#models tbody").inner_text()
    assert "enhancer-x2" in models and "triage-classifier" in models and "onnxruntime" in models


def test_browser_ward_view_fits_a_tablet_and_is_keyboard_navigable(page: Any, stack: Stack) -> None:
    page.set_viewport_size({"width": 768, "height": 1024})
    page.goto(stack.url + "/dashboard/login")
    assert page.evaluate("document.activeElement.id") == "token"  # the token field has the focus
    page.keyboard.type(stack.tokens["clinician"])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{stack.url}/dashboard/ward")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 768, f"the page is {width} px wide at a 768 px viewport"
    focused = []
    for _ in range(4):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("(e => e.getAttribute('aria-label') || e.textContent.trim())"
                                     "(document.activeElement)"))
    assert "Log out" in focused and "Patients" in focused, focused


def test_browser_an_open_page_goes_to_the_login_page_when_its_token_is_revoked(page: Any, stack: Stack) -> None:
    tokens, name = stack.service.state.tokens, f"dr-revoked-{time.monotonic_ns() % 10**6}"
    token = tokens.create(name, "clinician")
    page.goto(stack.url + "/dashboard/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{stack.url}/dashboard/ward")
    page.locator("#status", has_text=re.compile(r"^Live$")).wait_for()
    assert tokens.revoke(name)
    page.wait_for_url(f"{stack.url}/dashboard/login", timeout=15_000)  # the stream re-checks every 5 s
