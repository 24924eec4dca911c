"""Step 8, the PACS: the derived series stored where the settings say (a DICOMweb PACS, or nowhere:
:class:`CallerOnly`), retried with bounded backoff while the PACS is unavailable.

What cannot be encoded fails before the PACS is contacted; the rest goes in one request; a batch the PACS refuses
as a whole without naming the culprit is split into one request per instance, so one bad object never sinks the
series. A partial STOW-RS answer is honoured instance by instance (see :func:`store_series`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydicom.dataset import Dataset

from server.study.derived import DicomEncodingError, encode
from server.study.results import Failure, SeriesResult, detail
from server.study.retry import Backoff


class PacsStore(Protocol):
    """Where derived series go; raises ``server.pacs.PacsError`` (with ``.transient``) on failure."""

    def store(self, datasets: Sequence[Dataset]) -> None: ...


class CallerOnly:
    """The PacsStore when no PACS is configured: derived series are returned to the caller, stored nowhere."""

    def store(self, datasets: Sequence[Dataset]) -> None:
        return None


def store_series(store: PacsStore, result: SeriesResult, backoff: Backoff) -> None:
    """Store ``result.derived``; afterwards it holds what was stored, ``result.stored`` says whether anything was,
    and every source whose derived instance was not stored has a failure with its reason.

    A :class:`~server.pacs.PacsError` that names instances (a STOW-RS partial answer) is honoured: the
    acknowledged ones are stored and never sent again, the ones refused with a permanent reason fail at once
    (``pacs-rejected``), and only the rest (out of resources, or not acknowledged) is retried. A permanent error
    that names none refuses the batch as a whole: then each instance is sent alone. Whatever is still unstored after
    the last attempt fails, retryable: ``pacs-not-acknowledged`` when the PACS answered without a word about it
    (full storage, a policy that drops it silently), ``pacs-unavailable`` otherwise.
    """
    batch = []
    for ds in result.derived:
        try:
            encode(ds)
            batch.append(ds)
        except DicomEncodingError as exc:
            result.failures.append(Failure(_source_uid(ds), "encoding-failed", detail(exc)))
    kept, refused = _store_batch(store, batch, result, backoff) if batch else ([], [])
    for ds in refused:  # the PACS refused the batch without naming the culprit: one bad object must not sink all
        kept += _store_batch(store, [ds], result, backoff)[0]
    result.derived, result.stored = kept, bool(kept)


def _store_batch(
    store: PacsStore, batch: list[Dataset], result: SeriesResult, backoff: Backoff
) -> tuple[list[Dataset], list[Dataset]]:
    """Store ``batch`` in one request, retried with backoff; returns ``(stored, refused as a whole)`` — the
    latter only when the batch holds several instances (one alone fails ``pacs-rejected``)."""
    stored: list[Dataset] = []
    for attempt in range(backoff.attempts):
        if attempt:
            backoff.sleep(backoff.delay(attempt - 1))
        result.store_attempts += 1
        try:
            store.store(batch)
            return stored + batch, []
        except Exception as exc:
            error = exc
        acknowledged: set[str] = getattr(error, "stored", set())
        refused: dict[str, int] = getattr(error, "refused", {})
        if not getattr(error, "transient", False) and not acknowledged and not refused:
            if len(batch) > 1:
                return stored, batch
            _fail(batch, "pacs-rejected", detail(error), result)
            return stored, []
        stored += [ds for ds in batch if str(ds.SOPInstanceUID) in acknowledged]
        for ds in batch:
            if str(ds.SOPInstanceUID) in refused:
                code = refused[str(ds.SOPInstanceUID)]
                _fail([ds], "pacs-rejected", f"the PACS refused it: DICOM failure reason 0x{code:04X}", result)
        batch = [ds for ds in batch if str(ds.SOPInstanceUID) not in acknowledged | refused.keys()]
        if not batch:
            return stored, []
    silent: set[str] = getattr(error, "unacknowledged", set())
    for ds in batch:
        reason = "pacs-not-acknowledged" if str(ds.SOPInstanceUID) in silent else "pacs-unavailable"
        _fail([ds], reason, detail(error), result, retryable=True)
    return stored, []


def _fail(datasets: Sequence[Dataset], reason: str, text: str, result: SeriesResult, retryable: bool = False) -> None:
    """Record that the sources of ``datasets`` were not stored."""
    result.failures += [Failure(_source_uid(ds), reason, text, retryable) for ds in datasets]


def _source_uid(ds: Dataset) -> str:
    return str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
