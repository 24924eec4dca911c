"""Step 6, enhance: every plane of the series through the enhancer, conditioned on the context's vector.

Planes are batched by shape (at most ``max_batch`` per call). The enhancer receives the exact float32
:attr:`~core.context.SensorContext.vector` of the context at acquisition time (None: no vitals, the model's
"all missing" input). A failed batch fails its instances (retryable); the outputs are mapped back to stored values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from server.study.pixels import ModelImage, from_model_space, unplanes
from server.study.results import Failure, SeriesResult, detail

if TYPE_CHECKING:
    from core import SensorContext
    from server.inference import EnhanceOutput

EnhanceFn = Callable[[np.ndarray, "np.ndarray | None"], "EnhanceOutput"]


def enhance_series(
    enhance: EnhanceFn, images: Mapping[str, ModelImage], context: SensorContext | None, max_batch: int,
    result: SeriesResult,
) -> dict[str, np.ndarray]:
    """Enhance every plane; returns the stored values per SOP instance UID and records model, scale and strength
    (one model and scale per series) in ``result``."""
    vector = None if context is None else context.vector
    planes: dict[tuple[int, int], list[tuple[str, int]]] = {}  # shape -> (SOP instance UID, plane index)
    for uid, image in images.items():
        for p, plane in enumerate(image.frames):
            planes.setdefault(plane.shape, []).append((uid, p))
    outputs: dict[tuple[str, int], np.ndarray] = {}
    failed: dict[str, str] = {}
    for shape, members in planes.items():
        for start in range(0, len(members), max_batch):
            chunk = members[start:start + max_batch]
            batch = np.stack([images[uid].frames[p] for uid, p in chunk]).astype(np.float32)
            try:
                out = enhance(batch, vector)
                enhanced = np.asarray(out.images)
                scale = enhanced.shape[-1] // shape[1] if enhanced.ndim == 3 else 0
                if enhanced.shape != (len(chunk), shape[0] * scale, shape[1] * scale) or scale < 1:
                    raise ValueError(f"enhancer returned shape {enhanced.shape} for input {batch.shape}")
                if result.scale not in (None, scale) or result.model_name not in (None, out.model_name):
                    raise ValueError("enhancer changed model or scale within one series")
            except Exception as exc:
                for uid, _ in chunk:
                    failed[uid] = detail(exc)
                continue
            result.scale, result.model_name, result.model_version = scale, out.model_name, out.model_version
            result.strength = out.strength
            outputs.update({member: enhanced[k] for k, member in enumerate(chunk)})
    stored: dict[str, np.ndarray] = {}
    for uid, image in images.items():
        if uid in failed:
            result.failures.append(Failure(uid, "enhance-failed", failed[uid], retryable=True))
            continue
        stack = np.stack([outputs[(uid, p)] for p in range(len(image.frames))])
        try:
            stored[uid] = from_model_space(unplanes(stack, image.mapping), image, scale=result.scale or 1)
        except Exception as exc:
            result.failures.append(Failure(uid, "map-back-failed", detail(exc)))
    return stored
