"""The ward view's live feed: every patient's newest vitals, flags and sensor context, pushed to the open pages.

One :class:`WardFeed` per service tails the vitals store (what the ingest worker wrote, the same data the study
path reads at acquisition time): at start-up the last context window, then every ``tick_s`` the samples of the
last ``grace_s`` seconds (late messages within that grace are picked up; older ones are in the store and in any
context read from it, but not on the live page). It keeps a :class:`core.ContextCache` (the enhancer's context,
computed by the same code) and each channel's newest reading, and computes one *view* per patient: the newest
value, its time, a ``low``/``high`` flag against ``settings.dashboard.limits``, a stale mark after
``stale_after_s``, and the context (completeness, levels, ages) the enhancer would see now. Only views that
changed are pushed; a page gets the whole ward first. The feed runs while a page is open (and a minute after).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import BY_CODE, CHANNELS, ContextCache, Sample, Settings
from server.store import VitalsStore

log = logging.getLogger("aegle.dashboard")

#: Short labels and display units of the context channels (names and UCUM units come from core.vitals).
LABELS = {"heart_rate": "HR", "spo2": "SpO₂", "temperature": "Temp", "respiratory_rate": "RR",
          "systolic_bp": "SBP", "diastolic_bp": "DBP", "motion": "Motion"}  # fmt: skip
UNITS = {"/min": "/min", "%": "%", "Cel": "°C", "mm[Hg]": "mmHg", "m/s2": "m/s²"}
#: A page's queue; a page that falls this far behind is dropped (its browser reconnects and gets the whole ward).
QUEUE_MAX = 512
#: Trend points: the newest value of each bucket of this many milliseconds, over the context window.
TREND_BUCKET_MS = 10_000


def channels() -> list[dict[str, Any]]:
    """Each context channel: key, short label, name, UCUM unit and display unit (first code of the channel)."""
    out: dict[str, dict[str, Any]] = {}
    for sign in BY_CODE.values():
        if sign.key in CHANNELS and sign.key not in out:
            out[sign.key] = {"key": sign.key, "label": LABELS[sign.key], "name": sign.display.split(" by ")[0],
                             "ucum": sign.unit, "unit": UNITS.get(sign.unit, sign.unit)}  # fmt: skip
    return [out[c] for c in CHANNELS]


def flag(value: float, limits: tuple[float | None, float | None] | None) -> str | None:
    """``low`` below the low limit, ``high`` above the high one, else None."""
    low, high = limits or (None, None)
    if low is not None and value < low:
        return "low"
    if high is not None and value > high:
        return "high"
    return None


@dataclass
class Reading:
    """A channel's newest sample."""

    t_ms: int
    value: float
    device_id: str


class WardFeed:
    """Tails the store and pushes changed patient views to subscribers (see the module doc)."""

    def __init__(
        self, store: Callable[[], VitalsStore], settings: Settings, tick_s: float = 0.5, grace_s: float = 10.0
    ) -> None:
        self._store = store
        self.settings = settings
        self.tick_s = tick_s
        self.grace_ms = int(grace_s * 1000)
        self.window_ms = int(settings.context.window_s * 1000)
        self.linger_s = 60.0
        self.load_timeout_s = 10.0
        self._loaded = asyncio.Event()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # the views: written by poll (a worker thread), read by snapshot
        self._reset()

    def _reset(self) -> None:
        context = self.settings.context
        self._cache = ContextCache(context.window_s, context.freshness_tau_s)
        self._latest: dict[str, dict[str, Reading]] = {}
        self._trends: dict[str, dict[str, list[list[float]]]] = {}
        self._site: dict[str, str] = {}
        self._views: dict[str, dict[str, Any]] = {}
        self._watermark_ms: int | None = None
        self._context_due = 0.0
        self.error: str | None = None

    # ----------------------------------------------------------------- subscribers (event loop)

    async def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that gets the whole ward first, then every change; starts the feed (and waits for its first
        read of the store, at most ``load_timeout_s``) if it is not running."""
        if self._task is None or self._task.done():
            self._loaded = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), self.load_timeout_s)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        queue.put_nowait(self.snapshot())  # no await between the snapshot and joining: no change is missed
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop sending to ``queue``."""
        self._subscribers.discard(queue)

    def snapshot(self) -> dict[str, Any]:
        """The whole ward: ``{"type": "ward", ...}`` with the channels, limits and every patient's view."""
        dashboard = self.settings.dashboard
        with self._lock:
            patients = sorted(self._views.values(), key=lambda v: v["patient_id"])
            trends = {p: {c: [list(x) for x in points] for c, points in t.items()} for p, t in self._trends.items()}
        return {"type": "ward", "now_ms": int(time.time() * 1000), "channels": channels(),
                "limits": dashboard.limits, "stale_after_s": dashboard.stale_after_s,
                "window_s": self.settings.context.window_s, "error": self.error,
                "patients": patients, "trends": trends}  # fmt: skip

    async def _run(self) -> None:
        idle_since: float | None = None
        while True:
            if self._subscribers:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.linger_s:
                self._reset()  # nobody watches: forget, and read the whole window again when a page opens
                return
            started = time.monotonic()
            try:
                events = await asyncio.to_thread(self.poll)
            except Exception as exc:  # the store's errors vary by backend; the page shows it and the feed retries
                events = self._store_failed(exc)
            for event in events:
                self._broadcast(event)
            self._loaded.set()
            await asyncio.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))

    def _store_failed(self, exc: Exception) -> list[dict[str, Any]]:
        error = f"vitals store unavailable: {type(exc).__name__}"
        if error == self.error:
            return []
        log.warning("dashboard: %s", error)
        self.error = error
        return [{"type": "status", "error": error}]

    def _broadcast(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a page that does not keep up: drop it; its browser reconnects
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait({"type": "overflow"})

    # ----------------------------------------------------------------- the store (worker thread)

    def poll(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Read new samples, update the state and return the events: the views that changed in one ``patients``
        event (one message per read however many patients changed), patients gone, the store's status."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if self._watermark_ms is None:
            since = now_ms - self.window_ms
        else:
            since = min(self._watermark_ms, now_ms) - self.grace_ms
        samples = self._store().recent(since)
        events: list[dict[str, Any]] = []
        if self.error is not None:
            self.error = None
            events.append({"type": "status", "error": None})
        changed: list[dict[str, Any]] = []
        self._add(samples)
        self._watermark_ms = max([self._watermark_ms or since, *(s.t_ms for s in samples)])
        full = time.monotonic() >= self._context_due
        if full:  # contexts (medians over the window) move slowly: every patient's is recomputed every 2 s, values
            # on every read (at 1 Hz per patient, recomputing on every new sample cost 4× the CPU)
            self._context_due = time.monotonic() + 2.0
        for patient_id in list(self._latest):
            newest = max(r.t_ms for r in self._latest[patient_id].values())
            if now_ms - newest > 2 * self.window_ms:
                del self._latest[patient_id]
                with self._lock:
                    self._trends.pop(patient_id, None)
                    gone = self._views.pop(patient_id, None)
                if gone is not None:
                    events.append({"type": "removed", "patient_id": patient_id})
                continue
            view = self._view(patient_id, now_ms, full)
            if view != self._views.get(patient_id):
                with self._lock:
                    self._views[patient_id] = view
                changed.append(view)
        if changed:
            events.append({"type": "patients", "now_ms": now_ms, "patients": changed})
        return events

    def _add(self, samples: list[Sample]) -> None:
        self._cache.add(samples)
        for s in samples:
            sign = BY_CODE.get(s.code)
            if sign is None or sign.key not in CHANNELS:
                continue
            latest = self._latest.setdefault(s.patient_id, {})
            current = latest.get(sign.key)
            if current is None or s.t_ms >= current.t_ms:
                latest[sign.key] = Reading(s.t_ms, s.value, s.device_id)
            self._site[s.patient_id] = s.site
            with self._lock:
                self._trend(s.patient_id, sign.key, s.t_ms, s.value)

    def _trend(self, patient_id: str, channel: str, t_ms: int, value: float) -> None:
        """Keep the newest value per :data:`TREND_BUCKET_MS` over the window (late samples are left out)."""
        points = self._trends.setdefault(patient_id, {}).setdefault(channel, [])
        if points and t_ms // TREND_BUCKET_MS == points[-1][0] // TREND_BUCKET_MS:
            if t_ms >= points[-1][0]:
                points[-1] = [t_ms, value]
        elif not points or t_ms > points[-1][0]:
            points.append([t_ms, value])
            while points[0][0] < t_ms - self.window_ms:
                del points[0]

    def _view(self, patient_id: str, now_ms: int, with_context: bool) -> dict[str, Any]:
        dashboard = self.settings.dashboard
        stale_ms = dashboard.stale_after_s * 1000
        values: dict[str, dict[str, Any] | None] = {}
        for channel in CHANNELS:
            reading = self._latest[patient_id].get(channel)
            values[channel] = None if reading is None else {
                "value": round(reading.value, 2), "t_ms": reading.t_ms, "device_id": reading.device_id,
                "stale": now_ms - reading.t_ms > stale_ms, "flag": flag(reading.value, dashboard.limits.get(channel)),
            }  # fmt: skip
        previous = self._views.get(patient_id)
        if with_context or previous is None:
            ctx = self._cache.context(patient_id)
            context = {"completeness": round(ctx.completeness, 4), "levels": ctx.levels,
                       "missing": [c for c in CHANNELS if ctx.levels[c] is None]}  # fmt: skip
        else:
            context = previous["context"]
        return {"patient_id": patient_id, "site": self._site.get(patient_id), "values": values, "context": context}
