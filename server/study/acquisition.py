"""Step 4, the context at acquisition time: when a series was acquired, and the patient's sensor context then.

The series' acquisition time is the earliest of its instances' (:func:`acquisition_time`); its context is the
patient's vitals in the causal window ending there (:class:`VitalsContext`: ``core.context.context_at`` on the
vitals store with ``settings.context``), so vitals measured after the acquisition never count. The context travels
on as a :class:`~core.context.SensorContext` in the series' result: the enhancer is conditioned on its vector, the
derived series and the result event report it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from core import ContextSettings, SampleReader, SensorContext, context_at
from server.study.results import Failure, SeriesResult, detail
from server.study.retry import Backoff

ContextFn = Callable[[str, datetime], SensorContext]


@dataclass(frozen=True)
class VitalsContext:
    """A patient's sensor context at a time, from the vitals store with the configured window and freshness.

    ``vitals`` returns the store (the service opens it on first use; an error opening it is a lookup error).
    """

    vitals: Callable[[], SampleReader]
    settings: ContextSettings

    def __call__(self, patient_id: str, at: datetime) -> SensorContext:
        return context_at(self.vitals(), patient_id, at, self.settings.window_s, self.settings.freshness_tau_s)


def series_context(
    datasets: Sequence[Dataset], context_at: ContextFn, default_tz: tzinfo, backoff: Backoff, result: SeriesResult
) -> None:
    """Set ``result.acquired_at`` (the earliest acquisition time) and ``result.context`` (the patient's context
    then, looked up with ``backoff``); without a time, a patient id or an answer, a warning and no context."""
    times = [t for t in (acquisition_time(ds, default_tz) for ds in datasets) if t is not None]
    patient_id = str(datasets[0].get("PatientID") or "")
    if not times or not patient_id:
        missing = "acquisition time" if not times else "patient id"
        result.warnings.append(Failure(None, "no-context", f"no {missing} in the header; enhanced without vitals"))
        return
    acquired_at = result.acquired_at = min(times)
    try:
        result.context = backoff.call(lambda: context_at(patient_id, acquired_at))
    except Exception as exc:
        result.warnings.append(Failure(None, "context-unavailable", detail(exc), retryable=True))


def _offset(value: Any) -> tzinfo | None:
    text = str(value or "").strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


def _frame_datetime(ds: Dataset) -> Any:
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups, [])[:1]:
            for item in group.get("FrameContentSequence", []):
                if item.get("FrameAcquisitionDateTime"):
                    return item.FrameAcquisitionDateTime
    return None


def acquisition_time(ds: Dataset, default_tz: tzinfo) -> datetime | None:
    """When the instance was acquired, as an aware UTC datetime, or None when the header does not say.

    AcquisitionDateTime, else the first frame's FrameAcquisitionDateTime, else AcquisitionDate + AcquisitionTime,
    else ContentDate + ContentTime, else SeriesDate + SeriesTime. A value without its own UTC offset is read in
    TimezoneOffsetFromUTC when present, else in ``default_tz``.
    """
    local = _offset(ds.get("TimezoneOffsetFromUTC")) or default_tz
    for value in (ds.get("AcquisitionDateTime"), _frame_datetime(ds)):
        if value:
            try:
                moment = DT(str(value))
            except ValueError:
                continue
            return (moment if moment.tzinfo else moment.replace(tzinfo=local)).astimezone(UTC)
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                             ("SeriesDate", "SeriesTime")):
        date_value, time_value = ds.get(date_kw), ds.get(time_kw)
        if not date_value or not time_value:
            continue
        try:
            moment = datetime.combine(DA(str(date_value)), TM(str(time_value)))
        except ValueError:
            continue
        return moment.replace(tzinfo=local).astimezone(UTC)
    return None
