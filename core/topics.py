"""The MQTT topic scheme, version 1, shared by devices, edge nodes and the server.

==========================================================  ==============================================
``aegle/v1/{site}/{device_id}/vitals``                      a device's vitals messages (QoS 1)
``aegle/v1/{site}/deadletter/{reason}``                     rejected payloads with the reason (QoS 1)
``aegle/v1/{site}/context/{patient_id}``                    live sensor context per patient (retained)
``aegle/v1/{site}/results/{study_uid}``                     enhancement results (server)
``aegle/v1/{site}/{edge_id}/dicom/{transfer_id}/manifest``  a DICOM instance an edge node forwards (QoS 1)
``aegle/v1/{site}/{edge_id}/dicom/{transfer_id}/{index}``   one chunk of it, raw bytes (QoS 1)
``aegle/v1/{site}/status/edge/{edge_id}``                   an edge node's status (retained)
``aegle/v1/{site}/status/ingest/{worker_id}``               an ingest worker's status (retained; site ``_all``
                                                            for a worker of every site)
==========================================================  ==============================================

The MQTT username of a device is its device id and that of an edge node its edge id: a device may publish only
its own vitals topic at its own site, an edge node only its own DICOM topics at its site, and neither may
subscribe to anything. Who may publish and subscribe to what is :mod:`core.accounts`, from which the broker
policy is generated. The DICOM transfer contract (manifest, chunks, checksums) is in :mod:`core.dicom_chunks`;
topics carry no patient data (the transfer id is a random UUID). Status topics have six levels, so no vitals,
context, dead-letter or DICOM topic is ever one.
"""

from __future__ import annotations

import re

PREFIX = "aegle/v1"
INGEST_SHARE_GROUP = "aegle-ingest"
DICOM_MANIFEST = "manifest"
#: Kinds of component that publish a retained status.
STATUS_KINDS = ("edge", "ingest")
#: The site level of a status published by a component of every site (not a site id: ids start alphanumeric).
ALL_SITES = "_all"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def is_segment(value: str) -> bool:
    """True if ``value`` may be used as one topic level (site, device or patient id)."""
    return bool(_SEGMENT.match(value))


def _segment(value: str, what: str) -> str:
    if not is_segment(value):
        raise ValueError(f"{what} {value!r} is not a valid topic segment")
    return value


def vitals(site: str, device_id: str) -> str:
    """Topic a device publishes its vitals on."""
    return f"{PREFIX}/{_segment(site, 'site')}/{_segment(device_id, 'device_id')}/vitals"


def vitals_filter(site: str = "+") -> str:
    """Subscription filter for all devices' vitals (of one site or of every site)."""
    return f"{PREFIX}/{site}/+/vitals"


def shared_vitals_filter(site: str = "+", group: str = INGEST_SHARE_GROUP) -> str:
    """MQTT v5 shared subscription so that several ingest workers split the vitals stream."""
    return f"$share/{group}/{vitals_filter(site)}"


def parse_vitals_topic(topic: str) -> tuple[str, str]:
    """Return ``(site, device_id)`` of a vitals topic; ``ValueError`` if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[4] != "vitals":
        raise ValueError(f"not a vitals topic: {topic!r}")
    return parts[2], parts[3]


def deadletter(site: str, reason: str) -> str:
    """Dead-letter topic for rejected payloads of a site (``site`` is ``unknown`` when it cannot be read)."""
    return f"{PREFIX}/{site}/deadletter/{reason}"


def deadletter_filter(site: str = "+") -> str:
    """Subscription filter for every dead letter (of one site or of every site)."""
    return deadletter(site, "+")


def context(site: str, patient_id: str) -> str:
    """Retained topic carrying a patient's live sensor context."""
    return f"{PREFIX}/{_segment(site, 'site')}/context/{_segment(patient_id, 'patient_id')}"


def context_filter(site: str = "+") -> str:
    """Subscription filter for every patient's live context."""
    return f"{PREFIX}/{site}/context/+"


def results(site: str, study_uid: str) -> str:
    """Topic announcing the result of a processed study."""
    return f"{PREFIX}/{_segment(site, 'site')}/results/{study_uid}"


def results_filter(site: str = "+") -> str:
    """Subscription filter for every result event (of one site or of every site)."""
    return f"{PREFIX}/{site}/results/+"


def edge_status(site: str, edge_id: str) -> str:
    """Retained topic of an edge node's status (queue, counts, online or offline)."""
    return f"{PREFIX}/{_segment(site, 'site')}/status/edge/{_segment(edge_id, 'edge_id')}"


def ingest_status(site: str, worker_id: str) -> str:
    """Retained topic of an ingest worker's status; ``site`` is the one it serves, or ``+`` for every site."""
    scope = ALL_SITES if site == "+" else _segment(site, "site")
    return f"{PREFIX}/{scope}/status/ingest/{_segment(worker_id, 'worker_id')}"


def status_filter(kind: str = "+", site: str = "+") -> str:
    """Subscription filter for the statuses of one kind (``edge``, ``ingest``) or of every kind."""
    return f"{PREFIX}/{site}/status/{kind}/+"


def parse_status_topic(topic: str) -> tuple[str, str, str]:
    """Return ``(site, kind, id)`` of a status topic (site ``_all`` for every site); ``ValueError`` if not one."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != "status" or parts[4] not in STATUS_KINDS:
        raise ValueError(f"not a status topic: {topic!r}")
    if parts[2] != ALL_SITES:
        _segment(parts[2], "site")
    return parts[2], parts[4], _segment(parts[5], "id")


def parse_deadletter_topic(topic: str) -> tuple[str, str]:
    """Return ``(site, reason)`` of a dead-letter topic; ``ValueError`` if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != "deadletter" or not parts[4]:
        raise ValueError(f"not a dead-letter topic: {topic!r}")
    return parts[2], parts[4]


def _transfer_id(value: str) -> str:
    if not _UUID.match(value):
        raise ValueError(f"transfer_id {value!r} is not a lowercase UUID")
    return value


def dicom_manifest(site: str, edge_id: str, transfer_id: str) -> str:
    """Topic of the manifest of one DICOM instance an edge node forwards."""
    return f"{_dicom_base(site, edge_id, transfer_id)}/{DICOM_MANIFEST}"


def dicom_chunk(site: str, edge_id: str, transfer_id: str, index: int) -> str:
    """Topic of chunk ``index`` (0-based) of a forwarded DICOM instance."""
    if index < 0:
        raise ValueError(f"chunk index {index} is negative")
    return f"{_dicom_base(site, edge_id, transfer_id)}/{index}"


def _dicom_base(site: str, edge_id: str, transfer_id: str) -> str:
    return f"{PREFIX}/{_segment(site, 'site')}/{_segment(edge_id, 'edge_id')}/dicom/{_transfer_id(transfer_id)}"


def dicom_filter(site: str = "+", edge_id: str = "+") -> str:
    """Filter for the manifests and chunks of every edge node (or of one), of every site (or of one)."""
    return f"{PREFIX}/{site}/{edge_id}/dicom/+/+"


def parse_dicom_topic(topic: str) -> tuple[str, str, str, int | None]:
    """Return ``(site, edge_id, transfer_id, chunk index)`` of a DICOM topic, index ``None`` for the manifest.

    ``ValueError`` if it is not a well-formed DICOM transfer topic.
    """
    parts = topic.split("/")
    if len(parts) != 7 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[4] != "dicom":
        raise ValueError(f"not a DICOM transfer topic: {topic!r}")
    site, edge_id, transfer_id, last = _segment(parts[2], "site"), _segment(parts[3], "edge_id"), parts[5], parts[6]
    _transfer_id(transfer_id)
    if last == DICOM_MANIFEST:
        return site, edge_id, transfer_id, None
    if not last.isdigit() or (len(last) > 1 and last[0] == "0"):
        raise ValueError(f"chunk index {last!r} is not a non-negative integer")
    return site, edge_id, transfer_id, int(last)
