"""The vitals store on real backends: SQLite files and a VictoriaMetrics speaking the InfluxDB protocol.

Round trips, exact inclusive bounds, idempotent re-writes, recent(), a large write, an unreachable store, and
the spool that keeps samples durable through a store outage (VictoriaMetrics really stopped and restarted).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from aegle.localservices import LOOPBACK, VictoriaMetrics, free_port
from core.settings import StoreSettings
from core.vitals import Sample
from server.store import BufferedStore, Spool, SpoolFull, StoreUnavailable, VitalsStore, open_store
from server.store.influx import InfluxStore, line_protocol, vm_time
from server.store.sqlite import SQLiteStore
from tests import store_fixtures
from tests.store_fixtures import as_stored, flush, make_samples, time_base, unique_prefix

# Fixture ``store`` (each backend); ``victoria`` (the session's VictoriaMetrics) comes from conftest.
store_fixture = store_fixtures.store_fixture

HR, SPO2, TEMP = "8867-4", "59408-5", "8310-5"


# -- both backends -------------------------------------------------------------------------------------------


def test_round_trip_values_order_bounds_and_codes(store: VitalsStore) -> None:
    p = unique_prefix()
    patient, other = f"{p}a", f"{p}b"
    lo = time_base() + 123
    hi = lo + 20
    # Samples one millisecond outside, exactly on, and inside both bounds; codes written out of order.
    times = [lo - 1, lo, lo + 1, (lo + hi) // 2, hi - 1, hi, hi + 1]
    written = [
        Sample(patient, "ward-3", "mon-1", code, t, 60.0 + i + (0.5 if code == SPO2 else 0.0), f"m{i}")
        for i, t in enumerate(times)
        for code in (SPO2, HR, TEMP)
    ] + [Sample(other, "ward-3", "mon-2", HR, t, 99.0, "x") for t in times]
    store.write(written[::-1])
    flush(store)

    got = store.query(patient, lo, hi)
    expected = sorted(
        (s for s in as_stored(store, written) if s.patient_id == patient and lo <= s.t_ms <= hi),
        key=lambda s: (s.t_ms, s.code),
    )
    assert got == expected
    assert got[0].t_ms == lo and got[-1].t_ms == hi
    assert [(s.t_ms, s.code) for s in got] == sorted((s.t_ms, s.code) for s in got)

    only = store.query(patient, lo, hi, codes={HR, TEMP})
    assert only == [s for s in expected if s.code in (HR, TEMP)]
    assert store.query(patient, lo, hi, codes=[]) == []
    assert store.query(patient, hi, hi) == [s for s in expected if s.t_ms == hi]
    assert store.query(patient, lo - 1, lo - 1, codes=[HR])[0].value == 60.0
    assert store.query(f"{p}nobody", lo, hi) == []
    assert store.query(other, lo, hi) == [s for s in as_stored(store, written) if s.patient_id == other][1:-1]


def test_tag_values_that_need_escaping_round_trip(store: VitalsStore) -> None:
    p = unique_prefix()
    t = time_base()
    written = [
        Sample(f"{p}with space", "ward 3,east=1", "dev=1,a", HR, t, 70.0, "m1"),
        Sample(f"{p}back\\slash", 'q"uote', "d\\", SPO2, t + 1, 97.0, "m2"),
    ]
    store.write(written)
    flush(store)
    for s in as_stored(store, written):
        assert store.query(s.patient_id, t, t + 1) == [s]


def test_rewrites_are_idempotent(store: VitalsStore) -> None:
    p = unique_prefix()
    patients = [f"{p}a", f"{p}b"]
    t0 = time_base()
    samples = make_samples(patients, [HR, SPO2], t0, 200)
    store.write(samples)
    store.write(samples)  # a whole batch redelivered
    store.write(samples[100:300])  # and a subset of it
    store.write(samples[::7] + samples[:5])  # and a mix, with duplicates inside one call
    flush(store)
    for patient in patients:
        got = store.query(patient, t0, t0 + 1000)
        mine = as_stored(store, [s for s in samples if s.patient_id == patient])
        assert got == sorted(mine, key=lambda s: (s.t_ms, s.code))
        assert len({(s.device_id, s.code, s.t_ms) for s in got}) == len(got) == 400


def test_recent_returns_every_patient_since(store: VitalsStore) -> None:
    p = unique_prefix()
    patients = [f"{p}{i}" for i in range(5)]
    t0 = time_base()
    samples = make_samples(patients, [HR, TEMP], t0, 50, step_ms=10)
    store.write(samples)
    flush(store)
    since = t0 + 250
    got = store.recent(since)
    assert all(s.t_ms >= since for s in got)
    assert [s.t_ms for s in got] == sorted(s.t_ms for s in got)
    mine = [s for s in got if s.patient_id.startswith(p)]
    expected = as_stored(store, [s for s in samples if s.t_ms >= since])
    assert sorted(mine) == sorted(expected)
    assert {s.patient_id for s in mine} == set(patients)
    assert not [s for s in store.recent(t0 + 50 * 10) if s.patient_id.startswith(p)]


def test_large_write(store: VitalsStore) -> None:
    p = unique_prefix()
    patients = [f"{p}{i}" for i in range(10)]
    t0 = time_base()
    samples = make_samples(patients, [HR, SPO2, TEMP, "9279-1", "motion-rms"], t0, 1000)
    assert len(samples) == 50_000
    started = time.perf_counter()
    store.write(samples)
    elapsed = time.perf_counter() - started
    flush(store)
    assert elapsed < 10, f"50 000-sample write took {elapsed:.1f} s"
    assert sum(len(store.query(patient, t0, t0 + 999)) for patient in patients) == 50_000
    one = [s for s in samples if s.patient_id == patients[3] and s.t_ms == t0 + 500 and s.code == "motion-rms"]
    assert store.query(patients[3], t0 + 500, t0 + 500, codes=["motion-rms"]) == as_stored(store, one)


def test_ping(store: VitalsStore) -> None:
    assert store.ping()


# -- SQLite specifics ----------------------------------------------------------------------------------------


def test_sqlite_creates_parent_dirs_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "vitals.sqlite"
    t0 = time_base()
    samples = make_samples(["p1"], [HR], t0, 10)
    with SQLiteStore(path) as first:
        first.write(samples)
    with SQLiteStore(path) as second:
        assert second.query("p1", t0, t0 + 9) == samples
        second.write(samples)
        assert len(second.recent(t0)) == 10


def test_sqlite_reads_while_another_thread_writes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "vitals.sqlite")
    t0 = time_base()
    batches = [make_samples([f"p{i % 4}"], [HR, SPO2], t0 + i * 1000, 500) for i in range(20)]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in batches:
                store.write(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while thread.is_alive():
        rows = store.recent(t0)
        assert len(rows) >= seen and len(rows) % 1000 == 0  # whole transactions only
        seen = len(rows)
        store.query("p1", t0, t0 + 100_000)
    thread.join()
    assert not errors
    assert len(store.recent(t0)) == 20_000
    store.close()


def test_sqlite_write_of_2000_takes_milliseconds(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "vitals.sqlite")
    t0 = time_base()
    patients = [f"p{i}" for i in range(20)]
    batches = [make_samples(patients, [HR, SPO2, TEMP, "9279-1"], t0 + k * 1000, 25) for k in range(20)]
    assert len(batches[0]) == 2000
    started = time.perf_counter()
    for batch in batches:
        store.write(batch)
    per_batch = (time.perf_counter() - started) / len(batches)
    store.close()
    assert per_batch < 0.1, f"{per_batch * 1000:.1f} ms per 2000-sample write"


# -- InfluxDB protocol specifics -----------------------------------------------------------------------------


def test_line_protocol_escapes_tags_and_keeps_ms() -> None:
    line = line_protocol([Sample("enc 1", "w,3", "d=1", HR, 1795301651123, 72, "m")])
    assert line == ["vitals,code=8867-4,device_id=d\\=1,patient_id=enc\\ 1,site=w\\,3 value=72.0 1795301651123"]
    no_site = line_protocol([Sample("p", "", "d", HR, 5, 1.5, "")])
    assert no_site == ["vitals,code=8867-4,device_id=d,patient_id=p value=1.5 5"]
    with pytest.raises(ValueError):
        line_protocol([Sample("p", "s", "d", HR, 5, float("nan"), "")])


def test_vm_time_truncates_to_the_exact_millisecond() -> None:
    # VictoriaMetrics keeps int64(float(param) * 1e3); from 2038 on plain "S.mmm" would often be 1 ms early.
    for start in (1_795_301_651_000, 2_147_483_648_000, 4_000_000_000_000):
        for t in range(start, start + 20_000):
            assert int(float(vm_time(t)) * 1e3) == t


def test_unreachable_store_raises_quickly() -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    store = InfluxStore(url, token="x", read_api="victoriametrics", timeout_s=5)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.write(make_samples(["p"], [HR], time_base(), 10))
    with pytest.raises(StoreUnavailable):
        store.query("p", 0, 10)
    with pytest.raises(StoreUnavailable):
        store.recent(0)
    with pytest.raises(StoreUnavailable):
        store.flush()
    assert not store.ping()
    assert time.monotonic() - started < 2
    store.close()


def test_store_that_never_answers_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(16)  # accepts connections (kernel backlog) but never answers
        store = InfluxStore(f"http://{LOOPBACK}:{sock.getsockname()[1]}", read_api="victoriametrics", timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.write(make_samples(["p"], [HR], time_base(), 10))
        with pytest.raises(StoreUnavailable):
            store.query("p", 0, 10)
        assert time.monotonic() - started < 4
        store.close()


def test_flux_query_text() -> None:
    store = InfluxStore("http://127.0.0.1:9", org="o", bucket='b"1', read_api="flux")
    text = store.flux_query(1795301651123, 1795301651124, 'p"${x}', ["8867-4", "8310-5"])
    assert 'from(bucket: "b\\"1")' in text
    assert "range(start: 2026-11-21T22:54:11.123Z, stop: 2026-11-21T22:54:11.124Z)" in text
    assert 'r.patient_id == "p\\"\\${x}"' in text
    assert 'r.code == "8867-4" or r.code == "8310-5"' in text
    store.close()


def test_open_store_picks_the_backend(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    sqlite = open_store(StoreSettings(backend="sqlite", sqlite_path=tmp_path / "x" / "v.sqlite"))
    assert isinstance(sqlite, SQLiteStore) and sqlite.ping()
    sqlite.close()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    influx = open_store(
        StoreSettings(backend="influx", url=victoria.url, token_file=token_file, read_api="victoriametrics")
    )
    assert isinstance(influx, InfluxStore) and influx.ping()
    assert influx._http.headers["Authorization"] == "Token s3cret"
    influx.close()


# -- spool and buffered store --------------------------------------------------------------------------------


def test_spool_keeps_order_bounds_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "s.sqlite"
    t0 = time_base()
    first, second = make_samples(["p"], [HR], t0, 30), make_samples(["q"], [SPO2], t0, 30)
    spool = Spool(path, max_samples=100)
    spool.put(first)
    spool.put(second)
    assert len(spool) == 60
    with pytest.raises(SpoolFull):
        spool.put(make_samples(["r"], [HR], t0, 41))  # all or nothing
    assert len(spool) == 60
    ids, peeked = spool.peek(40)
    assert peeked == first + second[:10] and ids == sorted(ids)
    spool.remove(ids[:25])
    assert len(spool) == 35

    # "Crash": a second process opens the same file while the first object is still around, then after close.
    again = Spool(path, max_samples=100)
    assert len(again) == 35
    assert again.peek(100)[1] == first[25:] + second
    spool.close()
    again.close()
    reopened = Spool(path, max_samples=100)
    ids, samples = reopened.peek(1000)
    assert samples == first[25:] + second
    reopened.remove(ids)
    assert len(reopened) == 0
    reopened.put(first[:3])
    assert reopened.peek(10)[0][0] > ids[-1]  # ids keep increasing after the spool was emptied
    reopened.close()


def test_buffered_store_through_a_store_outage(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    p = unique_prefix()
    patients = [f"{p}{i}" for i in range(4)]
    t0 = time_base()
    batches = [make_samples(patients, [HR, SPO2], t0 + k * 1000, 250) for k in range(8)]  # 2000 each

    vm = VictoriaMetrics(vm_dir).start()
    port = vm.port
    influx = InfluxStore(vm.url, read_api="victoriametrics", timeout_s=5)
    spool = Spool(tmp_path / "spool.sqlite", max_samples=7000)
    buffered = BufferedStore(influx, spool, batch_size=1500, retry_interval_s=0)
    try:
        buffered.write(batches[0])  # straight into the store
        assert buffered.pending == 0

        vm.stop()
        for batch in batches[1:4]:  # store down: into the spool, in order
            buffered.write(batch)
        assert buffered.pending == 6000
        with pytest.raises(SpoolFull):
            buffered.write(batches[4])  # neither store nor spool can take it: the caller must not ack
        assert buffered.pending == 6000
        assert buffered.drain() == 0  # store still down: stops quietly
        assert [s for s in spool.peek(6000)[1]] == batches[1] + batches[2] + batches[3]

        # The spool file alone survives a crash of the ingest process.
        spool.close()
        spool = Spool(tmp_path / "spool.sqlite", max_samples=7000)
        buffered = BufferedStore(influx, spool, batch_size=1500, retry_interval_s=0)
        assert buffered.pending == 6000

        vm = VictoriaMetrics(vm_dir, port=port).start()  # same data, same address
        assert buffered.drain(max_batches=1) == 1500
        buffered.write(batches[4])  # queued behind the backlog, then drained with it
        assert buffered.pending == 0
        buffered.write(batches[5])
        assert buffered.pending == 0
        influx.flush()

        accepted = [s for batch in batches[:6] for s in batch]
        for patient in patients:
            got = influx.query(patient, t0, t0 + 10_000)
            mine = sorted(
                (s._replace(message_id="") for s in accepted if s.patient_id == patient), key=lambda s: (s.t_ms, s.code)
            )
            assert got == mine  # every accepted sample exactly once, including those written before the outage
    finally:
        spool.close()
        influx.close()
        vm.stop()


def test_buffered_store_writes_through_when_the_store_is_up(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "v.sqlite")
    buffered = BufferedStore(store, Spool(tmp_path / "s.sqlite", max_samples=10))
    t0 = time_base()
    samples = make_samples(["p"], [HR], t0, 100)  # bigger than the spool: fine while the store takes it
    buffered.write(samples)
    assert buffered.pending == 0 and buffered.drain() == 0
    assert store.query("p", t0, t0 + 99) == samples
    buffered.close()
    store.close()
