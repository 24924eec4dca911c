"""The viewer's copy of each enhanced series (kept at step 9, beside the study log): source and derived frames in
modality values, so the dashboard can show before and after even when the PACS never held the source.

One directory per derived series under ``root``: ``meta.json`` (UIDs, modality, photometric interpretation, the
grids, the series' own window; no patient identifiers) and ``frames.npz`` (``before``: the source frames on their
own grid; ``after``: the derived frames; float32 modality values, Hounsfield units for CT). Slices are in
instance-number order, ``before[i]`` the source of ``after[i]``. At most ``keep`` series are kept (the oldest go
first); files are 0600. A failed write is logged and never raised: the viewer then reads the PACS instead
(:func:`series_view`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from core import durable_file, replace_durably
from gan import SOFT_TISSUE_WINDOW

if TYPE_CHECKING:
    from server.study.results import SeriesResult

log = logging.getLogger("aegle.frames")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: str) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a file name."""
    return len(value) <= 64 and bool(_UID.match(value))


@dataclass
class SeriesView:
    """One enhanced series as the viewer shows it: ``meta`` (JSON-ready) and the frames (``before`` may be None
    when the source is neither kept nor in the PACS)."""

    meta: dict[str, Any]
    before: np.ndarray | None
    after: np.ndarray


def modality_frames(datasets: Sequence[Dataset]) -> np.ndarray:
    """Every frame of grey-level ``datasets`` in modality values (RescaleSlope/Intercept applied), float32
    ``(frames, rows, columns)``; colour images raise ``ValueError``."""
    frames = []
    for ds in datasets:
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ValueError("colour images are not shown by the viewer")
        values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
        frames.extend(values if values.ndim == 3 else [values])
    return np.stack(frames)


def series_window(ds: Dataset, after: np.ndarray) -> tuple[float, float]:
    """The window (center, width) the series opens with: its own first WindowCenter/WindowWidth, else the soft
    tissue window for CT, else the 0.5–99.5 % range of the frames."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        first = [float(v[0] if isinstance(v, Sequence) and not isinstance(v, str) else v) for v in (center, width)]
        if first[1] > 0:
            return first[0], first[1]
    if ds.get("Modality") == "CT":
        return float(SOFT_TISSUE_WINDOW[0]), float(SOFT_TISSUE_WINDOW[1])
    low, high = np.percentile(after, [0.5, 99.5])
    return float(low + high) / 2, float(max(high - low, 1e-6))


def _order(sources: Sequence[Dataset]) -> list[int]:
    return sorted(range(len(sources)), key=lambda i: (int(sources[i].get("InstanceNumber") or 0), i))


def describe(study_uid: str, sources: Sequence[Dataset] | None, derived: Sequence[Dataset], after: np.ndarray,
             before: np.ndarray | None) -> dict[str, Any]:  # fmt: skip
    """The ``meta.json`` of a series: UIDs, modality, grids and window (no patient identifiers)."""
    first = derived[0]
    return {
        "study_uid": study_uid,
        "source_series_uid": None if not sources else str(sources[0].SeriesInstanceUID),
        "source_sop_instance_uids": None if not sources else [str(ds.SOPInstanceUID) for ds in sources],
        "derived_series_uid": str(first.SeriesInstanceUID),
        "modality": str(first.get("Modality", "")),
        "photometric": str(first.get("PhotometricInterpretation", "MONOCHROME2")),
        "slices": int(after.shape[0]),
        "rows": int(after.shape[1]), "columns": int(after.shape[2]),
        "source_rows": None if before is None else int(before.shape[1]),
        "source_columns": None if before is None else int(before.shape[2]),
        "window": list(series_window(sources[0] if sources else first, after)),
        "range": [float(after.min()), float(after.max())],
        "units": "HU" if first.get("Modality") == "CT" else "",
    }  # fmt: skip


class SeriesFrames:
    """The kept frames of the last ``keep`` enhanced series, under ``root`` (thread-safe)."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = Path(root)
        self.keep = keep
        self._lock = threading.Lock()

    def keep_result(self, result: SeriesResult) -> None:
        """Keep a stored series' source and derived frames; a failure is logged, never raised."""
        if self.keep < 1 or not result.stored or not result.derived or result.study_uid is None:
            return
        try:
            order = _order(result.sources)
            sources = [result.sources[i] for i in order]
            derived = [result.derived[i] for i in order]
            before, after = modality_frames(sources), modality_frames(derived)
            self.put(describe(result.study_uid, sources, derived, after, before), before, after)
        except Exception as exc:  # colour, odd pixel data, a full disk: the viewer falls back to the PACS
            log.warning("series frames not kept: %s", f"{type(exc).__name__}: {exc}"[:300])

    def put(self, meta: dict[str, Any], before: np.ndarray | None, after: np.ndarray) -> None:
        """Write one series (replacing an older copy), then drop the oldest beyond ``keep``."""
        uid = meta["derived_series_uid"]
        if not is_uid(uid):
            raise ValueError("derived series UID is not a DICOM UID")
        directory = self.root / uid
        with self._lock:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            arrays = {"after": after.astype(np.float32)}
            if before is not None:
                arrays["before"] = before.astype(np.float32)
            with durable_file(directory / "frames.npz", mode=0o600, suffix=".npz") as tmp:
                np.savez_compressed(tmp, **arrays)
            replace_durably(directory / "meta.json", json.dumps({**meta, "kept_at": time.time()}).encode(), mode=0o600)
            kept = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            for old in kept[: max(len(kept) - self.keep, 0)]:
                shutil.rmtree(old, ignore_errors=True)

    def get(self, derived_series_uid: str) -> SeriesView | None:
        """The kept copy of a series, or None."""
        directory = self.root / derived_series_uid
        if not is_uid(derived_series_uid) or not (directory / "meta.json").is_file():
            return None
        try:
            with self._lock:
                meta = json.loads((directory / "meta.json").read_text())
                with np.load(directory / "frames.npz") as data:
                    before = data["before"] if "before" in data.files else None
                    return SeriesView(meta, before, data["after"])
        except (OSError, ValueError, KeyError):
            return None
