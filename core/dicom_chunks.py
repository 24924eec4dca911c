"""DICOM over MQTT: the contract between edge nodes (``edge/``) and the server (``server/study/assembly.py``).

An edge node forwards one DICOM instance (a Part 10 file, bytes unchanged) as one *transfer*:

1. a **manifest** on ``aegle/v1/{site}/{edge_id}/dicom/{transfer_id}/manifest``: the JSON form of
   :class:`TransferManifest` (size, chunk size and count, SHA-256 of the whole instance, …);
2. ``chunk_count`` **chunks** on ``aegle/v1/{site}/{edge_id}/dicom/{transfer_id}/{index}``: the raw bytes
   ``data[index * chunk_size:(index + 1) * chunk_size]``, each with the MQTT v5 user property
   ``sha256`` = the hex SHA-256 of that chunk.

Everything is published at QoS 1. Chunks may arrive before the manifest, out of order or more than once (QoS 1
redelivery, an edge node resuming after a restart); the receiver assembles by index and verifies both checksums.
Topics carry no patient data: the transfer id is a random UUID, and the SOP Instance UID travels in the manifest.

Chunk size: Mosquitto refuses any packet larger than ``max_packet_size`` (``core/mosquitto-policy.conf``:
262 144 bytes; ``message_size_limit`` is its deprecated predecessor and limits the payload alone). A PUBLISH packet
is the payload plus its fixed header (≤ 5 bytes), the topic (≤ 220 bytes here), the packet id and the properties
(the ``sha256`` user property is 77 bytes), so a 256 KiB payload would be refused. The default and largest chunk
is therefore 256 KiB − 4 KiB = 252 KiB, which leaves the header 4 KiB. Larger chunks would need a larger packet
limit for every client of the broker; smaller ones cost one PUBACK (and one fsync on the receiver) per chunk.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from core import topics

SCHEMA = "aegle.dicom-transfer/1"
CONTENT_TYPE = "application/dicom"
#: Mosquitto's ``max_packet_size`` in ``core/mosquitto-policy.conf`` (a test checks they agree).
BROKER_MAX_PACKET_BYTES = 262_144
#: Room left in a packet for everything but the payload (fixed header, topic, packet id, properties).
PACKET_HEADER_ALLOWANCE = 4096
MAX_CHUNK_BYTES = BROKER_MAX_PACKET_BYTES - PACKET_HEADER_ALLOWANCE
DEFAULT_CHUNK_BYTES = MAX_CHUNK_BYTES
#: The manifest's own size cap (it is a few hundred bytes).
MAX_MANIFEST_BYTES = 4096
CHECKSUM_PROPERTY = "sha256"

# Dead-letter reasons of DICOM transfers (the ``{reason}`` level of ``core.topics.deadletter``).
CHECKSUM_MISMATCH = "checksum-mismatch"
BAD_MANIFEST = "bad-manifest"
BAD_CHUNK = "bad-chunk"
CHUNK_OUT_OF_RANGE = "chunk-out-of-range"
OVERSIZE = "oversize"
INCOMPLETE_TIMEOUT = "incomplete-timeout"
INVALID_TOPIC = "invalid-topic"


class TransferRejected(ValueError):
    """A manifest, a chunk or a whole transfer the receiver refuses; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _segment(value: str) -> str:
    if not topics.is_segment(value):
        raise ValueError(f"{value!r} is not a valid topic segment")
    return value


Segment = Annotated[str, AfterValidator(_segment)]
DicomUid = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]


class TransferManifest(BaseModel):
    """What the receiver needs to assemble and verify one forwarded DICOM instance (no patient data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["aegle.dicom-transfer/1"] = Field(default=SCHEMA, alias="schema")
    transfer_id: UUID
    site: Segment
    edge_id: Segment
    sop_instance_uid: DicomUid | None = None
    sop_class_uid: DicomUid | None = None
    content_type: Literal["application/dicom"] = CONTENT_TYPE
    size: int = Field(gt=0)
    chunk_size: int = Field(gt=0, le=MAX_CHUNK_BYTES)
    chunk_count: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _chunks_cover_size(self) -> TransferManifest:
        if self.chunk_count != math.ceil(self.size / self.chunk_size):
            raise ValueError(f"chunk_count {self.chunk_count} != ceil(size / chunk_size)")
        return self

    def chunk_length(self, index: int) -> int:
        """Length in bytes of chunk ``index``; :class:`TransferRejected` if the index is out of range."""
        if not 0 <= index < self.chunk_count:
            raise TransferRejected(CHUNK_OUT_OF_RANGE, f"chunk {index} of a {self.chunk_count}-chunk transfer")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_json(self) -> bytes:
        """The manifest payload as published."""
        return self.model_dump_json(by_alias=True).encode()


def new_manifest(
    data: bytes,
    site: str,
    edge_id: str,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
) -> TransferManifest:
    """The manifest of a new transfer of ``data`` with a fresh random transfer id."""
    return TransferManifest(
        transfer_id=uuid4(),
        site=site,
        edge_id=edge_id,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        size=len(data),
        chunk_size=chunk_size,
        chunk_count=math.ceil(len(data) / chunk_size),
        sha256=hashlib.sha256(data).hexdigest(),
        created_at=datetime.now(UTC),
    )


def parse_manifest(payload: bytes) -> TransferManifest:
    """Validate a manifest payload; :class:`TransferRejected` (``bad-manifest``) with the first problem."""
    if len(payload) > MAX_MANIFEST_BYTES:
        raise TransferRejected(BAD_MANIFEST, f"{len(payload)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        return TransferManifest.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise TransferRejected(BAD_MANIFEST, f"{where}: {first['msg']}") from None


def chunk_properties(chunk: bytes) -> Properties:
    """MQTT v5 PUBLISH properties of a chunk: its SHA-256 as the user property ``sha256``."""
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = (CHECKSUM_PROPERTY, hashlib.sha256(chunk).hexdigest())
    return props


def verify_chunk(chunk: bytes, props: Properties | None) -> None:
    """Check a received chunk against its ``sha256`` user property; :class:`TransferRejected` if it differs."""
    declared = dict(getattr(props, "UserProperty", None) or []).get(CHECKSUM_PROPERTY)
    if declared is None:
        raise TransferRejected(BAD_CHUNK, f"no {CHECKSUM_PROPERTY!r} user property")
    if hashlib.sha256(chunk).hexdigest() != declared:
        raise TransferRejected(CHECKSUM_MISMATCH, "a chunk's SHA-256 differs from its sha256 property")
