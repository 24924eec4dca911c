"""The device simulator: valid, realistic, in-range payloads; faults as configured; deterministic for a seed."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from core import topics
from core.vitals import BY_CODE, VitalsRejected, parse_vitals
from sensors.simulator import DEVICE_REJECT_REASONS, Faults, Outgoing, Simulator, run

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _values(out: Outgoing) -> dict[str, float]:
    return {o["code"]: o["value"] for o in json.loads(out.payload)["observations"]}


def _by_device(stream: list[Outgoing]) -> dict[str, list[Outgoing]]:
    grouped: dict[str, list[Outgoing]] = defaultdict(list)
    for out in stream:
        grouped[out.device_id].append(out)
    return grouped


def test_valid_payloads_parse_and_match_their_envelope() -> None:
    sim = Simulator(6, site="ward-3", seed=3)
    stream = list(sim.messages(START, 30 * 60))
    owner = sim.device_patient
    assert sorted(sim.devices) == sorted({out.device_id for out in stream})
    assert len(stream) == pytest.approx(len(sim.devices) * 30 * 60, abs=len(sim.devices))
    assert [out.send_at for out in stream] == sorted(out.send_at for out in stream)
    for out in stream:
        message = parse_vitals(out.payload, now=out.send_at)
        assert out.expected_reject is None and out.fault is None
        assert out.send_at == out.timestamp == message.timestamp
        assert message.timestamp.utcoffset() == timedelta(0)
        assert b'Z"' in out.payload  # explicit UTC on the wire
        assert topics.parse_vitals_topic(out.topic) == ("ward-3", out.device_id) == (message.site, message.device_id)
        assert message.message_id == out.message_id
        assert message.patient_id == owner[out.device_id]
        assert START <= out.timestamp < START + timedelta(minutes=30)
    assert len({out.message_id for out in stream}) == len(stream)


def test_device_schedules() -> None:
    sim = Simulator(2, rate_hz=2.0, seed=5)
    stream = _by_device(list(sim.messages(START, 30 * 60)))
    for device, outs in stream.items():
        gaps = {(b.timestamp - a.timestamp).total_seconds() for a, b in itertools.pairwise(outs)}
        assert gaps == {0.5}, device
        codes = [set(_values(out)) for out in outs]
        if device.startswith("wear-"):
            assert all(c == {"8867-4", "motion-rms", "accel-x", "accel-y", "accel-z"} for c in codes)
            continue
        assert all({"8867-4", "59408-5", "9279-1"} <= c for c in codes)
        temps = [out.timestamp for out, c in zip(outs, codes, strict=True) if "8310-5" in c]
        bps = [out.timestamp for out, c in zip(outs, codes, strict=True) if {"8480-6", "8462-4"} <= c]
        assert len(temps) == 30 and len(bps) == 6
        assert {(b - a).total_seconds() for a, b in itertools.pairwise(temps)} == {60.0}
        assert {(b - a).total_seconds() for a, b in itertools.pairwise(bps)} == {300.0}


def test_values_stay_in_range_over_a_long_run() -> None:
    sim = Simulator(16, rate_hz=0.05, seed=11, condition_fraction=0.6)
    assert {c for p in sim.patients for c in p.conditions} == {"fever", "tachycardia", "hypoxaemia", "hypertension"}
    seen: dict[str, list[float]] = defaultdict(list)
    for out in sim.messages(START, 24 * 3600):
        message = parse_vitals(out.payload, now=out.send_at)  # raises impossible_value if anything is off
        for obs in message.observations:
            sign = BY_CODE[obs.code]
            assert sign.low <= obs.value <= sign.high
            seen[obs.code].append(obs.value)
    assert set(seen) == {"8867-4", "59408-5", "9279-1", "8310-5", "8480-6", "8462-4"} | {
        "motion-rms",
        "accel-x",
        "accel-y",
        "accel-z",
    }
    # Plausible adult physiology, not merely the parser's outer limits.
    assert min(seen["8867-4"]) >= 35 and max(seen["8867-4"]) <= 200
    assert min(seen["59408-5"]) >= 70 and max(seen["59408-5"]) <= 100
    assert min(seen["9279-1"]) >= 6 and max(seen["9279-1"]) <= 45
    assert min(seen["8310-5"]) >= 34 and max(seen["8310-5"]) <= 42
    assert 65 <= statistics.median(seen["8867-4"]) <= 100
    assert 95 <= statistics.median(seen["59408-5"]) <= 99
    assert 36.3 <= statistics.median(seen["8310-5"]) <= 37.6
    assert 105 <= statistics.median(seen["8480-6"]) <= 150
    assert 65 <= statistics.median(seen["8462-4"]) <= 95


def test_conditions_shift_the_baselines() -> None:
    sim = Simulator(60, seed=2, condition_fraction=0.5)
    by_condition: dict[str, list[dict[str, float]]] = defaultdict(list)
    for patient in sim.patients:
        by_condition[patient.conditions[0] if patient.conditions else "none"].append(patient.baseline)
    healthy = by_condition["none"]
    mean = {k: statistics.mean(b[k] for b in healthy) for k in healthy[0]}
    assert all(b["temp"] >= 37.8 for b in by_condition["fever"])
    assert statistics.mean(b["hr"] for b in by_condition["tachycardia"]) > mean["hr"] + 25
    assert all(b["spo2"] <= 91 for b in by_condition["hypoxaemia"])
    assert statistics.mean(b["sys"] for b in by_condition["hypertension"]) > mean["sys"] + 25
    assert 68 <= mean["hr"] <= 82 and 96 <= mean["spo2"] <= 98.5 and 14 <= mean["rr"] <= 17


def test_motion_episodes_raise_motion_and_heart_rate() -> None:
    sim = Simulator(10, rate_hz=0.2, seed=7)
    wearables = [out for out in sim.messages(START, 6 * 3600) if out.device_id.startswith("wear-")]
    rest_hr: dict[str, list[float]] = defaultdict(list)
    active_hr: dict[str, list[float]] = defaultdict(list)
    rest_axes: list[list[float]] = []
    active_axes: list[list[float]] = []
    for out in wearables:
        values = _values(out)
        rms = values["motion-rms"]
        axes = [values["accel-x"], values["accel-y"], values["accel-z"]]
        if rms >= 2:
            assert rms <= 8
            active_hr[out.device_id].append(values["8867-4"])
            active_axes.append(axes)
        else:
            assert 0.05 <= rms <= 0.3
            rest_hr[out.device_id].append(values["8867-4"])
            rest_axes.append(axes)
    assert len(active_hr) >= 8, "most patients have activity episodes in six hours"
    assert 0.02 < sum(map(len, active_hr.values())) / len(wearables) < 0.4
    rises = [statistics.mean(active_hr[d]) - statistics.mean(rest_hr[d]) for d in active_hr if len(active_hr[d]) > 20]
    assert statistics.mean(rises) >= 8
    assert all(rise > 3 for rise in rises)
    # At rest gravity lies on one axis and the others are quiet; activity makes every axis noisy.
    for axes in rest_axes:
        magnitudes = sorted(abs(a) for a in axes)
        assert 8.8 < magnitudes[2] < 10.8 and magnitudes[1] < 1.0
    assert statistics.pstdev(a[0] for a in active_axes) > 1.0
    assert statistics.pstdev(a[0] for a in rest_axes if abs(a[0]) < 5) < 0.3


def test_faults_are_off_by_default() -> None:
    stream = list(Simulator(4, seed=1).messages(START, 600))
    assert all(out.fault is None and out.expected_reject is None for out in stream)
    assert len({out.message_id for out in stream}) == len(stream) == 8 * 600


def test_duplicates_share_message_id_and_payload() -> None:
    sim = Simulator(4, seed=8, faults=Faults(duplicate_fraction=0.2, duplicate_delay_s=(0.1, 3.0)))
    stream = list(sim.messages(START, 600))
    copies: dict[str | None, list[Outgoing]] = defaultdict(list)
    for out in stream:
        copies[out.message_id].append(out)
    duplicated = [c for c in copies.values() if len(c) > 1]
    assert 0.15 < len(duplicated) / len(copies) < 0.25
    for first, second in duplicated:
        assert first.payload == second.payload and first.topic == second.topic
        assert (first.fault, second.fault) == (None, "duplicate")
        assert timedelta(seconds=0.1) <= second.send_at - first.send_at <= timedelta(seconds=3)
    assert [out.send_at for out in stream] == sorted(out.send_at for out in stream)


def test_late_messages_are_sent_after_their_timestamp() -> None:
    sim = Simulator(4, seed=9, faults=Faults(late_fraction=0.1, late_s=(2.0, 30.0)))
    stream = list(sim.messages(START, 600))
    late = [out for out in stream if out.fault == "late"]
    assert 0.07 < len(late) / len(stream) < 0.13
    for out in late:
        assert timedelta(seconds=2) <= out.send_at - out.timestamp <= timedelta(seconds=30)
        parse_vitals(out.payload, now=out.send_at)
    assert all(out.send_at == out.timestamp for out in stream if out.fault is None)
    assert [out.send_at for out in stream] == sorted(out.send_at for out in stream)
    assert max(out.send_at for out in late) > START + timedelta(seconds=600) - timedelta(seconds=30)
    assert len({out.message_id for out in stream}) == len(stream)


def test_dropouts_leave_gaps() -> None:
    faults = Faults(dropouts_per_hour=6, dropout_s=(30.0, 60.0))
    stream = _by_device(list(Simulator(4, seed=4, faults=faults).messages(START, 2 * 3600)))
    long_gaps = []
    for outs in stream.values():
        for a, b in itertools.pairwise(outs):
            gap = (b.timestamp - a.timestamp).total_seconds()
            assert gap == 1.0 or gap >= 30.0  # a dropout may follow another one at once
            if gap > 1.0:
                long_gaps.append(gap)
    assert 40 <= len(long_gaps) <= 160  # 8 devices, 2 h, 6 per hour: about 96
    assert 40 <= statistics.median(long_gaps) <= 52


@pytest.mark.parametrize("reasons", [DEVICE_REJECT_REASONS, ("wrong_unit",)])
def test_bad_payloads_are_rejected_with_the_tagged_reason(reasons: tuple[str, ...]) -> None:
    sim = Simulator(3, seed=12, faults=Faults(bad_fraction=0.3, bad_reasons=reasons))
    stream = list(sim.messages(START, 600))
    tagged = Counter(out.expected_reject for out in stream if out.expected_reject)
    assert set(tagged) == set(reasons)
    assert 0.25 < sum(tagged.values()) / len(stream) < 0.35
    for out in stream:
        if out.expected_reject is None:
            parse_vitals(out.payload, now=out.send_at)
        elif out.expected_reject == "topic_mismatch":
            message = parse_vitals(out.payload, now=out.send_at)
            assert topics.parse_vitals_topic(out.topic)[1] == out.device_id != message.device_id
        else:
            with pytest.raises(VitalsRejected) as rejected:
                parse_vitals(out.payload, now=out.send_at)
            assert rejected.value.reason == out.expected_reject, out.payload[:300]


def test_deterministic_for_a_seed() -> None:
    faults = Faults(dropouts_per_hour=10, late_fraction=0.05, duplicate_fraction=0.05, bad_fraction=0.05)
    first = list(Simulator(5, seed=21, faults=faults).messages(START, 900))
    assert first == list(Simulator(5, seed=21, faults=faults).messages(START, 900))
    assert [o.payload for o in first] != [o.payload for o in Simulator(5, seed=22, faults=faults).messages(START, 900)]
    # Baselines depend on the seed only; a later start gives fresh message ids.
    assert Simulator(5, seed=21).patients == Simulator(5, seed=21, rate_hz=4).patients
    later = list(Simulator(5, seed=21).messages(START + timedelta(hours=1), 60))
    assert not {o.message_id for o in later} & {o.message_id for o in first}


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Faults(late_fraction=1.5)
    with pytest.raises(ValueError):
        Faults(bad_reasons=("not-a-reason",))
    with pytest.raises(ValueError):
        Faults(dropout_s=(10.0, 5.0))
    with pytest.raises(ValueError):
        Simulator(0)
    with pytest.raises(ValueError):
        Simulator(1, site="bad site")
    with pytest.raises(ValueError):
        next(Simulator(1).messages(datetime(2026, 1, 1), 10))  # naive start


def test_run_paces_against_the_wall_clock() -> None:
    sim = Simulator(2, rate_hz=10, seed=1)
    sent: list[tuple[float, Outgoing]] = []
    t0 = time.monotonic()
    count = run(sim, lambda out: sent.append((time.monotonic() - t0, out)), duration_s=2.0, speed=4.0)
    elapsed = time.monotonic() - t0
    assert count == len(sent) == 4 * 20
    assert 0.4 <= elapsed < 1.5
    first_send = sent[0][1].send_at
    for wall, out in sent:  # each message leaves when its (4x faster) virtual send time comes
        assert wall >= (out.send_at - first_send).total_seconds() / 4 - 0.01
        assert out.timestamp <= datetime.now(UTC)  # a sped-up replay never runs ahead of the clock


def test_run_unpaced_and_stoppable() -> None:
    sim = Simulator(4, seed=1)
    t0 = time.monotonic()
    outs: list[Outgoing] = []
    assert run(sim, outs.append, duration_s=3600, realtime=False) == 8 * 3600
    assert time.monotonic() - t0 < 10
    assert max(out.timestamp for out in outs) <= datetime.now(UTC)
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    t0 = time.monotonic()
    count = run(sim, lambda out: None, duration_s=60, stop=stop)
    assert time.monotonic() - t0 < 3 and 0 < count < 8 * 3
