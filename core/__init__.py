"""The bottom layer: contracts and configuration every other package shares, importing nothing of Aegle's.

``vitals`` (the vitals message and its validation), ``topics`` (the MQTT topic scheme), ``accounts`` (who may
publish and subscribe to what: the broker policy), ``dicom_chunks`` (DICOM over MQTT: manifest and chunks),
``context`` (the sensor context's layout and computation), ``settings`` (the one ``Settings``), ``mqtt`` (the one
MQTT seam: clients, bounded-backlog publisher, persistent-session subscriber, probe), ``durable`` (crash-safe
files), ``logsafety`` (logging without third-party values), ``exports`` (these lazy package APIs).

Other packages import only the names below (tests/test_layers.py checks it); each loads on first use.
"""

from __future__ import annotations

from core.exports import lazy_exports

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "Account": "core.accounts", "accounts": "core.accounts",
    "CHANNELS": "core.context", "CONTEXT_SIZE": "core.context", "ContextCache": "core.context",
    "SampleReader": "core.context", "SensorContext": "core.context", "context_at": "core.context",
    "context_from_series": "core.context",
    "BAD_CHUNK": "core.dicom_chunks", "BAD_MANIFEST": "core.dicom_chunks", "CHECKSUM_MISMATCH": "core.dicom_chunks",
    "DEFAULT_CHUNK_BYTES": "core.dicom_chunks", "INCOMPLETE_TIMEOUT": "core.dicom_chunks",
    "INVALID_TOPIC": "core.dicom_chunks", "MAX_CHUNK_BYTES": "core.dicom_chunks", "OVERSIZE": "core.dicom_chunks",
    "TransferManifest": "core.dicom_chunks", "TransferRejected": "core.dicom_chunks",
    "chunk_properties": "core.dicom_chunks", "new_manifest": "core.dicom_chunks",
    "parse_manifest": "core.dicom_chunks", "verify_chunk": "core.dicom_chunks",
    "durable_file": "core.durable", "fsync_dir": "core.durable", "replace_durably": "core.durable",
    "write_durably": "core.durable",
    "lazy_exports": "core.exports",
    "configure_logging": "core.logsafety",
    "MqttConnectError": "core.mqtt", "MqttPublisher": "core.mqtt", "PersistentSubscriber": "core.mqtt",
    "Refusal": "core.mqtt", "broker_confirmed": "core.mqtt", "connect": "core.mqtt", "connect_nowait": "core.mqtt",
    "disconnect": "core.mqtt", "new_client": "core.mqtt", "probe": "core.mqtt", "subscribe": "core.mqtt",
    "ApiSettings": "core.settings", "ContextSettings": "core.settings", "DashboardSettings": "core.settings",
    "DEFAULT_TRIAGE": "core.settings",
    "ENHANCE_PATHS": "core.settings", "EnhancePath": "core.settings",
    "EdgeSettings": "core.settings", "InferenceSettings": "core.settings", "IngestSettings": "core.settings",
    "MqttSettings": "core.settings", "PacsSettings": "core.settings", "ServedModel": "core.settings",
    "Settings": "core.settings", "StoreSettings": "core.settings", "TransferSettings": "core.settings",
    "topics": "core.topics",
    "BY_CODE": "core.vitals", "LOINC": "core.vitals", "MAX_PAYLOAD_BYTES": "core.vitals",
    "Observation": "core.vitals", "REJECT_REASONS": "core.vitals", "SCHEMA": "core.vitals", "Sample": "core.vitals",
    "VitalsMessage": "core.vitals", "VitalsRejected": "core.vitals", "dumps_compact": "core.vitals",
    "AEGLE_CODES": "core.vitals",
    "from_ms": "core.vitals", "parse_samples": "core.vitals", "to_ms": "core.vitals",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
