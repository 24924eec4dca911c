"""Shared state for several replicas: tokens, audit log and study log on PostgreSQL (the same behaviour as on
SQLite), two service replicas behind one address, and two Orthanc processes sharing one PostgreSQL index.

Against the PostgreSQL server of this machine, reached through its unix socket (``/var/run/postgresql``: a
network namespace made by ``unshare -n`` cannot reach 127.0.0.1:5432 of the host, but it sees the socket). Each
test creates its own database (ICU locale ``en-US``, where text does not sort byte by byte) and drops it.
"""

from __future__ import annotations

import copy
import io
import itertools
import os
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aegle.localservices import Orthanc
from core.settings import ApiSettings, Settings
from server.api import create_app
from server.api.audit import AuditLog
from server.api.database import Database, Schema
from server.api.studylog import StudyLog
from server.api.tokens import TokenStore, server_secret
from server.inference import InferenceEngine
from server.pacs import DicomWebStore
from tests.api_support import LiveServer, service_settings
from tests.dicom_support import pydicom_file

SOCKET_DIR = os.environ.get("AEGLE_TEST_PGHOST", "/var/run/postgresql")
PG_USER = os.environ.get("AEGLE_TEST_PGUSER", "postgres")
SECRET = b"s" * 32


def pg_url(database: str) -> str:
    """A URL of ``database`` through the unix socket."""
    return f"postgresql://{PG_USER}@/{database}?host={SOCKET_DIR}"


def admin(sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the existing database ``test`` (creating and dropping databases, looking at sessions)."""
    with psycopg.connect(pg_url("test"), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A new, empty database (dropped afterwards); its name."""
    name = f"aegle_test_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    try:
        yield name
    finally:
        admin(f"DROP DATABASE {name} WITH (FORCE)")


class Backend:
    """Where the stores of one test live: SQLite files under a directory, or one PostgreSQL database."""

    def __init__(self, directory: Path, database: str | None) -> None:
        self.directory, self.database = directory, database

    def location(self, store: str) -> Path | str:
        """The SQLite file of ``store``, or the database's URL."""
        return self.directory / f"{store}.sqlite" if self.database is None else pg_url(self.database)

    def raw(self, store: str, sql: str) -> None:
        """Run ``sql`` outside the stores, straight through the driver."""
        if self.database is None:
            with sqlite3.connect(self.directory / f"{store}.sqlite") as conn:
                conn.execute(sql)
        else:
            with psycopg.connect(pg_url(self.database), autocommit=True) as conn:
                conn.execute(sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each store test runs on both backends: the same behaviour is expected of both."""
    if request.param == "sqlite":
        return Backend(tmp_path, None)
    return Backend(tmp_path, request.getfixturevalue("pg_database"))


def opened(factory: Callable[[], Any], count: int = 2) -> list[Any]:
    """``count`` stores from ``factory`` (two replicas' connections to one location)."""
    return [factory() for _ in range(count)]


# --------------------------------------------------------------------------- the stores, on both backends


def test_tokens_work_and_revocations_count_across_connections(backend: Backend) -> None:
    a, b = opened(lambda: TokenStore(backend.location("tokens"), SECRET))
    try:
        token = a.create("clinician-1", "clinician")
        assert b.authenticate(token) == a.authenticate(token) and b.authenticate(token).role == "clinician"
        assert b.authenticate(token + "x") is None
        with pytest.raises(ValueError, match="already exists"):
            b.create("clinician-1", "operator")
        b.create("Zed-2", "admin")
        # Byte order, as SQLite sorts (an en-US collation would put clinician-1 first).
        assert [t.name for t in a.list()] == ["Zed-2", "clinician-1"]
        assert b.revoke("clinician-1") and not a.revoke("clinician-1")
        assert a.authenticate(token) is None  # at once, through the other connection
        assert [t.revoked is not None for t in a.list()] == [False, True]
    finally:
        a.close()
        b.close()
    if backend.database is None:
        assert (backend.directory / "tokens.sqlite").stat().st_mode & 0o777 == 0o600


def test_audit_queries_filter_alike_and_the_log_refuses_changes(backend: Backend) -> None:
    a, b = opened(lambda: AuditLog(backend.location("audit")))
    try:
        start = datetime.now(UTC)
        a.record("alice", "clinician", "patient.vitals.read", "patient:p1", "10.0.0.1:1")
        b.record("bob", "operator", "a_b.read", "study:1.2", "10.0.0.2:2", "detail")
        a.record("alice", "clinician", "axb.read", "study:1.2", "10.0.0.1:3")
        b.record("carol", "admin", "100%.read", "audit", "10.0.0.3:4")
        b.record("carol", "admin", "100x.read", "audit", "10.0.0.3:5")
        for log in (a, b):
            assert [e.action for e in log.query()] == [
                "patient.vitals.read", "a_b.read", "axb.read", "100%.read", "100x.read"
            ]  # fmt: skip
            assert [e.actor for e in log.query(resource="study:1.2")] == ["bob", "alice"]
            assert [e.action for e in log.query(actor="alice", action="patient.*")] == ["patient.vitals.read"]
            assert [e.action for e in log.query(action="a_b*")] == ["a_b.read"]  # _ is not a wildcard
            assert [e.action for e in log.query(action="100%*")] == ["100%.read"]  # nor is %
            assert [e.action for e in log.query(limit=2, newest_first=True)] == ["100x.read", "100%.read"]
            assert len(log.query(since=start - timedelta(seconds=1), until=datetime.now(UTC))) == 5
            assert log.query(since=datetime.now(UTC) + timedelta(seconds=1)) == []
        entry = b.query(actor="bob")[0].to_dict()
        assert entry["detail"] == "detail" and entry["client"] == "10.0.0.2:2" and entry["at"] >= start.isoformat()
    finally:
        a.close()
        b.close()
    for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
            backend.raw("audit", sql)
    if backend.database is not None:
        with pytest.raises(psycopg.Error, match="append-only: TRUNCATE"):
            backend.raw("audit", "TRUNCATE audit")
    log = AuditLog(backend.location("audit"))
    try:
        assert len(log.query()) == 5 and {e.actor for e in log.query()} == {"alice", "bob", "carol"}
    finally:
        log.close()


def test_study_log_lists_newest_first_across_connections(backend: Backend) -> None:
    a, b = opened(lambda: StudyLog(backend.location("studies")))
    try:
        a.record("1.2.1", "1.2.1.1", "processed", {"counts": {"enhanced": 2}, "note": "100% ünïcode"})
        b.record("1.2.2", "1.2.2.1", "failed", {"failures": [{"reason": "truncated"}]})
        a.record("1.2.1", "1.2.1.2", "processed", {"counts": {"enhanced": 1}})
        for log in (a, b):
            assert [r["source_series_uid"] for r in log.list()] == ["1.2.1.2", "1.2.2.1", "1.2.1.1"]
            assert [r["source_series_uid"] for r in log.list(study_uid="1.2.1")] == ["1.2.1.2", "1.2.1.1"]
            assert [r["outcome"] for r in log.list(None, 1)] == ["processed"]
            assert log.list(study_uid="1.2.1")[1]["result"] == {"counts": {"enhanced": 2}, "note": "100% ünïcode"}
            assert log.list(study_uid="9.9") == []
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- PostgreSQL only


def test_replicas_starting_together_create_the_schema_once(pg_database: str) -> None:
    url, errors, stores = pg_url(pg_database), [], []

    def start() -> None:
        try:
            stores.extend([TokenStore(url, SECRET), AuditLog(url), StudyLog(url)])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 18
    tables = {r[0] for r in admin_in(pg_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"tokens", "audit", "series_results"}


def admin_in(database: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run in ``database``."""
    with psycopg.connect(pg_url(database), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_a_cut_connection_is_opened_again(pg_database: str) -> None:
    tokens, log = TokenStore(pg_url(pg_database), SECRET), AuditLog(pg_url(pg_database))
    try:
        token = tokens.create("device-1", "device")

        def cut() -> None:
            admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (pg_database,))

        cut()
        assert tokens.authenticate(token) is not None  # a read: run again on a new connection
        cut()
        with pytest.raises(psycopg.OperationalError):  # a write is not repeated (it may have been done) ...
            log.record("a", "admin", "x", "y", "z")
        log.record("a", "admin", "x", "y", "z")  # ... the next statement reconnects
        assert len(log.query()) == 1
    finally:
        tokens.close()
        log.close()


def test_schema_placeholders_and_percent_signs_reach_postgresql_unchanged(pg_database: str) -> None:
    db = Database(pg_url(pg_database), Schema("CREATE TABLE IF NOT EXISTS t (id {key}, v {text} NOT NULL);"))
    try:
        assert db.execute("INSERT INTO t (v) VALUES (?), ('50%')", ("a?b",)) == 2
        assert db.query("SELECT id, v FROM t WHERE v LIKE '%' || ? ORDER BY id", ("?b",)) == [(1, "a?b")]
        assert db.query("SELECT v FROM t WHERE v LIKE '%\\%' ESCAPE '\\'") == [("50%",)]
    finally:
        db.close()


def test_settings_keep_the_database_password_out_of_the_url(tmp_path: Path) -> None:
    for url in ("postgresql://aegle:hunter2@db/aegle", "postgresql://aegle@db/aegle?password=hunter2"):
        for make, kwargs in ((ApiSettings, {"database_url": url}), (Settings, {"api": {"database_url": url}})):
            with pytest.raises(ValidationError, match="must not hold the password") as caught:
                make(**kwargs)
            assert "hunter2" not in str(caught.value)
    with pytest.raises(ValidationError, match="postgresql://"):
        ApiSettings(database_url="mysql://aegle@db/aegle")
    (tmp_path / "pw").write_text("hunter2\n")
    api = ApiSettings(database_url="postgresql://aegle@db/aegle", database_password_file=tmp_path / "pw")
    assert api.database_secret() == "hunter2" and "hunter2" not in repr(api)


def test_replicas_sharing_a_database_do_not_make_their_own_token_secret(tmp_path: Path, pg_database: str) -> None:
    api = ApiSettings(database_url=pg_url(pg_database), token_secret_file=tmp_path / "secret")
    with pytest.raises(FileNotFoundError, match="same secret"):
        server_secret(api)
    assert not api.token_secret_file.exists()
    api.token_secret_file.write_text("0123456789abcdef0123456789abcdef\n")
    assert server_secret(api) == b"0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- two replicas behind one address


def round_robin(backends: list[str]) -> Starlette:
    """One address in front of the replicas, as a load balancer: each request goes to the next replica in turn
    (deterministic, so the test knows which one answered; the answer says it in ``X-Replica``)."""
    turn = itertools.count()
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        index = next(turn) % len(backends)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        answer = await client.request(
            request.method, backends[index] + request.url.path, params=request.query_params,
            headers=headers, content=await request.body(),
        )  # fmt: skip
        dropped = ("content-length", "content-encoding", "transfer-encoding", "connection")
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in dropped}
        return Response(answer.content, answer.status_code, headers=kept | {"X-Replica": str(index)})

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def ct_series() -> Dataset:
    """pydicom's real CT_small.dcm as a new study of its own."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_two_replicas_behind_one_address_agree_on_tokens_audit_and_studies(
    tmp_path: Path, pg_database: str, engine: InferenceEngine
) -> None:
    url = pg_url(pg_database)
    replicas = [service_settings(tmp_path / name, database_url=url, token_secret="shared-secret-" + "x" * 20)
                for name in ("a", "b")]  # fmt: skip
    for settings in replicas:
        settings.inference = engine.settings
    first = TokenStore.from_settings(replicas[0].api)  # `aegle token create` on any replica
    admin_token = first.create("admin-1", "admin")
    first.close()
    apps = [create_app(settings, engine=engine) for settings in replicas]
    with LiveServer(apps[0]) as a, LiveServer(apps[1]) as b, LiveServer(round_robin([a.url, b.url])) as front, \
            httpx.Client(base_url=front.url, timeout=60) as client:  # fmt: skip
        served: list[str] = []

        def call(method: str, path: str, token: str, headers: dict[str, str] | None = None, **kwargs: Any) \
                -> httpx.Response:  # fmt: skip
            headers = {"Authorization": f"Bearer {token}"} | (headers or {})
            response = client.request(method, path, headers=headers, **kwargs)
            served.append(response.headers["X-Replica"])
            return response

        def direct(replica: LiveServer, path: str, token: str) -> int:
            return httpx.get(replica.url + path, headers={"Authorization": f"Bearer {token}"}).status_code

        # A token created through one replica works on the other.
        r = call("POST", "/api/v1/admin/tokens", admin_token, json={"name": "clinician-1", "role": "clinician"})
        assert r.status_code == 201, r.text
        clinician = r.json()["token"]
        assert call("GET", "/api/v1/studies", clinician).status_code == 200
        assert served == ["0", "1"]
        operator = call("POST", "/api/v1/admin/tokens", admin_token, json={"name": "op-1", "role": "operator"})
        operator_token = operator.json()["token"]

        # A study processed by one replica is listed by the other.
        source = ct_series()
        r = call("POST", "/api/v1/enhance/dicom", operator_token, content=dicom_bytes(source),
                 headers={"Content-Type": "application/dicom"})  # fmt: skip
        assert r.status_code == 200, r.text
        r = call("GET", f"/api/v1/studies/{source.StudyInstanceUID}", clinician)
        assert r.status_code == 200, r.text
        assert [x["source_series_uid"] for x in r.json()["results"]] == [source.SeriesInstanceUID]
        assert served[-2:] == ["1", "0"]
        for replica in (a, b):
            listed = httpx.get(f"{replica.url}/api/v1/studies", headers={"Authorization": f"Bearer {clinician}"})
            assert [x["study_uid"] for x in listed.json()["results"]] == [source.StudyInstanceUID]

        # A revoke on one replica is refused on the other at once.
        assert call("DELETE", "/api/v1/admin/tokens/clinician-1", admin_token).status_code == 200
        assert call("GET", "/api/v1/studies", clinician).status_code == 401
        assert served[-2:] == ["1", "0"]
        assert direct(a, "/api/v1/studies", clinician) == direct(b, "/api/v1/studies", clinician) == 401
        assert direct(a, "/api/v1/studies", operator_token) == direct(b, "/api/v1/studies", operator_token) == 200

        # Audit entries written by both replicas are visible from either, the same.
        views = []
        for replica in (a, b):
            r = httpx.get(f"{replica.url}/api/v1/admin/audit", params={"action": "token.*"},
                          headers={"Authorization": f"Bearer {admin_token}"})  # fmt: skip
            views.append([(e["id"], e["action"], e["resource"]) for e in r.json()["entries"]])
        assert views[0] == views[1]
        assert [entry[1:] for entry in views[0]] == [
            ("token.create", "token:clinician-1"), ("token.create", "token:op-1"), ("token.revoke", "token:clinician-1")
        ]  # fmt: skip  (written by replicas 0, 0 and 1)
        studied = httpx.get(f"{b.url}/api/v1/admin/audit", params={"resource": f"study:{source.StudyInstanceUID}"},
                            headers={"Authorization": f"Bearer {admin_token}"}).json()["entries"]  # fmt: skip
        assert [(e["actor"], e["action"]) for e in studied] == [("clinician-1", "study.read")]  # written by 0
    assert served == ["0", "1", "0", "1", "0", "1", "0"]


# --------------------------------------------------------------------------- Orthanc on a shared PostgreSQL index


def test_two_orthancs_share_one_postgresql_index(tmp_path: Path, pg_database: str) -> None:
    index = f"postgresql:///{pg_database}?host={SOCKET_DIR}&user={PG_USER}"
    users = {"aegle": "orthanc-test-password"}
    writer = Orthanc(tmp_path / "orthanc-a", users=users, index_url=index, storage=tmp_path / "storage")
    reader = Orthanc(tmp_path / "orthanc-b", users=users, index_url=index, storage=tmp_path / "storage")
    first = ct_series()
    series = [first] + [copy.deepcopy(first) for _ in range(2)]
    for number, ds in enumerate(series, 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
    study, series_uid = first.StudyInstanceUID, first.SeriesInstanceUID
    with writer, reader, DicomWebStore(writer.dicomweb_url, *writer.auth) as into, \
            DicomWebStore(reader.dicomweb_url, *reader.auth) as out_of:  # fmt: skip
        assert out_of.search_series(study) == []
        into.store(series)
        found = out_of.search_series(study)
        assert [(d.SeriesInstanceUID, d.Modality) for d in found] == [(series_uid, "CT")]
        assert [d.StudyInstanceUID for d in out_of.search_series(filters={"SeriesInstanceUID": series_uid})] == [study]
        got = {ds.SOPInstanceUID: ds for ds in out_of.retrieve_series(study, series_uid)}
        assert set(got) == {ds.SOPInstanceUID for ds in series}
        for ds in series:
            assert got[ds.SOPInstanceUID].PixelData == ds.PixelData
    # The index is PostgreSQL's (neither process kept one of its own).
    assert admin_in(pg_database, "SELECT count(*) FROM dicomidentifiers WHERE value = %s", (series_uid,))[0][0] >= 1
    assert not list((tmp_path / "storage").glob("index*"))
