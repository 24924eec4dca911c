"""The study pipeline: one series through steps 3–9 of the study path (see :mod:`server.study`).

read (3) → context at acquisition time (4) → triage (5) → enhance (6) → derived series (7) → PACS (8) → result
event and record (9). :class:`StudyPipeline` processes one series at a time (:meth:`StudyPipeline.process_series`)
or groups a batch of instances by series (:meth:`StudyPipeline.process`). A bad instance never stops the others:
every failure is kept in the :class:`~server.study.results.SeriesResult` with its reason, and the rest of the series
is still enhanced and stored. Transient failures (the PACS or the vitals store briefly unavailable) are retried
with bounded exponential backoff; permanent ones are recorded at once. Logs and result events carry counts, UIDs
and reasons — never patient names, ids or birth dates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo

import numpy as np
from pydicom.dataset import Dataset

from server.study.acquisition import ContextFn, series_context
from server.study.derived import derived_series, is_aegle_output
from server.study.enhance import EnhanceFn, enhance_series
from server.study.pixels import ModelImage, to_model_space
from server.study.reading import DicomInputError, read_instance
from server.study.results import Failure, ResultPublisher, SeriesResult, detail
from server.study.retry import Backoff
from server.study.storage import PacsStore, store_series
from server.study.triage import TriageFn, triage_series

log = logging.getLogger("aegle.pipeline")
DESCRIPTION = "Context-conditioned super-resolution and denoising."


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
    acquisition times that carry no UTC offset; ``max_pixels`` applies to instances given as bytes. ``results``
    publishes each series' result event, ``record`` (e.g. :class:`~server.study.results.StudyRecord`) keeps it.
    """

    def __init__(
        self,
        enhance: EnhanceFn,
        triage: TriageFn,
        context_at: ContextFn,
        store: PacsStore,
        results: ResultPublisher | None,
        *,
        record: Callable[[SeriesResult], None] | None = None,
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
        self.record = record
        self.default_tz = default_tz
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.backoff = Backoff(store_attempts, backoff_s, backoff_max_s, sleep)

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
        """Enhance one series, store the derived series, publish and record the result; never raises for bad
        instances."""
        result = SeriesResult(received=len(datasets))
        items = self._read(datasets, result)
        if items:
            images = {item.uid: item.image for item in items}
            series_context([item.ds for item in items], self.context_at, self.default_tz, self.backoff, result)
            triage_series(self.triage, images, result)
            enhanced = enhance_series(self.enhance, images, result.context, self.max_batch, result)
            if enhanced:
                self._derive([item.ds for item in items if item.uid in enhanced], enhanced, result)
                if result.derived:
                    store_series(self.store, result, self.backoff)
        self._publish(result)
        log.info(
            "series processed: status=%s received=%d derived=%d failed=%d skipped=%d",
            result.status, result.received, len(result.derived), len(result.failures), len(result.skipped),
        )
        if self.record is not None:
            self.record(result)
        return result

    def _read(self, datasets: Sequence[Dataset | bytes], result: SeriesResult) -> list[_Item]:
        """Step 3: each instance read and mapped to model space; Aegle's own output skipped, instances of another
        series, duplicates and unreadable ones failed with their reason."""
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
                result.failures.append(Failure(uid, "unreadable-pixels", detail(exc)))
        return items

    @staticmethod
    def _derive(sources: list[Dataset], enhanced: dict[str, np.ndarray], result: SeriesResult) -> None:
        """Step 7: the derived series of the enhanced sources, with the model and context used."""
        try:
            result.derived = derived_series(
                sources, [enhanced[str(ds.SOPInstanceUID)] for ds in sources], scale=result.scale or 1,
                model_name=result.model_name or "", model_version=result.model_version or "",
                context=result.context, description=DESCRIPTION, strength=result.strength,
            )
            result.sources = list(sources)
        except Exception as exc:
            result.failures.append(Failure(None, "derive-failed", detail(exc)))

    def _publish(self, result: SeriesResult) -> None:
        """Step 9: the result event, when the series has a study (a failed publish is logged, never raised)."""
        if self.results is None or result.study_uid is None:
            return
        try:
            self.results.publish(result.study_uid, result.to_event())
        except Exception as exc:
            log.warning("result event not published: %s", detail(exc))
