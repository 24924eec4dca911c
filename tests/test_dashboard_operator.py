"""The operator view's edge nodes, ingest rate, dead letters and audit log, on real components.

A real Mosquitto with the production policy (core.accounts), a real edge node (its outbox holding an instance the
broker refuses, so it stays queued and is retried), a real ingest worker and the real service
(``server.service.AegleService`` under uvicorn on loopback) whose MQTT monitor reads the statuses and dead letters.
The edge node's retained status and its last will are checked on the broker itself; the operator stream must show
the edge's queue, the ingest dead letters with their reasons (never their payload), and the audit log to admins
only; in Debian's Chromium, a real Orthanc is started, then stopped, and the view must show the PACS down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegle.localservices import Mosquitto, Orthanc, free_port
from aegle.status import edge_statuses
from core import topics
from core.accounts import device, edge
from core.mqtt import MqttPublisher
from core.settings import DashboardSettings, EdgeSettings, PacsSettings, Settings, StoreSettings
from edge.node import EdgeNode
from edge.outbox import Outbox
from server.ingest import IngestWorker
from tests.api_support import LiveServer, service_settings
from tests.support import Collector, ingest_settings, wait_for
from tests.test_dashboard import browser, login, no_models, page  # noqa: F401  (browser, page: fixtures)
from tests.test_dicom_transfer import CT

SITE, DEVICE, EDGE = "ward-op", "mon-op", "edge-op"
USERS = ("aegle-ingest", "aegle-server", "aegle-test")
SECRET_VALUE, SECRET_PATIENT = "4321.5", "enc-secret-77"  # in rejected payloads: must never reach the view


def refused_item(outbox_path: Path) -> None:
    """An instance in the outbox that names another edge: the broker refuses it, so it stays and is retried."""
    Outbox(outbox_path, SITE, "edge-elsewhere").put(CT.read_bytes())


def statuses(collector: Collector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.messages if m.payload]


# --------------------------------------------------------------------------- the edge node's status on the broker


def test_an_edge_node_publishes_a_retained_status_and_marks_itself_offline_when_it_stops(
    broker: Mosquitto, tmp_path: Path
) -> None:
    broker.add_accounts([edge(EDGE, SITE)])
    refused_item(tmp_path / "outbox")
    settings = EdgeSettings(site=SITE, outbox_path=tmp_path / "outbox", dicom_port=free_port(), status_interval_s=0.3)
    node = EdgeNode(settings, broker.mqtt_settings(EDGE))
    node.forwarder.retry_s = 0.2
    watcher = Collector(broker, topics.status_filter("edge"))
    node.start()
    try:
        wait_for(lambda: any(s["counts"]["refused"] >= 2 for s in statuses(watcher)), 20, "a status after retries")
    finally:
        node.stop()
        watcher.close()
    online = [s for s in statuses(watcher) if s["state"] == "online"]
    assert {m.topic for m in watcher.messages} == {f"aegle/v1/{SITE}/status/edge/{EDGE}"}
    latest = online[-1]
    assert latest["edge_id"] == EDGE and latest["site"] == SITE and latest["interval_s"] == 0.3
    assert latest["queue"]["dicom"]["depth"] == 1 and latest["queue"]["dicom"]["bytes"] > 500_000
    assert 0 < latest["queue"]["dicom"]["oldest_age_s"] < 60
    assert latest["counts"]["forwarded"] == 0 and latest["counts"]["retried"] >= latest["counts"]["refused"] >= 2
    assert "Not authorized" in latest["last_error"] and latest["at"].endswith("Z")
    final = statuses(watcher)[-1]
    assert final["state"] == "offline" and final["cause"] == "stopped" and final["queue"]["dicom"]["depth"] == 1
    # Retained: a subscriber that comes later gets the last status at once.
    late = Collector(broker, topics.edge_status(SITE, EDGE))
    try:
        assert late.wait_for(1, 10) and late.messages[0].retain
        assert json.loads(late.messages[0].payload)["state"] == "offline"
    finally:
        late.close()
    # `aegle status --json` lists it under `edges`, read with the configured account.
    listed = edge_statuses(Settings(mqtt=broker.mqtt_settings("aegle-server")))
    assert isinstance(listed, list) and [(e["edge_id"], e["site"], e["state"]) for e in listed] == [
        (EDGE, SITE, "offline")]  # fmt: skip
    refused = edge_statuses(Settings(mqtt=broker.mqtt_settings("aegle-ingest")))  # ingest may not subscribe there
    assert isinstance(refused, str) and "refused the subscription" in refused


def test_a_killed_edge_node_is_marked_offline_by_its_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    broker.add_accounts([edge(EDGE, SITE)])
    watcher = Collector(broker, topics.edge_status(SITE, EDGE))
    env = os.environ | {"AEGLE_MQTT__HOST": "127.0.0.1", "AEGLE_MQTT__PORT": str(broker.port),
                        "AEGLE_MQTT__USERNAME": EDGE, "AEGLE_MQTT__PASSWORD": broker.users[EDGE],
                        "AEGLE_LOG_LEVEL": "WARNING"}  # fmt: skip
    cmd = [sys.executable, "-m", "edge", "--site", SITE, "--outbox", str(tmp_path / "outbox"),
           "--dicom-port", str(free_port()), "--status-interval", "0.5"]  # fmt: skip
    process = subprocess.Popen(cmd, env=env)
    try:
        wait_for(lambda: any(s["state"] == "online" for s in statuses(watcher)), 30, "the node online")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        wait_for(lambda: statuses(watcher)[-1]["state"] == "offline", 10, "the last will")
    finally:
        if process.poll() is None:
            process.kill()
        watcher.close()
    will = statuses(watcher)[-1]
    assert will == {"schema": "aegle.edge-status/1", "site": SITE, "edge_id": EDGE, "state": "offline",
                    "cause": "connection lost"}  # fmt: skip


# --------------------------------------------------------------------------- the service's operator view


@dataclass
class OpStack:
    url: str
    tokens: dict[str, str]
    broker: Mosquitto
    service: Any
    orthanc: Orthanc
    node: EdgeNode
    ingest: IngestWorker


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpStack]:
    """Mosquitto + an edge node + an ingest worker + ``AegleService`` on loopback (no models: the operator view does
    not need them); the PACS is an Orthanc that is not started yet."""
    from server.api.tokens import ROLES
    from server.service import AegleService

    workdir = tmp_path_factory.mktemp("operator")
    broker = Mosquitto(workdir / "mosquitto", service_users=USERS)
    broker.add_accounts([device(DEVICE, SITE), edge(EDGE, SITE)])
    orthanc = Orthanc(workdir / "orthanc", stable_age=1)
    with broker:
        store = StoreSettings(sqlite_path=workdir / "vitals.sqlite")
        ingest = IngestWorker(ingest_settings(broker, workdir, store, worker_id="op-ingest",
                                              status_interval_s=0.5)).start()  # fmt: skip
        refused_item(workdir / "outbox")
        node = EdgeNode(EdgeSettings(site=SITE, outbox_path=workdir / "outbox", dicom_port=free_port(),
                                     status_interval_s=1.0), broker.mqtt_settings(EDGE))  # fmt: skip
        node.forwarder.retry_s = 1.0
        node.start()
        try:
            settings = service_settings(workdir)
            settings.store, settings.inference = store, no_models(workdir)
            settings.mqtt = broker.mqtt_settings("aegle-server")
            user, password = orthanc.auth
            settings.pacs = PacsSettings(dicomweb_url=orthanc.dicomweb_url, username=user, password=password)
            settings.dashboard = DashboardSettings()
            service = AegleService(settings)
            tokens = {role: service.state.tokens.create(f"{role}-op", role) for role in ROLES}
            with LiveServer(service.app) as live:
                yield OpStack(live.url, tokens, broker, service, orthanc, node, ingest)
        finally:
            node.stop()
            ingest.stop()
            orthanc.stop()


def publish_raw(broker: Mosquitto, payloads: list[bytes]) -> None:
    """Messages from the bedside monitor, as it, on its own vitals topic."""
    with MqttPublisher(broker.mqtt_settings(DEVICE), f"{DEVICE}-{time.monotonic_ns()}") as pub:
        for payload in payloads:
            pub.publish(topics.vitals(SITE, DEVICE), payload)
        assert pub.flush(10) and pub.refused_count == 0


def operator_event(http: httpx.Client, ready: Any, timeout: float = 40.0) -> dict[str, Any]:
    """The first operator event for which ``ready(event)`` holds (streams end after 25 s and are reopened)."""
    deadline = time.monotonic() + timeout
    event: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with http.stream("GET", "/dashboard/api/operator/events") as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line.removeprefix("data: "))
                    if event.get("type") == "operator" and ready(event):
                        return event
                if time.monotonic() > deadline:
                    break
    raise AssertionError(f"no operator event as expected within {timeout:.0f} s; the last: {event}")


def log_in(http: httpx.Client, stack: OpStack, role: str) -> None:
    http.cookies.clear()
    r = http.post("/dashboard/login", data={"token": stack.tokens[role]}, headers={"Origin": stack.url})
    assert r.status_code == 303


def test_the_operator_stream_shows_the_edge_queue_and_ingest_dead_letters_with_reasons_never_payloads(
    stack: OpStack,
) -> None:
    monitor = stack.service.monitor
    assert monitor is not None
    wait_for(lambda: monitor.snapshot(int(time.time() * 1000))["ingest"]["workers"], 20, "the ingest status seen")
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    impossible = {"schema": "aegle.vitals/1", "message_id": "op-impossible", "site": SITE, "device_id": DEVICE,
                  "patient_id": SECRET_PATIENT, "timestamp": f"{now}Z",
                  "observations": [{"code": "8867-4", "value": float(SECRET_VALUE), "unit": "/min"}]}  # fmt: skip
    naive = impossible | {"message_id": "op-naive-1", "timestamp": now,
                          "observations": [{"code": "8867-4", "value": 72, "unit": "/min"}]}  # fmt: skip
    good = naive | {"message_id": "op-good-01", "timestamp": f"{now}Z", "patient_id": "enc-op-1"}
    publish_raw(stack.broker, [f"{{not json {SECRET_PATIENT} {SECRET_VALUE}".encode(), b"[1, 2]",
                               json.dumps(impossible).encode(), json.dumps(naive).encode(),
                               json.dumps(good).encode()])  # fmt: skip
    expected = {"malformed_json": 2, "impossible_value": 1, "naive_timestamp": 1}
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        log_in(http, stack, "operator")
        event = operator_event(http, lambda e: e["deadletters"]["by_reason"] == expected and any(
            w["deadlettered"] == expected and w["stored"] >= 1 for w in e["ingest"]["workers"]) and any(
            x["edge_id"] == EDGE and x["counts"]["refused"] >= 1 for x in e["edges"]))  # fmt: skip
    assert event["mqtt"] == {"connected": True, "error": None}
    [node] = [x for x in event["edges"] if x["edge_id"] == EDGE]
    assert node["site"] == SITE and node["state"] == "online" and node["queue"]["dicom"]["depth"] == 1
    assert node["queue"]["dicom"]["oldest_age_s"] > 0 and node["age_s"] < 5 and "Not authorized" in node["last_error"]
    [worker] = [w for w in event["ingest"]["workers"] if w["worker_id"] == "op-ingest"]
    assert worker["site"] == topics.ALL_SITES and worker["state"] == "online" and worker["received"] >= 5
    assert event["ingest"]["rate_per_s"] == pytest.approx(worker["rate_per_s"]) and worker["rate_per_s"] >= 0
    letters = event["deadletters"]
    assert letters["total"] == 4 and sorted(d["reason"] for d in letters["recent"]) == sorted(
        ["malformed_json", "malformed_json", "impossible_value", "naive_timestamp"])  # fmt: skip
    assert {d["topic"] for d in letters["recent"]} == {topics.vitals(SITE, DEVICE)}
    assert all(set(d) == {"at_ms", "reason", "site", "topic"} and d["site"] == SITE for d in letters["recent"])
    shown = json.dumps(event)
    assert SECRET_VALUE not in shown and SECRET_PATIENT not in shown and "payload" not in shown
    assert event["audit"] is None  # an operator may not read the audit log (GET /api/v1/admin/audit)


def test_an_admin_sees_the_newest_audit_entries_and_an_operator_does_not(stack: OpStack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        log_in(http, stack, "operator")
        as_operator = operator_event(http, lambda e: True)
        log_in(http, stack, "admin")
        as_admin = operator_event(http, lambda e: True)
        api = {role: http.get("/api/v1/admin/audit", headers={"Authorization": f"Bearer {stack.tokens[role]}"})
               for role in ("operator", "admin")}  # fmt: skip
    assert as_operator["audit"] is None and api["operator"].status_code == 403  # the same role rule
    entries = as_admin["audit"]
    assert 0 < len(entries) <= 50 and [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert [(e["actor"], e["action"]) for e in entries[:2]] == [("admin-op", "audit.read"),
                                                                ("admin-op", "dashboard.login")]  # fmt: skip
    assert ("operator-op", "dashboard.login") in {(e["actor"], e["action"]) for e in entries}
    logged = {e["id"]: e for e in api["admin"].json()["entries"]}
    assert all(logged[e["id"]] == e for e in entries)  # what GET /api/v1/admin/audit returns for the same entries


def test_browser_operator_view_shows_the_pacs_down_once_orthanc_stops_and_each_edge_node(
    page: Any,  # noqa: F811  (the fixture imported above)
    stack: OpStack,
) -> None:
    stack.orthanc.start()
    login(page, stack, "operator")
    page.wait_for_url(f"{stack.url}/dashboard/operator")
    page.locator('#checks tr[data-component="pacs"][data-ok="true"]').wait_for(timeout=20_000)
    assert "up" in page.locator('#checks tr[data-component="pacs"]').inner_text()
    row = page.locator(f'#edges tr[data-edge="{EDGE}"]')
    assert row.get_attribute("data-queue") == "1" and row.get_attribute("data-state") == "online"
    assert "online" in row.inner_text() and "Not authorized" in row.inner_text()
    page.locator('#workers tr[data-worker="op-ingest"][data-state="online"]').wait_for()
    assert "messages/s" in page.locator("#ingest-rate").inner_text()
    assert page.locator("#audit-section").is_hidden()  # an operator: no audit log
    stack.orthanc.stop()
    page.locator('#checks tr[data-component="pacs"][data-ok="false"]').wait_for(timeout=20_000)
    assert "down" in page.locator('#checks tr[data-component="pacs"]').inner_text()
    assert "Not ready" in page.locator("#overall").inner_text()
    stack.node.stop()  # a node that stops says so: offline, not merely stale
    page.locator(f'#edges tr[data-edge="{EDGE}"][data-state="offline"]').wait_for(timeout=20_000)
    assert "offline" in row.inner_text()
