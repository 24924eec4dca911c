"""Step 9, the result: what one series went through (:class:`SeriesResult`), announced and recorded.

Every step of :class:`~server.study.pipeline.StudyPipeline` writes into the series' :class:`SeriesResult`; at the
end it becomes the JSON result event (:meth:`SeriesResult.to_event`), published by a :class:`ResultPublisher`
(:class:`MqttResultPublisher`: ``aegle/v1/{site}/results/{study_uid}``) and recorded by :class:`StudyRecord`
(counted on ``/metrics``, its :meth:`SeriesResult.summary` kept in the study log). Events and summaries carry
UIDs, counts, model, context and reasons — never patient names, ids or birth dates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset

from core import topics

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from prometheus_client import Counter

    from core import SensorContext
    from gan import TriageResult


@dataclass(frozen=True)
class Failure:
    """One thing that went wrong: which instance (None: the whole series), a short reason code, a detail."""

    sop_instance_uid: str | None
    reason: str
    detail: str
    retryable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"sop_instance_uid": self.sop_instance_uid, "reason": self.reason, "detail": self.detail,
                "retryable": self.retryable}


def detail(exc: BaseException) -> str:
    """A failure's detail: the exception's type and message, at most 500 characters."""
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class SeriesResult:
    """Everything one series produced: UIDs, counts, the model and context used, triage, failures.

    ``context`` is the sensor context the enhancer was conditioned on (None: enhanced without vitals); the event
    and the derived series report it through :meth:`~core.context.SensorContext.to_dict`, without the patient id.
    """

    study_uid: str | None = None
    series_uid: str | None = None
    received: int = 0
    derived: list[Dataset] = field(default_factory=list)
    sources: list[Dataset] = field(default_factory=list)  # the instances derived[i] was made from, in that order
    stored: bool = False
    skipped: list[str] = field(default_factory=list)  # SOP instance UIDs Aegle itself produced
    failures: list[Failure] = field(default_factory=list)  # instances (or the series) not enhanced and stored
    warnings: list[Failure] = field(default_factory=list)  # done anyway, but degraded: no triage, no context
    triage: dict[str, TriageResult] = field(default_factory=dict)
    context: SensorContext | None = None
    acquired_at: datetime | None = None
    model_name: str | None = None
    model_version: str | None = None
    strength: float | None = None
    scale: int | None = None
    store_attempts: int = 0

    @property
    def derived_series_uid(self) -> str | None:
        return str(self.derived[0].SeriesInstanceUID) if self.derived else None

    @property
    def status(self) -> str:
        """``ok`` (everything stored), ``partial`` (some instances failed), ``failed`` or ``skipped``."""
        if self.stored and not self.failures:
            return "ok"
        if self.stored:
            return "partial"
        return "skipped" if self.skipped and not self.failures else "failed"

    def to_event(self, *, vector: bool = True) -> dict[str, Any]:
        """The JSON result event (UIDs, counts, model, context, triage, failures; no patient data).

        ``vector=False``: the context without the model vector (see :meth:`summary`).
        """
        return {
            "version": 1,
            "status": self.status,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "derived_series_uid": self.derived_series_uid if self.stored else None,
            "derived_sop_instance_uids": [str(d.SOPInstanceUID) for d in self.derived] if self.stored else [],
            "counts": {"received": self.received, "enhanced": len(self.derived) if self.stored else 0,
                       "failed": len({f.sop_instance_uid for f in self.failures}), "skipped": len(self.skipped)},
            "acquired_at": _iso(self.acquired_at),
            "model": self.model_name,
            "model_version": self.model_version,
            "strength": self.strength,
            "scale": self.scale,
            "context": None if self.context is None else self.context.to_dict(patient=False, vector=vector),
            "triage": {uid: {"enhance": t.enhance, "degradations": list(t.degradations), "reason": t.reason,
                             "probabilities": {k: round(float(v), 4) for k, v in t.probabilities.items()}}
                       for uid, t in self.triage.items()},
            "failures": [f.to_dict() for f in self.failures],
            "warnings": [f.to_dict() for f in self.warnings],
            "store_attempts": self.store_attempts,
            "finished_at": _iso(datetime.now(UTC)),
        }

    def summary(self) -> dict[str, Any]:
        """The result for the study log and the ``X-Aegle-Result`` header: the event without the context vector."""
        return self.to_event(vector=False)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ResultPublisher(Protocol):
    """Announces a processed series (JSON event, no patient identifiers)."""

    def publish(self, study_uid: str, event: dict[str, Any]) -> None: ...


class MqttResultPublisher:
    """Publishes result events on ``aegle/v1/{site}/results/{study_uid}`` (QoS 1, waits for the broker's ack)."""

    def __init__(self, client: mqtt.Client, site: str, timeout_s: float = 10.0) -> None:
        self.client = client
        self.site = site
        self.timeout_s = timeout_s

    def publish(self, study_uid: str, event: dict[str, Any]) -> None:
        info = self.client.publish(topics.results(self.site, study_uid), json.dumps(event), qos=1)
        info.wait_for_publish(self.timeout_s)
        if not info.is_published():
            raise TimeoutError(f"result event not acknowledged by the broker within {self.timeout_s} s")


class ResultLog(Protocol):
    """Where series results are kept (``server.api.studylog.StudyLog``)."""

    def record(self, study_uid: str, source_series_uid: str, outcome: str, result: dict[str, Any]) -> None: ...


class SeriesCounters(Protocol):
    """The ``aegle_series`` and ``aegle_instances`` counters of ``/metrics`` (``server.api.deps.ApiMetrics``)."""

    series: Counter
    instances: Counter


class FrameKeeper(Protocol):
    """Keeps a stored series' frames for the dashboard's viewer (``server.study.frames.SeriesFrames``)."""

    def keep_result(self, result: SeriesResult) -> None: ...


class StudyRecord:
    """Counts every series and its instances on ``/metrics``, keeps its :meth:`SeriesResult.summary` in the
    study log and (with ``frames``) its frames for the viewer, whichever input path it came by (the pipeline calls
    it once per series)."""

    def __init__(self, counters: SeriesCounters, log: ResultLog, frames: FrameKeeper | None = None) -> None:
        self.counters = counters
        self.log = log
        self.frames = frames

    def __call__(self, result: SeriesResult) -> None:
        outcome = "processed" if result.stored else "failed"
        self.counters.series.labels(outcome=outcome).inc()
        self.counters.instances.labels(outcome="enhanced").inc(len(result.derived) if result.stored else 0)
        self.counters.instances.labels(outcome="failed").inc(len({f.sop_instance_uid for f in result.failures}))
        if result.study_uid is not None:
            self.log.record(result.study_uid, result.series_uid or "", outcome, result.summary())
        if self.frames is not None:
            self.frames.keep_result(result)
