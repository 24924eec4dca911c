"""The vitals message contract: valid messages parse; every kind of bad payload is rejected with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sensors import topics
from sensors.vitals import BY_CODE, MAX_PAYLOAD_BYTES, REJECT_REASONS, VitalsRejected, parse_vitals, to_samples

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


@pytest.mark.parametrize(
    "observations",
    [
        [{"code": "8867-4", "value": 19, "unit": "/min"}],
        [{"code": "8867-4", "value": "NaN", "unit": "/min"}],
        [{"code": "8480-6", "value": 80, "unit": "mm[Hg]"}, {"code": "8462-4", "value": 90, "unit": "mm[Hg]"}],
        [{"code": "motion-rms", "value": 0.2, "unit": "m/s2"}],  # right code, wrong system
        [],
        [{"code": "8867-4", "value": 70, "unit": "/min", "extra": 1}],
    ],
)
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
