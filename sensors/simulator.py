"""Simulated bedside monitors and wearables: realistic, deterministic for a seed, on a virtual clock.

Each simulated patient has adult baselines drawn from the population (optionally shifted by a condition such as
a fever), vitals that wander around the baseline as Ornstein–Uhlenbeck processes, and a two-state (rest/active)
Markov motion process: activity raises heart and respiratory rate and shows on the wearable's accelerometer.

Each patient has two devices: a bedside monitor ``mon-<n>`` (heart rate, SpO2 and respiratory rate every
period; temperature every 60 s and blood pressure every 5 min, both also in its first report) and a wearable
``wear-<n>`` (heart rate, motion RMS and the three accelerometer axes every period). :class:`Faults` adds what
real devices do: dropouts, late and duplicated deliveries, and invalid payloads tagged with the rejection reason
they must earn.

:meth:`Simulator.messages` generates the stream in send-time order without sleeping; :func:`run` paces it
against the wall clock.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

from core import BY_CODE, LOINC, REJECT_REASONS, SCHEMA, topics

#: Rejection reasons a device can provoke (all of them: a cloned device id gives ``topic_mismatch``).
DEVICE_REJECT_REASONS: tuple[str, ...] = REJECT_REASONS

#: Conditions a patient may have; each shifts the baselines (see :func:`_draw_patient`).
CONDITIONS: tuple[str, ...] = ("fever", "tachycardia", "hypoxaemia", "hypertension")

BP_INTERVAL_MS = 300_000
TEMP_INTERVAL_MS = 60_000
GRAVITY = 9.81

# Ornstein–Uhlenbeck time constants (s) and stationary standard deviations around the baseline.
_OU: dict[str, tuple[float, float]] = {
    "hr": (30.0, 3.0),
    "spo2": (90.0, 0.7),
    "rr": (60.0, 1.5),
    "temp": (1800.0, 0.12),
    "sys": (600.0, 5.0),
    "dia": (600.0, 3.0),
}
# Physiologically sensible limits the generator keeps to (all well inside the VITAL_SIGNS ranges).
_LIMITS: dict[str, tuple[float, float]] = {
    "hr": (35.0, 200.0),
    "spo2": (70.0, 100.0),
    "rr": (6.0, 45.0),
    "temp": (34.0, 42.0),
    "sys": (70.0, 230.0),
    "dia": (35.0, 140.0),
    "motion": (0.02, 12.0),
    "accel": (-40.0, 40.0),
}
_EXERTION_TAU_ON_S = 20.0
_EXERTION_TAU_OFF_S = 90.0
# Rest postures: the gravity axis and sign of a chest-worn wearable, with their weights.
_POSTURES: tuple[tuple[int, float, float], ...] = ((2, 1.0, 0.5), (0, -1.0, 0.2), (0, 1.0, 0.2), (2, -1.0, 0.1))
_UPRIGHT = (1, 1.0)


@dataclass(frozen=True)
class Faults:
    """What goes wrong with real devices; every fault is off at its default of 0.

    ``dropouts_per_hour``: expected number of silent spans per device-hour, each lasting ``dropout_s`` seconds
    (uniform). ``late_fraction``: share of messages delivered ``late_s`` seconds after their timestamp.
    ``duplicate_fraction``: share of messages sent a second time (same payload, same ``message_id``)
    ``duplicate_delay_s`` later. ``bad_fraction``: share of messages replaced by an invalid payload whose
    rejection reason is drawn from ``bad_reasons``.
    """

    dropouts_per_hour: float = 0.0
    dropout_s: tuple[float, float] = (5.0, 60.0)
    late_fraction: float = 0.0
    late_s: tuple[float, float] = (2.0, 30.0)
    duplicate_fraction: float = 0.0
    duplicate_delay_s: tuple[float, float] = (0.0, 5.0)
    bad_fraction: float = 0.0
    bad_reasons: tuple[str, ...] = DEVICE_REJECT_REASONS

    def __post_init__(self) -> None:
        for name in ("late_fraction", "duplicate_fraction", "bad_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.dropouts_per_hour < 0:
            raise ValueError("dropouts_per_hour must not be negative")
        for name in ("dropout_s", "late_s", "duplicate_delay_s"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.late_s[0] <= 0 and self.late_fraction > 0:
            raise ValueError("late_s must start above 0")
        unknown = set(self.bad_reasons) - set(DEVICE_REJECT_REASONS)
        if unknown or (self.bad_fraction > 0 and not self.bad_reasons):
            raise ValueError(f"bad_reasons must be a non-empty subset of {DEVICE_REJECT_REASONS}")


class Outgoing(NamedTuple):
    """One MQTT publish a device makes.

    ``timestamp`` is the measurement time in the payload, ``send_at`` when the device sends it (later for late
    and duplicate deliveries). ``expected_reject`` is the rejection reason an invalid payload must get (``None``
    for valid ones); ``fault`` is ``"late"``, ``"duplicate"`` (the second copy) or ``None``.
    """

    send_at: datetime
    topic: str
    payload: bytes
    device_id: str
    message_id: str | None
    expected_reject: str | None
    timestamp: datetime
    fault: str | None = None


@dataclass(frozen=True)
class Patient:
    """A simulated patient: identifiers, conditions, baselines and motion habits."""

    patient_id: str
    monitor_id: str
    wearable_id: str
    conditions: tuple[str, ...]
    baseline: dict[str, float] = field(hash=False)
    mean_rest_s: float
    mean_active_s: float


def _clip(value: float, key: str) -> float:
    low, high = _LIMITS[key]
    return min(high, max(low, value))


def _draw_patient(index: int, seed: int, prefix: str, condition_fraction: float) -> Patient:
    rng = random.Random(f"aegle-sim:{seed}:patient:{index}")
    base = {
        "hr": min(110.0, max(50.0, rng.gauss(75, 10))),
        "spo2": min(99.5, max(93.0, rng.gauss(97, 1.5))),
        "temp": min(37.5, max(36.0, rng.gauss(36.8, 0.3))),
        "rr": min(24.0, max(9.0, rng.gauss(15, 3))),
        "sys": min(160.0, max(95.0, rng.gauss(120, 12))),
        "dia": min(100.0, max(55.0, rng.gauss(78, 8))),
    }
    conditions: tuple[str, ...] = ()
    if rng.random() < condition_fraction:
        condition = rng.choice(CONDITIONS)
        conditions = (condition,)
        if condition == "fever":
            rise = rng.uniform(1.2, 2.2)
            base["temp"] += rise
            base["hr"] += 10 * rise
            base["rr"] += 2 * rise
        elif condition == "tachycardia":
            base["hr"] += rng.uniform(30, 45)
        elif condition == "hypoxaemia":
            base["spo2"] = rng.uniform(86, 91)
            base["rr"] += rng.uniform(4, 8)
        else:
            base["sys"] += rng.uniform(30, 50)
            base["dia"] += rng.uniform(12, 25)
    base["dia"] = min(base["dia"], base["sys"] - 25)
    n = index + 1
    return Patient(
        patient_id=f"{prefix}-{n:04d}",
        monitor_id=f"mon-{n}",
        wearable_id=f"wear-{n}",
        conditions=conditions,
        baseline=base,
        mean_rest_s=rng.uniform(600, 2400),
        mean_active_s=rng.uniform(60, 300),
    )


class _PatientState:
    """The evolving physiology of one patient, advanced lazily to the times its devices sample it."""

    def __init__(self, patient: Patient, rng: random.Random, start_ms: int) -> None:
        self.p = patient
        self.rng = rng
        self.t_ms = start_ms
        self.dev = {key: rng.gauss(0, sd) for key, (_, sd) in _OU.items()}
        self.active = rng.random() < patient.mean_active_s / (patient.mean_active_s + patient.mean_rest_s)
        self._set_intensity(rng.random())
        self._new_episode()
        self.exertion = 1.0 if self.active else 0.0

    def _set_intensity(self, intensity: float) -> None:
        self.hr_boost = 10 + 20 * intensity
        self.rr_boost = 3 + 5 * intensity
        self.motion_level = 2 + 6 * intensity

    def _new_episode(self) -> None:
        rng = self.rng
        mean = self.p.mean_active_s if self.active else self.p.mean_rest_s
        self.switch_ms = self.t_ms + max(1000, int(rng.expovariate(1.0 / mean) * 1000))
        if self.active:
            self._set_intensity(rng.random())
            self.gravity = _UPRIGHT
        else:
            axis, sign, _ = rng.choices(_POSTURES, weights=[w for *_, w in _POSTURES])[0]
            self.gravity = (axis, sign)

    def _evolve(self, until_ms: int) -> None:
        dt = (until_ms - self.t_ms) / 1000.0
        if dt <= 0:
            return
        rng = self.rng
        for key, (tau, sd) in _OU.items():
            decay = math.exp(-dt / tau)
            self.dev[key] = self.dev[key] * decay + sd * math.sqrt(1 - decay * decay) * rng.gauss(0, 1)
        target, tau = (1.0, _EXERTION_TAU_ON_S) if self.active else (0.0, _EXERTION_TAU_OFF_S)
        self.exertion = target + (self.exertion - target) * math.exp(-dt / tau)
        self.t_ms = until_ms

    def advance_to(self, t_ms: int) -> None:
        while self.switch_ms <= t_ms:
            self._evolve(self.switch_ms)
            self.active = not self.active
            self._new_episode()
        self._evolve(t_ms)

    def value(self, key: str, noise: float) -> float:
        """A reading of ``key`` now: baseline, slow deviation, exertion, and measurement noise of SD ``noise``."""
        reading = self.p.baseline[key] + self.dev[key] + self.rng.gauss(0, noise)
        if key == "hr":
            reading += self.exertion * self.hr_boost
        elif key == "rr":
            reading += self.exertion * self.rr_boost
        elif key == "temp":  # circadian rhythm, peaking in the early evening (UTC as a stand-in for local time)
            hour = (self.t_ms / 3_600_000.0) % 24
            reading += 0.2 * math.cos((hour - 18) / 24 * 2 * math.pi)
        return _clip(reading, key)

    def motion(self) -> tuple[float, list[float]]:
        rng = self.rng
        if self.active:
            rms = min(8.0, max(2.0, self.motion_level * rng.lognormvariate(0, 0.15)))
        else:
            rms = min(0.3, max(0.05, rng.lognormvariate(math.log(0.12), 0.35)))
        axis_sd = rms / math.sqrt(3)
        accel = [rng.gauss(0, axis_sd) for _ in range(3)]
        axis, sign = self.gravity
        accel[axis] += sign * GRAVITY
        return rms, [_clip(a, "accel") for a in accel]


@dataclass
class _Device:
    device_id: str
    kind: str
    patient: _PatientState
    topic: str
    rng: random.Random
    period_ms: int
    silent_until_ms: int = 0
    next_bp_ms: int = 0
    next_temp_ms: int = 0


def _obs(code: str, value: float) -> dict[str, object]:
    sign = BY_CODE[code]
    obs: dict[str, object] = {"code": code, "value": value, "unit": sign.unit}
    if sign.system != LOINC:
        obs["system"] = sign.system
    return obs


def _utc(t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC)


def _iso(t_ms: int) -> str:
    return _utc(t_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Simulator:
    """A ward of simulated patients, each with a bedside monitor and a wearable.

    Deterministic: the same arguments (and the same ``start`` given to :meth:`messages`) give the same stream.
    Baselines and conditions depend only on ``seed`` and the patient's index.
    """

    def __init__(
        self,
        patients: int,
        site: str = "ward-1",
        rate_hz: float = 1.0,
        seed: int = 0,
        faults: Faults | None = None,
        patient_prefix: str = "enc",
        condition_fraction: float = 0.2,
    ) -> None:
        if patients < 1:
            raise ValueError("patients must be at least 1")
        if not 0 < rate_hz <= 1000:
            raise ValueError("rate_hz must be within (0, 1000]")
        topics.vitals(site, "mon-1")  # validates the site segment
        self.site = site
        self.rate_hz = rate_hz
        self.period_ms = max(1, round(1000 / rate_hz))
        self.seed = seed
        self.faults = faults or Faults()
        self.patients: list[Patient] = [
            _draw_patient(i, seed, patient_prefix, condition_fraction) for i in range(patients)
        ]

    @property
    def devices(self) -> list[str]:
        """All device ids (monitors and wearables), in patient order."""
        return [d for p in self.patients for d in (p.monitor_id, p.wearable_id)]

    @property
    def device_patient(self) -> dict[str, str]:
        """Which patient each device is attached to."""
        return {d: p.patient_id for p in self.patients for d in (p.monitor_id, p.wearable_id)}

    def topic(self, device_id: str) -> str:
        """The vitals topic of one device."""
        return topics.vitals(self.site, device_id)

    def messages(self, start: datetime, duration_s: float) -> Iterator[Outgoing]:
        """Generate every publish of ``duration_s`` virtual seconds from ``start`` (aware), in send-time order.

        Devices sample during ``[start, start + duration_s)``; late and duplicate copies of those samples may be
        sent after the end. ``duration_s`` may be ``math.inf`` for an endless stream.
        """
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be an aware datetime")
        start_ms = round(start.timestamp() * 1000)
        end_ms = math.inf if math.isinf(duration_s) else start_ms + round(duration_s * 1000)
        faults = self.faults
        period = self.period_ms
        p_dropout = 1 - math.exp(-faults.dropouts_per_hour * period / 3_600_000)

        heap: list[tuple[int, int, object]] = []
        seq = 0
        for i, patient in enumerate(self.patients):
            state = _PatientState(patient, random.Random(f"aegle-sim:{self.seed}:dyn:{i}:{start_ms}"), start_ms)
            for device_id, kind in ((patient.monitor_id, "monitor"), (patient.wearable_id, "wearable")):
                rng = random.Random(f"aegle-sim:{self.seed}:device:{device_id}:{start_ms}")
                device = _Device(device_id, kind, state, self.topic(device_id), rng, period)
                # A monitor's first report carries every vital (as when it is connected to the patient).
                device.next_bp_ms = device.next_temp_ms = start_ms
                heapq.heappush(heap, (start_ms + rng.randrange(period), seq, device))
                seq += 1

        while heap:
            t_ms, _, item = heapq.heappop(heap)
            if isinstance(item, Outgoing):
                yield item
                continue
            device = cast(_Device, item)
            if t_ms >= end_ms:
                continue
            heapq.heappush(heap, (t_ms + period, seq, device))
            seq += 1
            rng = device.rng
            if t_ms < device.silent_until_ms:
                continue
            if p_dropout and rng.random() < p_dropout:
                device.silent_until_ms = t_ms + int(rng.uniform(*faults.dropout_s) * 1000)
                continue
            out = self._sample(device, t_ms)
            if faults.bad_fraction and rng.random() < faults.bad_fraction:
                yield self._spoil(device, out, rng.choice(faults.bad_reasons))
                continue
            send_ms = t_ms
            if faults.late_fraction and rng.random() < faults.late_fraction:
                send_ms = t_ms + max(1, round(rng.uniform(*faults.late_s) * 1000))
                heapq.heappush(heap, (send_ms, seq, out._replace(send_at=_utc(send_ms), fault="late")))
                seq += 1
            else:
                yield out
            if faults.duplicate_fraction and rng.random() < faults.duplicate_fraction:
                dup_ms = send_ms + round(rng.uniform(*faults.duplicate_delay_s) * 1000)
                heapq.heappush(heap, (dup_ms, seq, out._replace(send_at=_utc(dup_ms), fault="duplicate")))
                seq += 1

    def _sample(self, device: _Device, t_ms: int) -> Outgoing:
        state = device.patient
        state.advance_to(t_ms)
        if device.kind == "monitor":
            observations = [
                _obs("8867-4", round(state.value("hr", 0.7))),
                _obs("59408-5", round(state.value("spo2", 0.3))),
                _obs("9279-1", round(state.value("rr", 0.5))),
            ]
            if t_ms >= device.next_temp_ms:
                device.next_temp_ms = t_ms + TEMP_INTERVAL_MS
                observations.append(_obs("8310-5", round(state.value("temp", 0.03), 1)))
            if t_ms >= device.next_bp_ms:
                device.next_bp_ms = t_ms + BP_INTERVAL_MS
                systolic = round(state.value("sys", 3.0))
                diastolic = round(min(state.value("dia", 2.0), systolic - 15))
                observations += [_obs("8480-6", systolic), _obs("8462-4", diastolic)]
        else:
            rms, accel = state.motion()
            observations = [
                _obs("8867-4", round(state.value("hr", 1.5 + 3.0 * state.exertion))),  # PPG suffers from motion
                _obs("motion-rms", round(rms, 3)),
                _obs("accel-x", round(accel[0], 3)),
                _obs("accel-y", round(accel[1], 3)),
                _obs("accel-z", round(accel[2], 3)),
            ]
        message_id = str(uuid.UUID(int=device.rng.getrandbits(128), version=4))
        body = {
            "schema": SCHEMA,
            "message_id": message_id,
            "site": self.site,
            "device_id": device.device_id,
            "patient_id": state.p.patient_id,
            "timestamp": _iso(t_ms),
            "observations": observations,
        }
        moment = _utc(t_ms)
        return Outgoing(moment, device.topic, _dumps(body), device.device_id, message_id, None, moment)

    def _spoil(self, device: _Device, out: Outgoing, reason: str) -> Outgoing:
        """Turn a valid publish into one that must be rejected with exactly ``reason``."""
        rng = device.rng
        body = json.loads(out.payload)
        observations: list[dict[str, object]] = body["observations"]
        message_id: str | None = body["message_id"]
        if reason == "payload_too_large":
            body["debug"] = "0" * 17_000  # firmware dumping a trace buffer
        elif reason == "malformed_json":
            raw = _dumps(body)
            return out._replace(payload=raw[: rng.randrange(1, len(raw) - 1)], message_id=None, expected_reject=reason)
        elif reason == "missing_field":
            del body["patient_id"]  # device not yet associated with a patient
        elif reason == "invalid_field":
            observations[0]["value"] = "---"  # the display's "no reading" dashes
        elif reason == "unknown_code":
            observations.append({"code": "8478-0", "value": 90, "unit": "mm[Hg]"})  # mean arterial pressure
        elif reason == "wrong_unit":
            observations[0]["unit"] = "{beats}/min"
        elif reason == "impossible_value":
            spo2 = next((o for o in observations if o["code"] == "59408-5"), None)
            if spo2 is not None:
                spo2["value"] = 127  # the oximeter's "no finger" sentinel
            else:
                observations[0]["value"] = 0  # lost skin contact
        elif reason == "naive_timestamp":
            body["timestamp"] = body["timestamp"].removesuffix("Z")
        elif reason == "timestamp_in_future":
            moment = out.timestamp + timedelta(days=rng.uniform(1, 400))  # real-time clock reset after a battery swap
            body["timestamp"] = _iso(int(moment.timestamp() * 1000))
        elif reason == "timestamp_too_old":
            body["timestamp"] = _iso(rng.randrange(86_400_000))  # a real-time clock that lost power restarts at 1970
        elif reason == "duplicate_observation":
            observations.append(dict(observations[0]))
        elif reason == "topic_mismatch":
            body["device_id"] = f"{device.device_id.split('-')[0]}-0"  # cloned factory configuration
        else:  # pragma: no cover - Faults validates the reasons
            raise ValueError(reason)
        return out._replace(payload=_dumps(body), message_id=message_id, expected_reject=reason)


def run(
    simulator: Simulator,
    publish_fn: Callable[[Outgoing], object],
    duration_s: float,
    realtime: bool = True,
    speed: float = 1.0,
    start: datetime | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Publish ``duration_s`` virtual seconds of the simulator's stream through ``publish_fn``; return the count.

    With ``realtime`` each message is sent when its ``send_at`` comes, ``speed`` times faster than the wall clock;
    otherwise as fast as possible. Without ``start``, the virtual clock is placed so that no timestamp is ever
    ahead of the wall clock (a sped-up or unpaced run replays the recent past and ends at the present).
    ``stop`` ends the run early when set.
    """
    if speed <= 0:
        raise ValueError("speed must be positive")
    if start is None:
        now = datetime.now(UTC)
        if math.isinf(duration_s):
            start = now
        elif not realtime:
            start = now - timedelta(seconds=duration_s)
        else:
            start = now - timedelta(seconds=duration_s * max(0.0, 1 - 1 / speed))
    wall0 = time.monotonic()
    count = 0
    for out in simulator.messages(start, duration_s):
        if stop is not None and stop.is_set():
            break
        if realtime:
            delay = wall0 + (out.send_at - start).total_seconds() / speed - time.monotonic()
            if delay > 0:
                if stop is not None:
                    if stop.wait(delay):
                        break
                else:
                    time.sleep(delay)
        publish_fn(out)
        count += 1
    return count
