"""``aegle status``: the health of every configured component, probed the way the service's ``/readyz`` does.

* broker: a login with the configured account that leaves at once (``core.probe``, as ``/readyz``);
* store: the configured vitals store exists (a SQLite file is never created by the check) and answers its ping;
* PACS: a QIDO-RS query for one series on the configured DICOMweb server (none configured counts as up: derived
  series then go back to the caller only, as ``/readyz`` says);
* models: each model some input path uses, loaded from the registry as the service loads it at start-up (sha256
  checked, version compared with the settings, prepared for the backend), with its role and paths.

Every probe gives up after ``settings.api.probe_timeout_s`` seconds. The result has ``/readyz``'s form:
``{"ready": bool, "checks": {name: {"ok": bool, "reason": str}}}``.
"""

from __future__ import annotations

import time
from typing import Any

from aegle.stores import StoreMissing, describe, open_existing
from core import Settings, probe


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
    return {"ready": all(ok for ok, _ in checks.values()),
            "checks": {name: {"ok": ok, "reason": reason} for name, (ok, reason) in checks.items()}}  # fmt: skip
