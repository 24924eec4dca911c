"""``aegle status``: the health of every configured component, probed the way the service's ``/readyz`` does.

* broker: a login with the configured account that leaves at once (``core.probe``, as ``/readyz``);
* store: the configured vitals store exists (a SQLite file is never created by the check) and answers its ping;
* PACS: a QIDO-RS query for one series on the configured DICOMweb server (none configured counts as up: derived
  series then go back to the caller only, as ``/readyz`` says);
* models: each model some input path uses, loaded from the registry as the service loads it at start-up (sha256
  checked, version compared with the settings, prepared for the backend), with its role and paths.

Every probe gives up after ``settings.api.probe_timeout_s`` seconds. The result has ``/readyz``'s form:
``{"ready": bool, "checks": {name: {"ok": bool, "reason": str}}}``, plus ``edges``: each edge node's retained status
on the broker (docs/edge.md), or why it could not be read. Edge nodes do not change ``ready``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aegle.stores import StoreMissing, describe, open_existing
from core import MqttConnectError, Settings, connect, disconnect, new_client, probe, subscribe, topics


def check_broker(settings: Settings) -> tuple[bool, str]:
    """Log in to the broker with the configured account and leave."""
    return probe(settings.mqtt, settings.api.probe_timeout_s, f"aegle-status-{time.monotonic_ns()}")


def check_store(settings: Settings) -> tuple[bool, str]:
    """The configured vitals store exists and answers."""
    try:
        open_existing(settings.store).close()
    except StoreMissing as exc:
        return False, str(exc)
    return True, f"{describe(settings.store)} answers"


def check_pacs(settings: Settings) -> tuple[bool, str]:
    """A QIDO-RS query for one series on the configured DICOMweb PACS."""
    pacs_settings = settings.pacs
    if not pacs_settings.dicomweb_url:
        return True, "no PACS configured (DICOM results are returned to the caller only)"
    from server import DicomWebStore, PacsError

    pacs = DicomWebStore(pacs_settings.dicomweb_url, pacs_settings.username, pacs_settings.secret(),
                         timeout=settings.api.probe_timeout_s)  # fmt: skip
    try:
        pacs.search_series(limit=1)
    except PacsError as exc:
        return False, f"PACS {pacs_settings.dicomweb_url}: {exc}"
    finally:
        pacs.close()
    return True, f"PACS {pacs_settings.dicomweb_url} answers QIDO-RS"


def check_models(settings: Settings) -> dict[str, tuple[bool, str]]:
    """``model NAME`` → loaded or why not, for each model some input path uses (``registry_report`` names them)."""
    from server import InferenceEngine, registry_report

    engine = InferenceEngine.from_settings(settings.inference, warm_up=False)
    try:
        checks = {}
        for entry in registry_report(settings.inference):
            if not entry["paths"]:
                continue
            name, serves = entry["name"], f"{entry['role']} for {', '.join(entry['paths'])}"
            if name in engine.missing:
                checks[f"model {name}"] = (False, f"{serves}: {engine.missing[name]}")
                continue
            served = engine.model(name)
            card = served.card
            checks[f"model {name}"] = (True, f"{serves}: version {card.version}, sha256 {card.sha256[:12]}…, "
                                             f"on {served.backend.name}")  # fmt: skip
        return checks
    finally:
        engine.close()


def edge_statuses(settings: Settings, wait_s: float = 0.5) -> list[dict[str, Any]] | str:
    """Each edge node's retained status (``aegle/v1/+/status/edge/+``), read with the configured account; a
    sentence saying why not when the broker cannot be reached or refuses the subscription."""
    found: dict[str, bytes] = {}
    client = new_client(settings.mqtt, f"aegle-status-edges-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, message: found.__setitem__(message.topic, message.payload)
    try:
        connect(client, settings.mqtt, settings.api.probe_timeout_s)
    except MqttConnectError as exc:
        return f"not read: {exc.reason}"
    try:
        [code] = subscribe(client, topics.status_filter("edge"), timeout=settings.api.probe_timeout_s)
        if code.is_failure:
            return f"not read: the broker refused the subscription ({code})"
        time.sleep(wait_s)  # retained messages follow the SUBACK at once
    finally:
        disconnect(client)
    edges = []
    for topic, payload in sorted(found.items()):
        site, _, edge_id = topics.parse_status_topic(topic)
        try:
            edges.append({"site": site, "edge_id": edge_id} | json.loads(payload))
        except ValueError:
            edges.append({"site": site, "edge_id": edge_id, "state": "unreadable status"})
    return edges


def status(settings: Settings) -> dict[str, Any]:
    """Every check, in ``/readyz``'s form; a check that breaks is reported as down with its error."""
    checks: dict[str, tuple[bool, str]] = {}
    for name, check in (("broker", check_broker), ("store", check_store), ("pacs", check_pacs)):
        try:
            checks[name] = check(settings)
        except Exception as exc:  # a probe that breaks says "down", it never stops the others
            checks[name] = (False, f"{type(exc).__name__}: {exc}")
    try:
        checks |= check_models(settings)
    except Exception as exc:
        checks["models"] = (False, f"inference engine not started: {type(exc).__name__}: {exc}")
    try:
        edges: list[dict[str, Any]] | str = edge_statuses(settings)
    except Exception as exc:  # like a probe: reported, never fatal
        edges = f"not read: {type(exc).__name__}: {exc}"
    return {"ready": all(ok for ok, _ in checks.values()),
            "checks": {name: {"ok": ok, "reason": reason} for name, (ok, reason) in checks.items()},
            "edges": edges}  # fmt: skip
