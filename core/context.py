"""The sensor context: a fixed-length, normalised vector describing a patient's vitals around one moment.

The models consume :attr:`SensorContext.vector`, laid out as :data:`CONTEXT_FIELDS`:

* ``z_<channel>`` — the window's robust level ((value − adult reference) / reference scale, clipped to ±5);
  the median for physiological channels, the 90th percentile for motion (peak movement is what blurs an image);
* ``mask_<channel>`` — 1 when the channel has at least one sample in the window, else 0 (its ``z`` is then 0,
  the reference level: missing vitals are a normal case, never an error);
* ``fresh_<channel>`` — exp(−age / τ) of the channel's newest sample (1 = just measured, 0 = missing);
* ``completeness`` — the fraction of channels present.

The window is causal: ``[t − window, t]``. The same function serves "now" (live cache) and "at time t"
(acquisition time of a study, read back from the store).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from core.vitals import BY_CODE, Sample, VitalSign, from_ms, to_ms

CHANNELS: tuple[str, ...] = (
    "heart_rate",
    "spo2",
    "temperature",
    "respiratory_rate",
    "systolic_bp",
    "diastolic_bp",
    "motion",
)
CONTEXT_FIELDS: tuple[str, ...] = (
    *(f"z_{c}" for c in CHANNELS),
    *(f"mask_{c}" for c in CHANNELS),
    *(f"fresh_{c}" for c in CHANNELS),
    "completeness",
)
CONTEXT_SIZE = len(CONTEXT_FIELDS)
Z_CLIP = 5.0

_REFERENCE: dict[str, VitalSign] = {}
for _sign in BY_CODE.values():
    _REFERENCE.setdefault(_sign.key, _sign)


def channel_of(code: str) -> str | None:
    """The context channel a code feeds, or None (accelerometer axes are stored but not in the context)."""
    sign = BY_CODE.get(code)
    return sign.key if sign is not None and sign.key in CHANNELS else None


@dataclass(frozen=True)
class SensorContext:
    """A patient's context at ``at``: raw window levels, ages, and the model vector."""

    patient_id: str
    at: datetime
    window_s: float
    levels: dict[str, float | None]
    ages_s: dict[str, float | None]
    vector: np.ndarray = field(repr=False)

    @property
    def completeness(self) -> float:
        return float(self.vector[-1])

    def to_dict(self, *, patient: bool = True, vector: bool = True) -> dict[str, Any]:
        """The one JSON form of a context: ``patient_id``, ``at`` (UTC, ``Z``), ``window_s``, ``completeness``,
        ``levels``, ``ages_s``, ``fields`` (the vector's layout) and ``vector`` (rounded to 6 decimals).

        Published retained per patient and answered by the API in full; ``patient=False`` leaves out the patient id
        (result events, the derived DICOM's private block, ``X-Aegle-Applied``); ``vector=False`` also leaves out
        the vector and its layout (the study log, ``X-Aegle-Result``).
        """
        data: dict[str, Any] = {"patient_id": self.patient_id} if patient else {}
        data |= {
            "at": self.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "window_s": self.window_s,
            "completeness": round(self.completeness, 4),
            "levels": dict(self.levels),
            "ages_s": dict(self.ages_s),
        }
        if vector:
            data |= {"fields": list(CONTEXT_FIELDS), "vector": [round(float(x), 6) for x in self.vector]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensorContext:
        """Inverse of :meth:`to_dict`; refuses a vector laid out differently."""
        if tuple(data["fields"]) != CONTEXT_FIELDS:
            raise ValueError("context vector layout differs from this version's CONTEXT_FIELDS")
        return cls(
            patient_id=data["patient_id"],
            at=datetime.fromisoformat(data["at"]),
            window_s=float(data["window_s"]),
            levels=dict(data["levels"]),
            ages_s=dict(data["ages_s"]),
            vector=np.asarray(data["vector"], dtype=np.float32),
        )


def _level(channel: str, values: list[float]) -> float:
    if channel == "motion":
        return float(np.percentile(values, 90))
    return float(np.median(values))


def context_from_series(
    patient_id: str,
    series: dict[str, list[tuple[int, float]]],
    at_ms: int,
    window_s: float = 300.0,
    tau_s: float = 60.0,
) -> SensorContext:
    """Context from per-channel ``(t_ms, value)`` lists; points outside ``[at − window, at]`` are ignored."""
    start_ms = at_ms - int(window_s * 1000)
    levels: dict[str, float | None] = {}
    ages: dict[str, float | None] = {}
    z = np.zeros(len(CHANNELS), dtype=np.float32)
    mask = np.zeros(len(CHANNELS), dtype=np.float32)
    fresh = np.zeros(len(CHANNELS), dtype=np.float32)
    for i, channel in enumerate(CHANNELS):
        points = series.get(channel, [])
        lo = bisect.bisect_left(points, (start_ms, -math.inf))
        hi = bisect.bisect_right(points, (at_ms, math.inf))
        window = [v for _, v in points[lo:hi]]
        if not window:
            levels[channel] = ages[channel] = None
            continue
        level = _level(channel, window)
        age = (at_ms - points[hi - 1][0]) / 1000.0
        ref = _REFERENCE[channel]
        levels[channel] = round(level, 4)
        ages[channel] = round(age, 3)
        z[i] = float(np.clip((level - ref.ref_mean) / ref.ref_scale, -Z_CLIP, Z_CLIP))
        mask[i] = 1.0
        fresh[i] = math.exp(-age / tau_s)
    vector = np.concatenate([z, mask, fresh, [mask.mean()]]).astype(np.float32)
    return SensorContext(patient_id, from_ms(at_ms), window_s, levels, ages, vector)


def series_from_samples(samples: Iterable[Sample]) -> dict[str, list[tuple[int, float]]]:
    """Group samples into sorted per-channel ``(t_ms, value)`` lists (one point per device and instant)."""
    seen: set[tuple[str, str, int]] = set()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for s in samples:
        channel = channel_of(s.code)
        if channel is None or (s.device_id, s.code, s.t_ms) in seen:
            continue
        seen.add((s.device_id, s.code, s.t_ms))
        series[channel].append((s.t_ms, s.value))
    for points in series.values():
        points.sort()
    return series


class SampleReader(Protocol):
    """What :func:`context_at` needs from a store."""

    def query(self, patient_id: str, start_ms: int, end_ms: int) -> list[Sample]: ...


def context_at(
    store: SampleReader, patient_id: str, at: datetime, window_s: float = 300.0, tau_s: float = 60.0
) -> SensorContext:
    """A patient's context at ``at`` (for example a study's acquisition time), read from the store."""
    at_ms = to_ms(at)
    samples = store.query(patient_id, at_ms - int(window_s * 1000), at_ms)
    return context_from_series(patient_id, series_from_samples(samples), at_ms, window_s, tau_s)


class ContextCache:
    """Live rolling windows per patient, fed by the ingest worker; thread-safe.

    Keeps a little more than one window per patient (late messages are inserted in time order, exact
    re-deliveries are ignored) and answers "context now" or at any time still inside the kept span.
    """

    def __init__(self, window_s: float = 300.0, tau_s: float = 60.0, keep_s: float | None = None) -> None:
        self.window_s = window_s
        self.tau_s = tau_s
        self.keep_ms = int((keep_s if keep_s is not None else 2 * window_s) * 1000)
        self._lock = threading.Lock()
        self._series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
        self._keys: dict[str, set[tuple[str, str, int]]] = defaultdict(set)
        self._site: dict[str, str] = {}

    def add(self, samples: Iterable[Sample]) -> set[str]:
        """Insert samples; returns the patients whose windows changed."""
        touched: set[str] = set()
        with self._lock:
            for s in samples:
                channel = channel_of(s.code)
                if channel is None:
                    continue
                key = (s.device_id, s.code, s.t_ms)
                keys = self._keys[s.patient_id]
                if key in keys:
                    continue
                keys.add(key)
                points = self._series[s.patient_id][channel]
                if not points or points[-1][0] <= s.t_ms:
                    points.append((s.t_ms, s.value))
                else:
                    bisect.insort(points, (s.t_ms, s.value))
                self._site[s.patient_id] = s.site
                touched.add(s.patient_id)
            for patient_id in touched:
                self._evict(patient_id)
        return touched

    def _evict(self, patient_id: str) -> None:
        newest = max((p[-1][0] for p in self._series[patient_id].values() if p), default=0)
        cutoff = max(newest, int(time.time() * 1000)) - self.keep_ms
        for points in self._series[patient_id].values():
            drop = bisect.bisect_left(points, (cutoff, -math.inf))
            if drop:
                del points[:drop]
        if len(self._keys[patient_id]) > 4 * sum(len(p) for p in self._series[patient_id].values()) + 1024:
            self._keys[patient_id] = {k for k in self._keys[patient_id] if k[2] >= cutoff}

    def patients(self) -> list[str]:
        """Patients with samples in the cache."""
        with self._lock:
            return sorted(self._series)

    def site_of(self, patient_id: str) -> str | None:
        """The site a patient's devices report from."""
        with self._lock:
            return self._site.get(patient_id)

    def context(self, patient_id: str, at: datetime | None = None) -> SensorContext:
        """Context now (wall clock) or at ``at``; an unknown patient gets an all-missing context."""
        at_ms = to_ms(at) if at is not None else int(time.time() * 1000)
        with self._lock:
            series = {c: list(p) for c, p in self._series.get(patient_id, {}).items()}
        return context_from_series(patient_id, series, at_ms, self.window_s, self.tau_s)
