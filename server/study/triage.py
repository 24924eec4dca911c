"""Step 5, triage: the quality classifier's advice on each image of the series (advisory: the series is enhanced
whatever it says, and a triage failure is only a warning)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from server.study.pixels import ModelImage
from server.study.results import Failure, SeriesResult, detail

if TYPE_CHECKING:
    from gan import TriageResult

TriageFn = Callable[[Sequence[np.ndarray]], "Sequence[TriageResult]"]


def triage_series(triage: TriageFn, images: Mapping[str, ModelImage], result: SeriesResult) -> None:
    """Triage one plane per SOP instance into ``result.triage``: one call for the series; if it fails, one call
    per image, so each failure names its instance."""
    planes = []
    for image in images.values():
        frames = image.frames  # grey: the middle frame; RGB: the mean of the first frame's channels
        plane = frames[:3].mean(axis=0) if image.mapping.is_rgb else frames[len(frames) // 2]
        planes.append(np.ascontiguousarray(plane, dtype=np.float32))
    try:
        result.triage.update(zip(images, triage(planes), strict=True))
        return
    except Exception:
        result.triage.clear()
    for uid, plane in zip(images, planes, strict=True):
        try:
            (result.triage[uid],) = triage([plane])
        except Exception as exc:  # triage is advisory: the series is still enhanced
            result.warnings.append(Failure(uid, "triage-failed", detail(exc)))
