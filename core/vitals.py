"""The vitals message: what a bedside or wearable device publishes, and how it is checked.

One JSON object per MQTT message::

    {"schema": "aegle.vitals/1", "message_id": "…", "site": "ward-3", "device_id": "mon-12",
     "patient_id": "enc-0042", "timestamp": "2026-11-21T23:59:00.120Z",
     "observations": [{"code": "8867-4", "value": 72, "unit": "/min"}]}

Codes are LOINC (system ``http://loinc.org``) with UCUM units. Motion has no LOINC vital-sign code, so it uses
Aegle's own code system (``urn:aegle:code``). Values outside the physiologically possible range, unknown codes,
wrong units, missing fields (``schema`` included), values that are not JSON numbers, times that are not ISO 8601
strings with a UTC offset, naive, future or too old timestamps and oversized payloads are rejected with a
:class:`VitalsRejected` whose ``reason`` is one of :data:`REJECT_REASONS`; nothing is clamped or coerced silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, NamedTuple, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError, from_json

LOINC = "http://loinc.org"
AEGLE_CODES = "urn:aegle:code"
SCHEMA = "aegle.vitals/1"

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_OBSERVATIONS = 32
MAX_FUTURE_SKEW = timedelta(minutes=5)
#: Oldest acceptable timestamp, relative to the worker's clock when it validates. A device or edge buffer that was
#: offline for up to a week (the ingest worker's session expiry too) still delivers; a clock reset to 1970 does not.
MAX_PAST_AGE = timedelta(days=7)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"


@dataclass(frozen=True, slots=True)
class VitalSign:
    """One kind of observation: its code, UCUM unit, possible range and adult reference for normalisation."""

    key: str
    code: str
    system: str
    unit: str
    display: str
    low: float
    high: float
    ref_mean: float
    ref_scale: float


VITAL_SIGNS: tuple[VitalSign, ...] = (
    VitalSign("heart_rate", "8867-4", LOINC, "/min", "Heart rate", 20, 350, 75, 15),
    VitalSign("spo2", "59408-5", LOINC, "%", "Oxygen saturation by pulse oximetry", 30, 100, 97, 2),
    VitalSign("spo2", "2708-6", LOINC, "%", "Oxygen saturation in arterial blood", 30, 100, 97, 2),
    VitalSign("temperature", "8310-5", LOINC, "Cel", "Body temperature", 25, 45, 36.8, 0.5),
    VitalSign("respiratory_rate", "9279-1", LOINC, "/min", "Respiratory rate", 0, 100, 16, 4),
    VitalSign("systolic_bp", "8480-6", LOINC, "mm[Hg]", "Systolic blood pressure", 30, 300, 120, 15),
    VitalSign("diastolic_bp", "8462-4", LOINC, "mm[Hg]", "Diastolic blood pressure", 10, 250, 80, 10),
    # No LOINC vital-sign code exists for body motion: RMS of the dynamic (gravity-removed) acceleration over
    # the last second, and the raw accelerometer axes.
    VitalSign("motion", "motion-rms", AEGLE_CODES, "m/s2", "Motion (RMS dynamic acceleration)", 0, 160, 0.5, 1.0),
    VitalSign("accel_x", "accel-x", AEGLE_CODES, "m/s2", "Acceleration, x axis", -160, 160, 0, 9.81),
    VitalSign("accel_y", "accel-y", AEGLE_CODES, "m/s2", "Acceleration, y axis", -160, 160, 0, 9.81),
    VitalSign("accel_z", "accel-z", AEGLE_CODES, "m/s2", "Acceleration, z axis", -160, 160, 0, 9.81),
)
BY_CODE: dict[str, VitalSign] = {v.code: v for v in VITAL_SIGNS}

RejectReason = Literal[
    "payload_too_large",
    "malformed_json",
    "missing_field",
    "invalid_field",
    "unknown_code",
    "wrong_unit",
    "impossible_value",
    "naive_timestamp",
    "timestamp_in_future",
    "timestamp_too_old",
    "duplicate_observation",
    "topic_mismatch",
]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)


class VitalsRejected(ValueError):
    """A vitals payload that cannot be accepted; ``reason`` is machine-readable, ``detail`` is for people."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_DATE_AND_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def _iso_date_time(value: object) -> object:
    """Let only ISO 8601 date-time strings (and datetimes built in Python) reach pydantic's datetime parser.

    That parser also reads JSON numbers and digit strings as Unix seconds (``1`` and ``"0"`` became 1970).
    """
    if value is None or isinstance(value, datetime) or (type(value) is str and _DATE_AND_TIME.match(value)):
        return value
    raise PydanticCustomError(
        "iso_date_time",
        "must be an ISO 8601 date-time string with a UTC offset, e.g. 2026-11-21T11:59:58.250Z; got {got}",
        {"got": repr(value)[:40]},
    )


#: A time on the wire: an ISO 8601 date-time string (its offset is checked later, for ``naive_timestamp``).
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_date_time)]


class Observation(BaseModel):
    """One coded value; ``time`` defaults to the message timestamp. ``value`` must be a JSON number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1, max_length=32)
    system: str = LOINC
    value: float = Field(strict=True, allow_inf_nan=False)
    unit: str = Field(min_length=1, max_length=16)
    time: Annotated[datetime | None, BeforeValidator(_iso_date_time)] = None


class VitalsMessage(BaseModel):
    """A device's report about one patient at one time.

    ``schema`` defaults to ``aegle.vitals/1`` for messages built in Python; on the wire it is required
    (:func:`parse_vitals`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["aegle.vitals/1"] = Field(default=SCHEMA, alias="schema")
    message_id: str = Field(min_length=8, max_length=64, pattern=MESSAGE_ID_PATTERN)
    site: str = Field(pattern=ID_PATTERN)
    device_id: str = Field(pattern=ID_PATTERN)
    patient_id: str = Field(pattern=ID_PATTERN)
    timestamp: IsoDateTime
    observations: list[Observation] = Field(min_length=1, max_length=MAX_OBSERVATIONS)

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive timestamp")
        return value.astimezone(UTC)

    def to_json(self) -> bytes:
        """Serialise as the wire format (UTC timestamps, ``schema`` key)."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Sample(NamedTuple):
    """One stored point: a single coded value for one patient at one instant (epoch milliseconds, UTC)."""

    patient_id: str
    site: str
    device_id: str
    code: str
    t_ms: int
    value: float
    message_id: str


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(moment.timestamp() * 1000)


def from_ms(t_ms: int) -> datetime:
    """Aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC)


def _first_error(exc: ValidationError) -> VitalsRejected:
    errors = exc.errors(include_url=False)
    err = next((e for e in errors if e["type"] == "missing"), errors[0])
    where = ".".join(str(p) for p in err["loc"]) or "message"
    if err["type"] == "missing":
        return VitalsRejected("missing_field", f"{where} is required")
    if err["type"] == "json_invalid":
        return VitalsRejected("malformed_json", err["msg"])
    if err["type"] == "value_error" and "naive timestamp" in err["msg"]:
        return VitalsRejected("naive_timestamp", f"{where} has no UTC offset")
    if err["type"] == "float_type":  # strict: numeric strings ("72") and booleans are not values
        return VitalsRejected("invalid_field", f"{where} must be a JSON number, got {err['input']!r:.40}")
    if err["type"] in ("model_type", "model_attributes_type") and where == "message":
        return VitalsRejected("malformed_json", "payload is not a JSON object")
    return VitalsRejected("invalid_field", f"{where}: {err['msg']}")


#: One observation as the checks see it: (code, system, value, unit, time or None).
ObservationValues = tuple[str, str, float, str, datetime | None]


def _check_time(where: str, moment: datetime, now: datetime) -> None:
    """Refuse a time more than :data:`MAX_FUTURE_SKEW` ahead of ``now`` or more than :data:`MAX_PAST_AGE` behind it."""
    if moment - now > MAX_FUTURE_SKEW:
        raise VitalsRejected(
            "timestamp_in_future", f"{where} is {moment - now} ahead of the server (limit {MAX_FUTURE_SKEW})"
        )
    if now - moment > MAX_PAST_AGE:
        raise VitalsRejected(
            "timestamp_too_old", f"{where} is {now - moment} behind the server (limit {MAX_PAST_AGE.days} days)"
        )


def _check_values(timestamp: datetime, observations: Iterable[ObservationValues], now: datetime) -> None:
    """The rules on codes, units, values and times, shared by :func:`parse_vitals` and :func:`parse_samples`."""
    _check_time("timestamp", timestamp, now)
    seen: set[str] = set()
    by_key: dict[str, float] = {}
    for i, (code, system, value, unit, time) in enumerate(observations):
        sign = BY_CODE.get(code)
        if sign is None or sign.system != system:
            raise VitalsRejected("unknown_code", f"observations.{i}: {system}|{code} is not a supported code")
        if unit != sign.unit:
            raise VitalsRejected(
                "wrong_unit", f"observations.{i}: {sign.display} must be in UCUM '{sign.unit}', got '{unit}'"
            )
        if not sign.low <= value <= sign.high:
            raise VitalsRejected(
                "impossible_value",
                f"observations.{i}: {sign.display} {value:g} {sign.unit} is outside [{sign.low:g}, {sign.high:g}]",
            )
        if code in seen:
            raise VitalsRejected("duplicate_observation", f"observations.{i}: {code} appears twice")
        if time is not None:
            if time.tzinfo is None or time.utcoffset() is None:
                raise VitalsRejected("naive_timestamp", f"observations.{i}.time has no UTC offset")
            _check_time(f"observations.{i}.time", time, now)
        seen.add(code)
        by_key[sign.key] = value
    if "systolic_bp" in by_key and "diastolic_bp" in by_key and by_key["diastolic_bp"] >= by_key["systolic_bp"]:
        raise VitalsRejected("impossible_value", "diastolic blood pressure is not below systolic")


def check_observations(message: VitalsMessage, now: datetime | None = None) -> None:
    """Raise :class:`VitalsRejected` if a code, unit, value or time in ``message`` cannot be right."""
    observations = [(o.code, o.system, o.value, o.unit, o.time) for o in message.observations]
    _check_values(message.timestamp, observations, now or datetime.now(UTC))


def parse_vitals(payload: bytes, now: datetime | None = None) -> VitalsMessage:
    """Parse and check one wire payload; raise :class:`VitalsRejected` with the reason if it is not acceptable."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise VitalsRejected("payload_too_large", f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    try:
        message = VitalsMessage.model_validate_json(payload)
    except ValidationError as exc:
        raise _first_error(exc) from None
    if "schema_" not in message.model_fields_set:  # only Python callers may leave it to the default
        raise VitalsRejected("missing_field", "schema is required")
    check_observations(message, now)
    return message


def to_samples(message: VitalsMessage) -> list[Sample]:
    """Flatten an accepted message into stored points."""
    base = to_ms(message.timestamp)
    return [
        Sample(
            message.patient_id,
            message.site,
            message.device_id,
            obs.code,
            to_ms(obs.time) if obs.time is not None else base,
            obs.value,
            message.message_id,
        )
        for obs in message.observations
    ]


# The usual wire form, recognised without pydantic (see parse_samples). Everything these accept, the model
# accepts with the same values; anything else goes to the model. tests/test_vitals.py checks it differentially.
_TOP_KEYS = frozenset({"schema", "message_id", "site", "device_id", "patient_id", "timestamp", "observations"})
_OBSERVATION_KEYS = frozenset({"code", "system", "value", "unit", "time"})
_ID = re.compile(ID_PATTERN)
_MESSAGE_ID = re.compile(MESSAGE_ID_PATTERN)
_AWARE_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _aware_time(text: object) -> datetime | None:
    """An ISO 8601 time with seconds and an explicit offset, or None for anything else."""
    if type(text) is not str or not _AWARE_ISO_TIME.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # e.g. month 13, or an offset of 24 h or more
        return None


def _plain_samples(payload: bytes, now: datetime) -> list[Sample] | None:
    """The samples of an acceptable payload in the usual wire form; None when the schema must decide."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        body = from_json(payload)
    except ValueError:
        return None
    if type(body) is not dict or not body.keys() <= _TOP_KEYS or body.get("schema") != SCHEMA:
        return None
    try:
        message_id, site, device_id = body["message_id"], body["site"], body["device_id"]
        patient_id, observations, timestamp = body["patient_id"], body["observations"], _aware_time(body["timestamp"])
    except KeyError:
        return None
    if not (
        timestamp is not None
        and type(message_id) is str
        and 8 <= len(message_id) <= 64
        and _MESSAGE_ID.fullmatch(message_id)
        and type(site) is str
        and _ID.fullmatch(site)
        and type(device_id) is str
        and _ID.fullmatch(device_id)
        and type(patient_id) is str
        and _ID.fullmatch(patient_id)
        and type(observations) is list
        and 1 <= len(observations) <= MAX_OBSERVATIONS
    ):
        return None
    values: list[ObservationValues] = []
    for item in observations:
        if type(item) is not dict or not item.keys() <= _OBSERVATION_KEYS:
            return None
        try:
            code, value, unit = item["code"], item["value"], item["unit"]
        except KeyError:
            return None
        system = item.get("system", LOINC)
        text = item.get("time")
        time = None if text is None else _aware_time(text)
        if (
            type(code) is not str
            or type(system) is not str
            or type(unit) is not str
            or type(value) not in (float, int)
            or (text is not None and time is None)
        ):
            return None
        try:
            values.append((code, system, float(value), unit, time))
        except OverflowError:  # an integer beyond float range
            return None
    try:
        _check_values(timestamp, values, now)
    except VitalsRejected:
        return None
    base = to_ms(timestamp)
    return [
        Sample(patient_id, site, device_id, code, base if time is None else to_ms(time), value, message_id)
        for code, _system, value, _unit, time in values
    ]


def parse_samples(payload: bytes, now: datetime | None = None) -> list[Sample]:
    """The stored points of one wire payload: ``to_samples(parse_vitals(payload, now))``, in a fraction of the time.

    A payload in the usual form (the one :meth:`VitalsMessage.to_json` and devices write) is recognised directly;
    any other payload, and every payload that must be rejected, goes through :func:`parse_vitals`, so decisions,
    reasons and details are exactly those of the model.
    """
    now = now or datetime.now(UTC)
    return _plain_samples(payload, now) or to_samples(parse_vitals(payload, now))


def dumps_compact(obj: object) -> bytes:
    """Compact JSON bytes (used for dead letters and context messages)."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode()
