"""The vitals message contract: valid messages parse; every kind of bad payload is rejected with its reason."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from core import topics
from core.vitals import (
    BY_CODE,
    MAX_PAST_AGE,
    MAX_PAYLOAD_BYTES,
    REJECT_REASONS,
    Observation,
    Sample,
    VitalsMessage,
    VitalsRejected,
    _plain_samples,
    parse_samples,
    parse_vitals,
    to_samples,
)
from sensors.simulator import Faults, Simulator

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def message(**changes: object) -> dict:
    base = {
        "schema": "aegle.vitals/1",
        "message_id": "0b9f6c1e-5d7a-4a53-9f0e-1f1a2b3c4d5e",
        "site": "ward-3",
        "device_id": "mon-12",
        "patient_id": "enc-0042",
        "timestamp": "2026-11-21T11:59:58.250+01:00",
        "observations": [
            {"code": "8867-4", "value": 72, "unit": "/min"},
            {"code": "59408-5", "value": 97, "unit": "%"},
            {"code": "8480-6", "value": 121, "unit": "mm[Hg]"},
            {"code": "8462-4", "value": 79, "unit": "mm[Hg]"},
            {"code": "motion-rms", "system": "urn:aegle:code", "value": 0.2, "unit": "m/s2"},
        ],
    }
    base.update(changes)
    return base


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_message_is_normalised_to_utc_samples() -> None:
    msg = parse_vitals(encode(message()), NOW)
    assert msg.timestamp == datetime(2026, 11, 21, 10, 59, 58, 250000, tzinfo=UTC)
    samples = to_samples(msg)
    assert [s.code for s in samples] == ["8867-4", "59408-5", "8480-6", "8462-4", "motion-rms"]
    assert {s.t_ms for s in samples} == {int(msg.timestamp.timestamp() * 1000)}
    assert parse_vitals(msg.to_json(), NOW) == msg  # the wire format round-trips


def test_observation_time_overrides_message_time() -> None:
    obs = [{"code": "8310-5", "value": 37.1, "unit": "Cel", "time": "2026-11-21T10:00:00Z"}]
    [s] = to_samples(parse_vitals(encode(message(observations=obs)), NOW))
    assert s.t_ms == int(datetime(2026, 11, 21, 10, tzinfo=UTC).timestamp() * 1000)


BAD = {
    "payload_too_large": b"{" + b" " * MAX_PAYLOAD_BYTES + b"}",
    "malformed_json": b'{"message_id": ',
    "missing_field": encode({k: v for k, v in message().items() if k != "patient_id"}),
    "invalid_field": encode(message(device_id="mon/12#")),
    "unknown_code": encode(message(observations=[{"code": "1234-5", "value": 1, "unit": "/min"}])),
    "wrong_unit": encode(message(observations=[{"code": "8310-5", "value": 98.6, "unit": "[degF]"}])),
    "impossible_value": encode(message(observations=[{"code": "59408-5", "value": 104, "unit": "%"}])),
    "naive_timestamp": encode(message(timestamp="2026-11-21T11:59:58")),
    "timestamp_in_future": encode(message(timestamp=(NOW + timedelta(hours=1)).isoformat())),
    "timestamp_too_old": encode(message(timestamp=(NOW - MAX_PAST_AGE - timedelta(seconds=1)).isoformat())),
    "duplicate_observation": encode(
        message(observations=[{"code": "8867-4", "value": 70, "unit": "/min"}] * 2)
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_bad_payload_is_rejected_with_its_reason(reason: str) -> None:
    with pytest.raises(VitalsRejected) as info:
        parse_vitals(BAD[reason], NOW)
    assert info.value.reason == reason
    assert info.value.detail


def test_every_reason_has_a_case() -> None:
    # topic_mismatch needs the topic, so the ingest worker raises it (tested in test_ingest.py).
    assert set(BAD) | {"topic_mismatch"} == set(REJECT_REASONS)


def observation(**changes: object) -> list[dict]:
    return [{"code": "8867-4", "value": 72, "unit": "/min", **changes}]


def probe_cases(now: datetime) -> dict[str, tuple[dict, str]]:
    """An outside probe's payloads that were once stored although this contract refuses them, each with its reason."""

    def recent(**changes: object) -> dict:
        return message(**{"timestamp": (now - timedelta(seconds=2)).isoformat(), **changes})

    return {
        "timestamp Unix seconds as a JSON number": (recent(timestamp=1), "invalid_field"),
        "timestamp 0": (recent(timestamp=0), "invalid_field"),
        "timestamp Unix seconds as a float": (recent(timestamp=now.timestamp()), "invalid_field"),
        "timestamp digit string": (recent(timestamp="0"), "invalid_field"),
        "timestamp Unix seconds as a string": (recent(timestamp=str(int(now.timestamp()))), "invalid_field"),
        "timestamp date only": (recent(timestamp=now.date().isoformat()), "invalid_field"),
        "timestamp in 1970": (recent(timestamp="1970-01-01T00:00:00Z"), "timestamp_too_old"),
        "timestamp a year old": (recent(timestamp=(now - timedelta(days=365)).isoformat()), "timestamp_too_old"),
        "observation time a JSON number": (recent(observations=observation(time=1)), "invalid_field"),
        "observation time a digit string": (recent(observations=observation(time="0")), "invalid_field"),
        "observation time in 1970": (recent(observations=observation(time="1970-01-01T00:00:00Z")),
                                     "timestamp_too_old"),
        "value a numeric string": (recent(observations=observation(value="72")), "invalid_field"),
        "value a decimal string": (recent(observations=observation(value="72.5")), "invalid_field"),
        "value a boolean": (recent(observations=observation(value=True)), "invalid_field"),
        "schema missing": ({k: v for k, v in recent().items() if k != "schema"}, "missing_field"),
        "schema null": (recent(schema=None), "invalid_field"),
        "schema another version": (recent(schema="aegle.vitals/2"), "invalid_field"),
    }  # fmt: skip


PROBE = probe_cases(NOW)


@pytest.mark.parametrize("case", sorted(PROBE))
def test_probe_payloads_are_refused_with_their_reason(case: str) -> None:
    body, reason = PROBE[case]
    for parse in (parse_vitals, parse_samples):
        with pytest.raises(VitalsRejected) as info:
            parse(encode(body), NOW)
        assert (info.value.reason, bool(info.value.detail)) == (reason, True), info.value


def test_refusals_name_the_field_and_what_is_expected() -> None:
    details = {case: reference(encode(body), NOW)[1] for case, (body, _) in PROBE.items()}
    assert details["timestamp 0"] == (
        "timestamp: must be an ISO 8601 date-time string with a UTC offset, e.g. 2026-11-21T11:59:58.250Z; got 0")
    assert details["value a numeric string"] == "observations.0.value must be a JSON number, got '72'"
    assert details["schema missing"] == "schema is required"
    assert details["timestamp in 1970"].startswith("timestamp is 20778 days, 12:00:00 behind the server")
    assert details["timestamp in 1970"].endswith("(limit 7 days)")


def test_timestamps_up_to_max_past_age_are_accepted() -> None:
    for at, ok in ((NOW - MAX_PAST_AGE, True), (NOW - MAX_PAST_AGE - timedelta(milliseconds=1), False)):
        for body in (message(timestamp=at.isoformat()), message(observations=observation(time=at.isoformat()))):
            got = reference(encode(body), NOW)
            assert (got[0] if isinstance(got, tuple) else "accepted") == ("accepted" if ok else "timestamp_too_old")


OTHER_BAD_OBSERVATIONS = [
    [{"code": "8867-4", "value": 19, "unit": "/min"}],
    [{"code": "8867-4", "value": "NaN", "unit": "/min"}],
    [{"code": "8480-6", "value": 80, "unit": "mm[Hg]"}, {"code": "8462-4", "value": 90, "unit": "mm[Hg]"}],
    [{"code": "motion-rms", "value": 0.2, "unit": "m/s2"}],  # right code, wrong system
    [],
    [{"code": "8867-4", "value": 70, "unit": "/min", "extra": 1}],
]


@pytest.mark.parametrize("observations", OTHER_BAD_OBSERVATIONS)
def test_other_impossible_or_malformed_observations_are_rejected(observations: list) -> None:
    with pytest.raises(VitalsRejected):
        parse_vitals(encode(message(observations=observations)), NOW)


def test_ranges_are_inclusive_and_every_code_has_a_unit() -> None:
    for code, sign in BY_CODE.items():
        obs = [{"code": code, "system": sign.system, "value": sign.high, "unit": sign.unit}]
        assert parse_vitals(encode(message(observations=obs)), NOW).observations[0].value == sign.high


def test_topics_reject_wildcards_and_round_trip() -> None:
    assert topics.parse_vitals_topic(topics.vitals("ward-3", "mon-12")) == ("ward-3", "mon-12")
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError):
            topics.vitals("ward-3", bad)
    with pytest.raises(ValueError):
        topics.parse_vitals_topic("aegle/v1/ward-3/mon-12/other")
    assert topics.shared_vitals_filter() == "$share/aegle-ingest/aegle/v1/+/+/vitals"


# --- parse_samples: the ingest worker's fast path must decide exactly as the model does -----------------------


def reference(payload: bytes, now: datetime) -> list[Sample] | tuple[str, str]:
    """What the model (the schema of record) makes of a payload: its samples, or (reason, detail)."""
    try:
        return to_samples(parse_vitals(payload, now))
    except VitalsRejected as exc:
        return exc.reason, exc.detail


def fast(payload: bytes, now: datetime) -> list[Sample] | tuple[str, str]:
    try:
        return parse_samples(payload, now)
    except VitalsRejected as exc:
        return exc.reason, exc.detail


def same(payload: bytes, now: datetime) -> bool:
    """parse_samples agrees with the model; the fast recogniser never accepts what the model refuses."""
    got, want = fast(payload, now), reference(payload, now)
    plain = _plain_samples(payload, now)
    assert plain is None or plain == want, payload
    if isinstance(want, list):
        assert [type(s.value) for s in got] == [float] * len(want)
    assert got == want, payload
    return plain is not None


def simulated(seed: int, bad_fraction: float) -> list:
    sim = Simulator(5, site="ward-9", rate_hz=2.0, seed=seed,
                    faults=Faults(duplicate_fraction=0.05, late_fraction=0.05, bad_fraction=bad_fraction))
    return list(sim.messages(NOW - timedelta(minutes=4), 120))


def test_parse_samples_agrees_with_the_model_on_simulated_streams() -> None:
    outgoing = simulated(11, 0.0) + simulated(12, 0.5)
    reasons = {o.expected_reject for o in outgoing}
    assert set(REJECT_REASONS) <= reasons  # every fault the simulator makes
    fast_path = [same(o.payload, NOW) for o in outgoing]
    valid = [o.expected_reject is None for o in outgoing]
    assert sum(valid) > 2000
    # Every valid device payload takes the fast path (topic_mismatch payloads are valid payloads too).
    assert all(f for f, v in zip(fast_path, valid, strict=True) if v)


def test_parse_samples_agrees_with_the_model_on_every_bad_payload() -> None:
    for payload in BAD.values():
        assert not same(payload, NOW)
    for body, _reason in PROBE.values():
        assert not same(encode(body), NOW)
    for observations in OTHER_BAD_OBSERVATIONS:
        assert not same(encode(message(observations=observations)), NOW)


def edge_cases() -> list[object]:
    """Payloads near the fast recogniser's edges: each must be decided as the model decides it."""
    obs = message()["observations"]
    cases: list[object] = [message(), message(schema=None), message(schema_="aegle.vitals/1"), message(extra=1)]
    cases.append({k: v for k, v in message().items() if k != "schema"})
    for ts in ["2026-11-21T11:59:58Z", "2026-11-21T11:59:58.1Z", "2026-11-21T11:59:58.123456Z",
               "2026-11-21T11:59:58.1234567Z", "2026-11-21t11:59:58z", "2026-11-21T11:59:58+23:59",
               "2026-11-21T11:59:58+24:00", "2026-11-21T11:59:58-00:00", "2026-11-21T11:59:58+0100",
               "2026-11-21 11:59:58Z", "2026-11-21T11:59Z", "2026-11-21T11:59:60Z", "2026-11-21T24:00:00Z",
               "2026-13-21T11:59:58Z", "2026-02-30T11:59:58Z", "2026-11-21", "2026-11-21T11:59:58Z\n",
               "２026-11-21T11:59:58Z", "2026-11-21T11:59:58,5Z", "2026-11-21T12:04:59.999999Z",
               "2026-11-21T12:05:00Z", "2026-11-21T12:05:00.000001Z", "2026-11-14T12:00:00Z",
               "2026-11-14T11:59:59.999999Z", "2026-11-14T13:00:00+01:00", "2026-11-14T12:59:59+01:00", 1795000000,
               "1795000000", 0, "0", None, ""]:
        cases.append(message(timestamp=ts))
        cases.append(message(observations=[{"code": "8310-5", "value": 37.0, "unit": "Cel", "time": ts}]))
    for field in ("message_id", "site", "device_id", "patient_id"):
        for value in ["ward-3\n", " ward-3", "ward-3 ", "-ward", "w" * 63, "w" * 64, "w" * 65, "abcdefg",
                      "abc:defgh", "ａbcdefgh", "", 12345678, None, ["ward-3"]]:
            cases.append(message(**{field: value}))
    for value in [72, 72.0, -0.0, 0, 1, 20, 19.999999, 350, 350.0000001, True, False, "72", None, 10**400, "NaN",
                  1e308]:
        cases.append(message(observations=[{"code": "8867-4", "value": value, "unit": "/min"}]))
        cases.append(message(observations=[{"code": "9279-1", "value": value, "unit": "/min"}]))
    cases += [
        message(observations=obs * 7),  # 35 observations
        message(observations=[{"code": c, "system": s.system, "value": s.low, "unit": s.unit}
                              for c, s in BY_CODE.items() if s.key not in ("spo2", "systolic_bp", "diastolic_bp")]),
        message(observations=[{"code": "8867-4", "value": 72, "unit": "/min", "system": None}]),
        message(observations=[{"code": "8867-4", "value": 72, "unit": "/min", "system": "http://loinc.org"}]),
        message(observations=[{"code": "8867-4", "value": 72, "unit": "/min", "time": None}]),
        message(observations=[{"code": "8480-6", "value": 80, "unit": "mm[Hg]"},
                              {"code": "8462-4", "value": 80, "unit": "mm[Hg]"}]),
        message(observations={"code": "8867-4", "value": 72, "unit": "/min"}),
        message(observations=[["8867-4", 72, "/min"]]),
        message(schema="aegle.vitals/2"),
        [message()],
        "a string",
        None,
    ]
    return cases


def test_parse_samples_agrees_with_the_model_at_the_edges() -> None:
    texts = [json.dumps(case) for case in edge_cases()]
    raw = [t.encode() for t in texts]
    good = texts[0]
    raw += [
        good.replace('"site": "ward-3"', '"site": "ward 3", "site": "ward-3"'),  # duplicate keys: the last wins
        good.replace('"site": "ward-3"', '"site": "ward-3", "site": "ward 3"'),
        good.replace('"value": 72', '"value": NaN'), good.replace('"value": 72', '"value": Infinity'),
        good.replace('"value": 72', '"value": 1e400'), good.replace('"value": 72', '"value": 7.2e1'),
        good.replace('"mon-12"', '"mon\\u002d12"'), good + " ", " " + good, good + "x", good[:-1],
    ]
    raw = [r.encode() if isinstance(r, str) else r for r in raw]
    raw += [good.encode("utf-16"), b"\xef\xbb\xbf" + good.encode(), good.encode().replace(b"ward-3", b"ward-\xff")]
    raw += [VitalsMessage(message_id="m-00000001", site="s", device_id="d", patient_id="p", timestamp=NOW,
                          observations=[Observation(code="8867-4", value=70, unit="/min")]).to_json()]
    assert sum(same(r, NOW) for r in raw) > 20  # the fast path really runs, and agrees, across the cases


def test_parse_samples_agrees_with_the_model_on_random_mutations() -> None:
    """Random byte-level and value-level mutations of real simulator payloads."""
    rng = random.Random(4)
    base = [o.payload for o in simulated(13, 0.0)[:400]]
    tokens = [b'"', b":", b",", b"{", b"}", b"[", b"]", b"0", b"9", b".", b"-", b"+", b"e", b"Z", b"T", b" ",
              b"null", b"true", b"\\", b"\n"]
    agreed = 0
    for payload in base:
        for _ in range(4):
            data = bytearray(payload)
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[at:at + rng.randint(0, 3)] = rng.choice(tokens)
            elif choice < 0.7:
                del data[at:at + rng.randint(1, 4)]
            else:
                data[at] = rng.randrange(256)
            agreed += same(bytes(data), NOW)
    assert agreed > 100  # many mutants are still acceptable, and the fast path takes them
