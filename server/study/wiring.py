"""The study pipeline built from explicit parts: the one place that decides what each step runs on.

Both composition roots use it: the HTTP app (``server.api.create_app``, at start-up) and the running service
(``server.service.AegleService``, which adds the result events); so does the demo.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from server.study.acquisition import VitalsContext
from server.study.pipeline import StudyPipeline
from server.study.storage import CallerOnly

if TYPE_CHECKING:
    from core import SampleReader, Settings
    from server.inference import InferenceEngine
    from server.study.results import ResultPublisher, SeriesResult
    from server.study.storage import PacsStore


def build_pipeline(
    engine: InferenceEngine,
    vitals: Callable[[], SampleReader],
    pacs: PacsStore | None,
    results: ResultPublisher | None,
    settings: Settings,
    record: Callable[[SeriesResult], None] | None = None,
) -> StudyPipeline:
    """A study pipeline: triage of ``engine`` and the enhancer its settings choose for the study path
    (``study_model``: the quality operating point by default); the context at acquisition time from the vitals
    store ``vitals()`` returns, with ``settings.context``; derived series to ``pacs`` (None: returned to the caller
    only); result events to ``results`` (None: none); each result to ``record`` (e.g. ``StudyRecord``); batch and
    image limits from ``settings.inference.max_batch`` and ``settings.api.max_pixels``."""
    enhance = partial(engine.enhance, model=engine.settings.enhancer_for("study").name)
    return StudyPipeline(
        enhance, engine.triage_many, VitalsContext(vitals, settings.context), pacs or CallerOnly(), results,
        record=record, max_batch=settings.inference.max_batch, max_pixels=settings.api.max_pixels,
    )  # fmt: skip
