"""The studies view's data: the series Aegle processed (the study log) and, for each enhanced one, its frames.

Frames come from the service's own copy (``server.study.frames.SeriesFrames``, kept when the series was stored)
or, when that copy is gone (evicted, another replica, ``keep_series = 0``), from the PACS over WADO-RS: the derived
series, and the source series when the PACS holds it too (the watch mode's sources; an edge node's or a STOW
client's sources are only in the service's copy). Frames travel to the page as float32 modality values (HU for
CT) and the page applies the window, so 12- and 16-bit data is windowed, never truncated. The "before" frame is
the source on the derived grid by the same bicubic upsampling the enhancer's output is compared with, so the
slider and the difference view line up pixel for pixel.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from core import CHANNELS
from server.dashboard.ward import channels
from server.study import bicubic
from server.study.frames import SeriesView, describe, is_uid, modality_frames

if TYPE_CHECKING:
    from server.api.deps import ServiceState

log = logging.getLogger("aegle.dashboard")
NOTICE = "Enhanced by Aegle for review next to the original; not for diagnostic use."
CACHED_SERIES = 4


class StudyBrowser:
    """Lists processed series and serves the viewer's series and frames (a few recent series cached in memory)."""

    def __init__(self, st: ServiceState) -> None:
        self.st = st
        self._cache: OrderedDict[str, SeriesView] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, limit: int = 200) -> list[dict[str, Any]]:
        """The most recent series results, one row each (no patient identifiers: the study log holds none)."""
        rows = []
        for entry in self.st.studies.list(limit=limit):
            r = entry["result"]
            triage = list(r.get("triage", {}).values())
            rows.append({
                "at": entry["at"], "study_uid": entry["study_uid"], "series_uid": entry["source_series_uid"],
                "derived_series_uid": r.get("derived_series_uid"), "status": r.get("status"),
                "counts": r.get("counts", {}), "model": r.get("model"), "model_version": r.get("model_version"),
                "strength": r.get("strength"), "acquired_at": r.get("acquired_at"),
                "triage_enhance": sum(1 for t in triage if t.get("enhance")), "triage_total": len(triage),
                "reasons": sorted({f["reason"] for f in r.get("failures", [])}),
                "context_completeness": (r.get("context") or {}).get("completeness"),
            })  # fmt: skip
        return rows

    def result(self, study_uid: str, derived_uid: str) -> dict[str, Any] | None:
        """The study-log summary of the series whose derived series is ``derived_uid``."""
        for entry in self.st.studies.list(study_uid=study_uid, limit=1000):
            if entry["result"].get("derived_series_uid") == derived_uid:
                return entry["result"]
        return None

    def series(self, study_uid: str, derived_uid: str) -> tuple[SeriesView, str] | None:
        """The series' frames and where they came from (``kept`` or ``pacs``); None when neither has it.

        Raises ``server.pacs.PacsError`` when the PACS is asked and fails."""
        if not (is_uid(study_uid) and is_uid(derived_uid)):
            return None
        with self._lock:
            if derived_uid in self._cache:
                self._cache.move_to_end(derived_uid)
                view = self._cache[derived_uid]
                return view, view.meta.get("from", "kept")
        origin = "kept"
        view = self.st.frames.get(derived_uid) if self.st.frames is not None else None
        if view is None:
            origin = "pacs"
            view = self._from_pacs(study_uid, derived_uid)
            if view is None:
                return None
        view.meta["from"] = origin
        with self._lock:
            self._cache[derived_uid] = view
            while len(self._cache) > CACHED_SERIES:
                self._cache.popitem(last=False)
        return view, origin

    def _from_pacs(self, study_uid: str, derived_uid: str) -> SeriesView | None:
        from server.pacs import PacsError

        pacs = self.st.pacs
        if pacs is None:
            return None
        try:
            derived = pacs.retrieve_series(study_uid, derived_uid)
        except PacsError as exc:
            if exc.status == 404:
                return None
            raise
        if not derived:
            return None
        derived.sort(key=lambda ds: int(ds.get("InstanceNumber") or 0))
        after = modality_frames(derived)
        result = self.result(study_uid, derived_uid) or {}
        sources = None
        if result.get("series_uid"):
            try:
                by_uid = {str(ds.SOPInstanceUID): ds for ds in pacs.retrieve_series(study_uid, result["series_uid"])}
            except PacsError as exc:  # 404: the source is not in the PACS (it came from an edge node or by STOW)
                if exc.status != 404:
                    raise
                by_uid = {}
            refs = [str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in derived
                    if "SourceImageSequence" in ds]  # fmt: skip
            if refs and len(refs) == len(derived) and all(ref in by_uid for ref in refs):
                sources = [by_uid[ref] for ref in refs]
        before = None if sources is None else modality_frames(sources)
        return SeriesView(describe(study_uid, sources, derived, after, before), before, after)

    def info(self, study_uid: str, derived_uid: str) -> dict[str, Any] | None:
        """What the viewer shows beside the images: the series' grid and window, triage (decision, reason and
        probabilities per slice), the context used (values, freshness, missing channels), model, strength."""
        result = self.result(study_uid, derived_uid)
        found = self.series(study_uid, derived_uid)
        if result is None and found is None:
            return None
        result = result or {}
        context = result.get("context")
        missing = None
        if context is not None:
            present = {name for name, level in (context.get("levels") or {}).items() if level is not None}
            missing = [c for c in CHANNELS if c not in present]
        return {
            "study_uid": study_uid, "derived_series_uid": derived_uid,
            "series": None if found is None else found[0].meta,
            "status": result.get("status"), "counts": result.get("counts"), "acquired_at": result.get("acquired_at"),
            "model": result.get("model"), "model_version": result.get("model_version"),
            "strength": result.get("strength"), "scale": result.get("scale"), "context": context,
            "missing_channels": missing, "channels": channels(), "triage": result.get("triage", {}),
            "failures": result.get("failures", []),
            "warnings": result.get("warnings", []), "notice": NOTICE,
        }  # fmt: skip

    def frame(self, study_uid: str, derived_uid: str, which: str, index: int) -> np.ndarray | None:
        """One slice as float32 modality values on the derived grid (``before``: the source, bicubic-upsampled);
        None when the series, the slice or the source is not available."""
        found = self.series(study_uid, derived_uid)
        if found is None:
            return None
        view = found[0]
        if not 0 <= index < view.after.shape[0]:
            return None
        if which == "after":
            return view.after[index].astype(np.float32)
        if view.before is None:
            return None
        source = view.before[index]
        scale = view.after.shape[1] // source.shape[0]
        if scale * source.shape[0] != view.after.shape[1] or scale * source.shape[1] != view.after.shape[2]:
            return None  # not an integer multiple: not shown rather than resampled differently from the enhancer
        return bicubic(source, scale).astype(np.float32)
