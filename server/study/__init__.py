"""The study path: a DICOM instance's way from the modality to the PACS, one module per step, in travel order.

1. transfer — ``assembly``: DICOM over MQTT from edge nodes → one verified instance (:class:`TransferAssembler`).
   Instances also arrive by DICOMweb STOW-RS and the enhance routes (``server.api.routes.dicom``) and from the
   Orthanc watch mode (``server.pacs``), one series at a time: those start at step 3.
2. collection into series — ``collection``: instances filed durably by series; a series runs once it is quiet
   (:class:`SeriesCollector`).
3. reading — ``reading``: each instance parsed and checked, refused with a reason (:func:`read_instance`);
   ``pixels``: stored values ↔ model space [0, 1] (:func:`to_model_space`, :func:`from_model_space`).
4. context at acquisition time — ``acquisition``: the series' acquisition time and the patient's sensor context
   then, from the vitals store (:func:`acquisition_time`, :class:`VitalsContext`).
5. triage — ``triage``: the quality classifier's advice per image (advisory).
6. enhance — ``enhance``: every plane through the study path's enhancer (``build_pipeline`` binds it: the
   ``study_model`` setting), conditioned on the context's vector.
7. derived series — ``derived``: the new DICOM series with provenance (:func:`derived_series`).
8. PACS — ``storage``: the derived series stored, retried while the PACS is unavailable (:class:`PacsStore`).
9. result — ``results``: :class:`SeriesResult` → the result event (:class:`ResultPublisher`) and the study log
   and metrics (:class:`StudyRecord`), and the frames the dashboard's viewer shows (:class:`SeriesFrames`).

``pipeline`` runs steps 3–9 for one series (:class:`StudyPipeline`); ``wiring`` builds it from explicit parts —
engine, vitals store, PACS, result publisher, settings (:func:`build_pipeline`); ``retry`` is the bounded backoff
of steps 4 and 8. See docs/dicom.md (steps 3–9) and docs/service.md (how the service runs them).

The names below are imported on first use, so ``python -m server.study.assembly`` and a route that only reads
DICOM load nothing else.
"""

from __future__ import annotations

from core import lazy_exports

#: The public API, in travel order: name → the module defining it.
_EXPORTS: dict[str, str] = {
    "TransferAssembler": "server.study.assembly",
    "TransferInfo": "server.study.assembly",
    "DirectorySink": "server.study.assembly",
    "SeriesCollector": "server.study.collection",
    "DicomInputError": "server.study.reading",
    "read_instance": "server.study.reading",
    "supported_syntaxes": "server.study.reading",
    "ModelImage": "server.study.pixels",
    "PixelMapping": "server.study.pixels",
    "bicubic": "server.study.pixels",
    "to_model_space": "server.study.pixels",
    "from_model_space": "server.study.pixels",
    "ContextFn": "server.study.acquisition",
    "VitalsContext": "server.study.acquisition",
    "acquisition_time": "server.study.acquisition",
    "TriageFn": "server.study.triage",
    "EnhanceFn": "server.study.enhance",
    "DicomEncodingError": "server.study.derived",
    "derived_series": "server.study.derived",
    "encode": "server.study.derived",
    "is_aegle_output": "server.study.derived",
    "PacsStore": "server.study.storage",
    "CallerOnly": "server.study.storage",
    "Failure": "server.study.results",
    "SeriesResult": "server.study.results",
    "ResultPublisher": "server.study.results",
    "MqttResultPublisher": "server.study.results",
    "StudyRecord": "server.study.results",
    "SeriesFrames": "server.study.frames",
    "SeriesView": "server.study.frames",
    "StudyPipeline": "server.study.pipeline",
    "build_pipeline": "server.study.wiring",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
