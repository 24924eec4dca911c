"""The operator's ``aegle`` commands: ``--help`` everywhere, ``models list|show``, ``status`` against a real broker,
store and PACS, and ``context`` / ``vitals`` saying which store they read — the real command in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from aegle.cli import build_parser
from aegle.localservices import Mosquitto, Orthanc, free_port
from core.vitals import Sample, to_ms
from gan.registry import CARD_FILE, load_card
from server.store.sqlite import SQLiteStore


def aegle(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AEGLE_")}
    return subprocess.run([sys.executable, "-m", "aegle.cli", *args], capture_output=True, text=True, timeout=300,
                          env=clean | (env or {}))  # fmt: skip


def registry_env(model_root: Path, cache: Path) -> dict[str, str]:
    """The test registry with its versions (random-init weights), a model cache, one thread."""
    return {"AEGLE_INFERENCE__WEIGHTS_DIR": str(model_root), "AEGLE_INFERENCE__ENHANCER__VERSION": "0.0.0-test",
            "AEGLE_INFERENCE__QUALITY_ENHANCER__VERSION": "0.0.1-test",
            "AEGLE_INFERENCE__TRIAGE__VERSION": "0.0.0-test", "AEGLE_INFERENCE__CACHE_DIR": str(cache),
            "AEGLE_INFERENCE__THREADS": "1"}  # fmt: skip


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and subcommand of the parser, as the words that name it."""
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*words, name))


def test_help_works_everywhere_and_names_the_program_aegle() -> None:
    every = list(commands(build_parser()))
    assert ("train", "enhancer") in every and ("models", "show") in every and ("enhance",) in every
    assert ("train", "classifier") in every and ("train", "hybrid-gan") in every and ("status",) in every
    for words in [*every, ("train", "classifier", "calibrate")]:
        done = aegle(*words, "--help")
        assert done.returncode == 0, (words, done.stderr)
        usage = " ".join(["aegle", *words])
        assert done.stdout.startswith(f"usage: {usage}"), (words, done.stdout[:200])
        assert "python -m" not in done.stdout.split("\n\n")[0], words  # the usage names aegle, not the module
    for family, *task in (("enhancer",), ("classifier", "triage"), ("hybrid-gan",)):  # option errors name aegle
        done = aegle("train", family, *task, "--bogus")
        assert done.returncode == 2 and "python -m" not in done.stderr, (family, done.stderr)
        assert f"aegle train {family}: error: unrecognized arguments: --bogus" in done.stderr, done.stderr


def test_models_list_and_show(model_root: Path, tmp_path: Path) -> None:
    env = registry_env(model_root, tmp_path)
    plain, listed = aegle("models", env=env), aegle("models", "list", env=env)
    assert plain.returncode == listed.returncode == 0 and plain.stdout == listed.stdout
    report = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["role"], e["name"], e["registry_version"], e["status"]) for e in report] == [
        ("enhancer", "enhancer-x2", "0.0.0-test", "ok"),
        ("quality_enhancer", "enhancer-x2-quality", "0.0.1-test", "ok"),
        ("triage", "triage-classifier", "0.0.0-test", "ok"),
    ]  # fmt: skip

    shown = aegle("models", "show", "enhancer-x2-quality", env=env)
    assert shown.returncode == 0, shown.stderr
    card = json.loads(shown.stdout)
    stored = load_card(model_root / "enhancer-x2-quality" / CARD_FILE)
    assert (card["name"], card["version"], card["sha256"], card["metrics"]) == (
        stored.name, stored.version, stored.sha256, stored.metrics)
    assert card["config"] == {"channels": 16, "n_blocks": 2} and card["training"]["command"] == "pytest"
    assert card["served_as"] == [{"role": "quality_enhancer", "version": "0.0.1-test", "paths": ["study"],
                                  "status": "ok"}]  # fmt: skip
    unserved = json.loads(aegle("models", "show", "hybrid-gan-dcgan", env=env).stdout)
    assert unserved["served_as"] == [] and unserved["synthetic_output"] is True

    missing = aegle("models", "show", "no-such-model", env=env)
    assert missing.returncode == 1 and "no model 'no-such-model'" in missing.stderr
    assert "enhancer-x2, enhancer-x2-quality" in missing.stderr  # what the registry holds instead


def test_context_and_vitals_name_their_store_and_never_create_one(tmp_path: Path) -> None:
    db = tmp_path / "vitals.sqlite"
    t0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    with SQLiteStore(db) as store:
        store.write([Sample("enc-9", "ward-1", "mon-9", "8310-5", to_ms(t0), 37.2, "t0"),
                     Sample("enc-9", "ward-1", "wear-9", "motion-rms", to_ms(t0), 0.4, "m0")])  # fmt: skip
    env = {"AEGLE_STORE__SQLITE_PATH": str(db)}
    context = aegle("context", "enc-9", "--at", "2026-11-21T10:00:30Z", env=env)
    assert context.returncode == 0 and f"reading SQLite store {db}" in context.stderr
    ctx = json.loads(context.stdout)
    assert ctx["levels"]["temperature"] == 37.2
    assert ctx["channels"]["temperature"] == {"code": "8310-5", "name": "Body temperature", "unit": "Cel"}
    assert ctx["channels"]["heart_rate"]["unit"] == "/min" and ctx["channels"]["motion"]["code"] == "motion-rms"
    vitals = aegle("vitals", "enc-9", "--from", "2026-11-21T09:59Z", "--to", "2026-11-21T10:01Z", env=env)
    assert f"reading SQLite store {db}" in vitals.stderr
    rows = sorted((json.loads(line) for line in vitals.stdout.splitlines()), key=lambda r: r["code"])
    assert [(r["code"], r["name"], r["unit"], r["value"]) for r in rows] == [
        ("8310-5", "Body temperature", "Cel", 37.2), ("motion-rms", "Motion (RMS dynamic acceleration)", "m/s2", 0.4)]

    absent = tmp_path / "var" / "other.sqlite"  # e.g. run from another directory than the demo's
    for args in (("context", "enc-9"), ("vitals", "enc-9")):
        done = aegle(*args, env={"AEGLE_STORE__SQLITE_PATH": str(absent)})
        assert done.returncode == 1 and done.stdout == ""
        assert f"SQLite store {absent} does not exist" in done.stderr and "AEGLE_STORE__SQLITE_PATH" in done.stderr
    assert not absent.exists() and not absent.parent.exists()


def test_status_probes_every_component(broker: Mosquitto, orthanc: Orthanc, model_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "vitals.sqlite"
    SQLiteStore(db).close()
    user, password = orthanc.auth
    env = registry_env(model_root, tmp_path / "cache") | {
        "AEGLE_MQTT__HOST": "127.0.0.1", "AEGLE_MQTT__PORT": str(broker.port), "AEGLE_MQTT__USERNAME": "aegle-test",
        "AEGLE_MQTT__PASSWORD": broker.users["aegle-test"], "AEGLE_STORE__SQLITE_PATH": str(db),
        "AEGLE_PACS__DICOMWEB_URL": orthanc.dicomweb_url, "AEGLE_PACS__USERNAME": user,
        "AEGLE_PACS__PASSWORD": password, "AEGLE_API__PROBE_TIMEOUT_S": "2",
    }  # fmt: skip
    up = aegle("status", "--json", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    report = json.loads(up.stdout)
    assert report["ready"] is True
    assert list(report["checks"]) == ["broker", "store", "pacs", "model enhancer-x2", "model enhancer-x2-quality",
                                      "model triage-classifier"]  # fmt: skip
    assert "connected to 127.0.0.1" in report["checks"]["broker"]["reason"]
    assert "quality_enhancer for study: version 0.0.1-test" in report["checks"]["model enhancer-x2-quality"]["reason"]

    down = aegle("status", env=env | {
        "AEGLE_MQTT__PASSWORD": "wrong", "AEGLE_STORE__SQLITE_PATH": str(tmp_path / "absent.sqlite"),
        "AEGLE_PACS__DICOMWEB_URL": f"http://127.0.0.1:{free_port()}/dicom-web",
        "AEGLE_INFERENCE__TRIAGE__VERSION": "9.9.9",
    })  # fmt: skip
    assert down.returncode == 1
    lines = {line.split()[0] + (" " + line.split()[1] if line.startswith("model") else ""): line
             for line in down.stdout.splitlines()}  # fmt: skip
    assert "DOWN" in lines["broker"] and "refused" in lines["broker"]
    assert "DOWN" in lines["store"] and "absent.sqlite does not exist" in lines["store"]
    assert "DOWN" in lines["pacs"]
    assert "DOWN" in lines["model triage-classifier"] and "9.9.9" in lines["model triage-classifier"]
    assert " up " in lines["model enhancer-x2"]
    assert "edge nodes: not read" in down.stdout  # the broker refused the login
    assert not (tmp_path / "absent.sqlite").exists()
