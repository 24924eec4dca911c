"""The study pipeline: received instances → context at acquisition time → triage + enhancer → derived series → PACS.

:class:`StudyPipeline` processes one series at a time (:meth:`StudyPipeline.process_series`) or groups a batch
of instances by series (:meth:`StudyPipeline.process`). A bad instance never stops the others: every failure is
kept in the :class:`SeriesResult` with its reason, and the rest of the series is still enhanced and stored.
Transient failures (the PACS or the vitals store briefly unavailable) are retried with bounded exponential
backoff; permanent ones are recorded at once. Logs and result events carry counts, UIDs and reasons — never
patient names, ids or birth dates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydicom.dataset import Dataset

from core import topics
from server.study import (
    DicomEncodingError,
    DicomInputError,
    ModelImage,
    acquisition_time,
    context_summary,
    derived_series,
    encode,
    from_model_space,
    is_aegle_output,
    read_instance,
    to_model_space,
)
from server.study.pixels import unplanes

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from core.context import SensorContext
    from gan.triage import TriageResult
    from server.inference import EnhanceOutput

log = logging.getLogger("aegle.pipeline")

EnhanceFn = Callable[[np.ndarray, "np.ndarray | None"], "EnhanceOutput"]
TriageFn = Callable[[Sequence[np.ndarray]], "Sequence[TriageResult]"]
ContextFn = Callable[[str, datetime], "SensorContext"]
DESCRIPTION = "Context-conditioned super-resolution and denoising."


class PacsStore(Protocol):
    """Where derived series go; raises ``server.pacs.PacsError`` (with ``.transient``) on failure."""

    def store(self, datasets: Sequence[Dataset]) -> None: ...


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


@dataclass
class SeriesResult:
    """Everything one series produced: UIDs, counts, the model and context used, triage, failures."""

    study_uid: str | None = None
    series_uid: str | None = None
    received: int = 0
    derived: list[Dataset] = field(default_factory=list)
    stored: bool = False
    skipped: list[str] = field(default_factory=list)  # SOP instance UIDs Aegle itself produced
    failures: list[Failure] = field(default_factory=list)  # instances (or the series) not enhanced and stored
    warnings: list[Failure] = field(default_factory=list)  # done anyway, but degraded: no triage, no context
    triage: dict[str, TriageResult] = field(default_factory=dict)
    context: dict[str, Any] | None = None
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

    def to_event(self) -> dict[str, Any]:
        """The JSON result event (UIDs, counts, model, context summary, triage, failures; no patient data)."""
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
            "context": self.context,
            "triage": {uid: {"enhance": t.enhance, "degradations": list(t.degradations), "reason": t.reason}
                       for uid, t in self.triage.items()},
            "failures": [f.to_dict() for f in self.failures],
            "warnings": [f.to_dict() for f in self.warnings],
            "store_attempts": self.store_attempts,
            "finished_at": _iso(datetime.now(UTC)),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class _Item:
    ds: Dataset
    image: ModelImage

    @property
    def uid(self) -> str:
        return str(self.ds.SOPInstanceUID)


class StudyPipeline:
    """Enhance series of DICOM instances and store the derived series (see the module docstring).

    ``max_batch`` bounds the slices per enhancer call; ``store_attempts`` / ``backoff_s`` / ``backoff_max_s``
    bound the retries of transient PACS and context-store errors; ``default_tz`` is the local time zone of
    acquisition times that carry no UTC offset; ``max_pixels`` applies to instances given as bytes.
    """

    def __init__(
        self,
        enhance: EnhanceFn,
        triage: TriageFn,
        context_at: ContextFn,
        store: PacsStore,
        results: ResultPublisher | None,
        *,
        default_tz: tzinfo = UTC,
        max_batch: int = 8,
        max_pixels: int = 4096 * 4096,
        store_attempts: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_batch < 1 or store_attempts < 1:
            raise ValueError("max_batch and store_attempts must be at least 1")
        self.enhance = enhance
        self.triage = triage
        self.context_at = context_at
        self.store = store
        self.results = results
        self.default_tz = default_tz
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.store_attempts = store_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep

    # ------------------------------------------------------------------ entry points

    def process(self, instances: Sequence[Dataset | bytes]) -> list[SeriesResult]:
        """Group instances by series and process each series; unreadable bytes get a series result of their own."""
        groups: dict[str, list[Dataset | bytes]] = {}
        for instance in instances:
            key = str(instance.SeriesInstanceUID) if isinstance(instance, Dataset) else ""
            if isinstance(instance, bytes):
                try:
                    instance = read_instance(instance, max_pixels=self.max_pixels)
                    key = str(instance.SeriesInstanceUID)
                except DicomInputError:
                    pass  # kept as bytes: process_series records the reason
            groups.setdefault(key, []).append(instance)
        return [self.process_series(group) for group in groups.values()]

    def process_series(self, datasets: Sequence[Dataset | bytes]) -> SeriesResult:
        """Enhance one series, store the derived series and publish the result; never raises for bad instances."""
        result = SeriesResult(received=len(datasets))
        items = self._prepare(datasets, result)
        if items:
            self._context(items, result)
            self._triage(items, result)
            enhanced = self._enhance(items, result)
            if enhanced:
                sources = [item.ds for item in items if item.uid in enhanced]
                try:
                    result.derived = derived_series(
                        sources, [enhanced[str(ds.SOPInstanceUID)] for ds in sources], scale=result.scale or 1,
                        model_name=result.model_name or "", model_version=result.model_version or "",
                        context=result.context, description=DESCRIPTION, strength=result.strength,
                    )
                except Exception as exc:
                    result.failures.append(Failure(None, "derive-failed", _detail(exc)))
                if result.derived:
                    self._store(result)
        self._publish(result)
        log.info(
            "series processed: status=%s received=%d derived=%d failed=%d skipped=%d",
            result.status, result.received, len(result.derived), len(result.failures), len(result.skipped),
        )
        return result

    # ------------------------------------------------------------------ steps

    def _prepare(self, datasets: Sequence[Dataset | bytes], result: SeriesResult) -> list[_Item]:
        items: list[_Item] = []
        for instance in datasets:
            uid = None
            try:
                ds = instance if isinstance(instance, Dataset) else read_instance(instance, max_pixels=self.max_pixels)
                uid = str(ds.SOPInstanceUID)
                if is_aegle_output(ds):
                    result.skipped.append(uid)
                    continue
                if result.series_uid is None:
                    result.series_uid, result.study_uid = str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)
                elif str(ds.SeriesInstanceUID) != result.series_uid:
                    result.failures.append(Failure(uid, "other-series", "instance belongs to another series"))
                    continue
                if any(item.uid == uid for item in items):
                    result.failures.append(Failure(uid, "duplicate", "SOP instance received twice in the series"))
                    continue
                items.append(_Item(ds, to_model_space(ds)))
            except DicomInputError as exc:
                result.failures.append(Failure(uid or exc.sop_instance_uid, exc.reason, exc.detail))
            except Exception as exc:  # a dataset whose pixels or attributes cannot be mapped
                result.failures.append(Failure(uid, "unreadable-pixels", _detail(exc)))
        return items

    def _context(self, items: list[_Item], result: SeriesResult) -> None:
        """The context at the series' acquisition time (its earliest instance); None when it cannot be known."""
        times = [t for t in (acquisition_time(item.ds, self.default_tz) for item in items) if t is not None]
        patient_id = str(items[0].ds.get("PatientID") or "")
        if not times or not patient_id:
            missing = "acquisition time" if not times else "patient id"
            result.warnings.append(Failure(None, "no-context", f"no {missing} in the header; enhanced without vitals"))
            return
        result.acquired_at = min(times)
        try:
            context = self._retry(lambda: self.context_at(patient_id, result.acquired_at), lambda exc: True)
        except Exception as exc:
            result.warnings.append(Failure(None, "context-unavailable", _detail(exc), retryable=True))
            return
        result.context = context_summary(context)
        result.context["vector"] = [round(float(v), 6) for v in context.vector]

    def _triage(self, items: list[_Item], result: SeriesResult) -> None:
        """One triage call for the series; if it fails, one call per image, so each failure names its instance."""
        images = []
        for item in items:
            frames = item.image.frames  # grey: the middle frame; RGB: the mean of the first frame's channels
            image = frames[:3].mean(axis=0) if item.image.mapping.is_rgb else frames[len(frames) // 2]
            images.append(np.ascontiguousarray(image, dtype=np.float32))
        try:
            result.triage.update(zip((item.uid for item in items), self.triage(images), strict=True))
            return
        except Exception:
            result.triage.clear()
        for item, image in zip(items, images, strict=True):
            try:
                (result.triage[item.uid],) = self.triage([image])
            except Exception as exc:  # triage is advisory: the series is still enhanced
                result.warnings.append(Failure(item.uid, "triage-failed", _detail(exc)))

    def _enhance(self, items: list[_Item], result: SeriesResult) -> dict[str, np.ndarray]:
        """Enhance every plane, batched by shape; returns stored values per SOP instance UID."""
        vector = None if result.context is None else np.asarray(result.context["vector"], dtype=np.float32)
        planes: dict[tuple[int, int], list[tuple[int, int]]] = {}  # shape -> (item index, plane index)
        for i, item in enumerate(items):
            for p, plane in enumerate(item.image.frames):
                planes.setdefault(plane.shape, []).append((i, p))
        outputs: dict[tuple[int, int], np.ndarray] = {}
        failed: dict[int, str] = {}
        for shape, members in planes.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start:start + self.max_batch]
                batch = np.stack([items[i].image.frames[p] for i, p in chunk]).astype(np.float32)
                try:
                    out = self.enhance(batch, vector)
                    images = np.asarray(out.images)
                    scale = images.shape[-1] // shape[1] if images.ndim == 3 else 0
                    if images.shape != (len(chunk), shape[0] * scale, shape[1] * scale) or scale < 1:
                        raise ValueError(f"enhancer returned shape {images.shape} for input {batch.shape}")
                    if result.scale not in (None, scale) or result.model_name not in (None, out.model_name):
                        raise ValueError("enhancer changed model or scale within one series")
                except Exception as exc:
                    for i, _ in chunk:
                        failed[i] = _detail(exc)
                    continue
                result.scale, result.model_name, result.model_version = scale, out.model_name, out.model_version
                result.strength = out.strength
                outputs.update({member: images[k] for k, member in enumerate(chunk)})
        enhanced: dict[str, np.ndarray] = {}
        for i, item in enumerate(items):
            if i in failed:
                result.failures.append(Failure(item.uid, "enhance-failed", failed[i], retryable=True))
                continue
            stack = np.stack([outputs[(i, p)] for p in range(len(item.image.frames))])
            try:
                enhanced[item.uid] = from_model_space(unplanes(stack, item.image.mapping), item.image,
                                                      scale=result.scale or 1)
            except Exception as exc:
                result.failures.append(Failure(item.uid, "map-back-failed", _detail(exc)))
        return enhanced

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based): backoff_s · 2^attempt, capped."""
        return min(self.backoff_s * 2**attempt, self.backoff_max_s)

    def _retry(self, call: Callable[[], Any], transient: Callable[[BaseException], bool]) -> Any:
        """``call()`` with up to ``store_attempts`` tries; waits :meth:`_backoff` after transient errors."""
        for attempt in range(self.store_attempts):
            try:
                return call()
            except Exception as exc:
                if not transient(exc) or attempt == self.store_attempts - 1:
                    raise
                self.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")

    def _store(self, result: SeriesResult) -> None:
        """Store the derived series: what cannot be encoded fails before the PACS is contacted, the rest goes in
        one request (see :meth:`_store_batch`); only a batch refused as a whole is split into one request each."""
        batch = []
        for ds in result.derived:
            try:
                encode(ds)
                batch.append(ds)
            except DicomEncodingError as exc:
                result.failures.append(Failure(_source_uid(ds), "encoding-failed", _detail(exc)))
        kept, refused = self._store_batch(batch, result) if batch else ([], [])
        for ds in refused:  # the PACS refused the batch without naming the culprit: one bad object must not sink all
            kept += self._store_batch([ds], result)[0]
        result.derived, result.stored = kept, bool(kept)

    def _store_batch(self, batch: list[Dataset], result: SeriesResult) -> tuple[list[Dataset], list[Dataset]]:
        """Store ``batch`` in one request, retried with backoff; returns ``(stored, refused as a whole)``.

        A :class:`~server.pacs.PacsError` that names instances (a STOW-RS partial answer) is honoured: the
        acknowledged ones are stored and never sent again, the ones refused with a permanent reason fail at once
        (``pacs-rejected``), and only the rest (out of resources, or not acknowledged) is retried. A permanent
        error that names none refuses the batch as a whole: returned for one-by-one storing when the batch holds
        several instances, a failure otherwise. Whatever is still unstored after the last attempt fails, retryable:
        ``pacs-not-acknowledged`` when the PACS answered without a word about it (full storage, a policy that drops
        it silently), ``pacs-unavailable`` otherwise.
        """
        stored: list[Dataset] = []
        for attempt in range(self.store_attempts):
            if attempt:
                self.sleep(self._backoff(attempt - 1))
            result.store_attempts += 1
            try:
                self.store.store(batch)
                return stored + batch, []
            except Exception as exc:
                error = exc
            acknowledged: set[str] = getattr(error, "stored", set())
            refused: dict[str, int] = getattr(error, "refused", {})
            if not getattr(error, "transient", False) and not acknowledged and not refused:
                if len(batch) > 1:
                    return stored, batch
                self._fail(batch, "pacs-rejected", _detail(error), result)
                return stored, []
            stored += [ds for ds in batch if str(ds.SOPInstanceUID) in acknowledged]
            for ds in batch:
                if str(ds.SOPInstanceUID) in refused:
                    code = refused[str(ds.SOPInstanceUID)]
                    self._fail([ds], "pacs-rejected", f"the PACS refused it: DICOM failure reason 0x{code:04X}", result)
            batch = [ds for ds in batch if str(ds.SOPInstanceUID) not in acknowledged | refused.keys()]
            if not batch:
                return stored, []
        silent: set[str] = getattr(error, "unacknowledged", set())
        for ds in batch:
            reason = "pacs-not-acknowledged" if str(ds.SOPInstanceUID) in silent else "pacs-unavailable"
            self._fail([ds], reason, _detail(error), result, retryable=True)
        return stored, []

    @staticmethod
    def _fail(datasets: Sequence[Dataset], reason: str, detail: str, result: SeriesResult,
              retryable: bool = False) -> None:
        """Record that the sources of ``datasets`` were not stored."""
        result.failures += [Failure(_source_uid(ds), reason, detail, retryable) for ds in datasets]

    def _publish(self, result: SeriesResult) -> None:
        if self.results is None or result.study_uid is None:
            return
        try:
            self.results.publish(result.study_uid, result.to_event())
        except Exception as exc:
            log.warning("result event not published: %s", _detail(exc))


def _source_uid(ds: Dataset) -> str:
    return str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
