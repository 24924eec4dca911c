"""The server: vitals ingest (``ingest``) into the time-series store (``store``); the inference engine
(``inference``); the study path from a received instance to a derived series in the PACS (``study``); the PACS
client and watch mode (``pacs``); the HTTP API (``api``); and the service that runs every input path
(``service``).

Other packages import only the names below (tests/test_layers.py checks it); each loads on first use.
"""

from __future__ import annotations

from core import lazy_exports

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "TokenStore": "server.api.tokens",
    "ImageInputError": "server.api.images", "decode_image": "server.api.images", "encode_image": "server.api.images",
    "InferenceEngine": "server.inference",
    "OnnxBackend": "server.inference.backends", "TensorRTBackend": "server.inference.backends",
    "INPUTS": "server.inference.engine", "registry_report": "server.inference.engine",
    "IngestWorker": "server.ingest",
    "DicomWebStore": "server.pacs", "PacsError": "server.pacs",
    "encode_instance": "server.pacs.dicomweb", "encode_multipart": "server.pacs.dicomweb",
    "AegleService": "server.service",
    "open_store": "server.store",
    "row_counts": "server.store.sqlite",
    "MqttResultPublisher": "server.study", "SeriesResult": "server.study", "build_pipeline": "server.study",
    "to_model_space": "server.study",
    "PRIVATE_CREATOR": "server.study.derived", "PRIVATE_GROUP": "server.study.derived",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, {"decode_image": "decode", "encode_image": "encode"})
