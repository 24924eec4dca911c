"""A DICOMweb client for the PACS: STOW-RS to store, WADO-RS to retrieve a series, QIDO-RS to search.

Plain ``httpx`` with basic authentication; every failure is a :class:`~server.pacs.errors.PacsError` that says
whether a retry may help. No automatic retries here: the caller (the pipeline, the watcher) owns the policy.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from io import BytesIO
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import pydicom
from pydicom.errors import InvalidDicomError

from server.pacs.errors import OUT_OF_RESOURCES, PacsError, checked_request, raise_for_status
from server.study import DicomEncodingError, encode

if TYPE_CHECKING:
    from core import PacsSettings

DICOM_JSON = "application/dicom+json"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
# STOW-RS statuses whose body says which instances failed and why (Orthanc answers 400 when a part is not
# understood, 409 when an instance belongs to another study than the request's).
_STOW_PARTIAL = (400, 409)


def encode_multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    """A multipart/related body of ``application/dicom`` parts."""
    delimiter = f"--{boundary}\r\n".encode()
    body = bytearray()
    for part in parts:
        body += delimiter + b"Content-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


def decode_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of the parts of a multipart response (their headers dropped)."""
    params = dict(
        p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p
    )
    boundary = params.get("boundary", "").strip('"')
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise PacsError(f"expected a multipart response, got {content_type!r}", transient=False)
    delimiter = b"--" + boundary.encode()
    parts = []
    # Everything before the first delimiter is preamble; the closing delimiter is followed by "--".
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        headers_end = chunk.find(b"\r\n\r\n")
        if headers_end < 0:
            raise PacsError("malformed multipart response: a part has no header block", transient=False)
        content = chunk[headers_end + 4 :]
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def encode_instance(ds: pydicom.Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (:func:`server.study.encode`); one that cannot be encoded is a permanent
    :class:`PacsError` raised before anything is sent."""
    try:
        return encode(ds)
    except DicomEncodingError as exc:
        raise PacsError(str(exc), transient=False) from exc


class DicomWebStore:
    """A DICOMweb server (Orthanc's plugin, or any other) reached at ``base_url`` with basic authentication.

    Implements ``PacsStore.store`` (STOW-RS) for the pipeline, and the reads the PACS-side watch mode needs.
    """

    def __init__(self, base_url: str, username: str | None, password: str | None, *, timeout: float = 60.0) -> None:
        auth = (username, password or "") if username else None
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(auth=auth, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: PacsSettings) -> DicomWebStore:
        """The DICOMweb server of ``settings`` (``dicomweb_url``, ``username``, password or ``password_file``)."""
        if not settings.dicomweb_url:
            raise ValueError("no DICOMweb server configured (AEGLE_PACS__DICOMWEB_URL)")
        return cls(settings.dicomweb_url, settings.username, settings.secret())

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Store instances with one STOW-RS request; raise :class:`PacsError` unless every one was stored.

        A batch that is one series (the pipeline's derived series) is sent to the study of its first instance
        (``POST …/studies/{StudyInstanceUID}``): a series belongs to one study, so the PACS refuses, by name, an
        instance filed under another (Orthanc: HTTP 409, failure reason 0x0110) and stores the others. A batch of
        several series goes to ``…/studies``.
        """
        if not datasets:
            return
        boundary = secrets.token_hex(16)
        body = encode_multipart([encode_instance(ds) for ds in datasets], boundary)
        path = "/studies"
        if len({str(ds.get("SeriesInstanceUID", "")) for ds in datasets}) == 1:
            path += "/" + quote(str(datasets[0].StudyInstanceUID), safe="")
        response = checked_request(
            self.client, "POST", f"{self.base_url}{path}", "STOW-RS", accept=_STOW_PARTIAL,
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
        )
        sent = [str(ds.SOPInstanceUID) for ds in datasets]
        self._check_stored(response, sent)

    @staticmethod
    def _check_stored(response: httpx.Response, sent: list[str]) -> None:
        """Raise unless the STOW-RS response lists every sent instance as stored."""
        try:
            answer = response.json() if response.content else {}
        except ValueError as exc:
            if not response.is_success:
                raise_for_status(response, "STOW-RS")
            raise PacsError("STOW-RS: the PACS answered with an unreadable body", transient=False) from exc
        failed = {
            item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", ["?"])[0]:
                int(item.get(_FAILURE_REASON, {}).get("Value", [0x0110])[0])
            for item in answer.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
        }
        stored = {
            item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [None])[0]
            for item in answer.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
        }
        unacknowledged = [uid for uid in sent if uid not in stored and uid not in failed]
        if not failed and not unacknowledged:
            if not response.is_success:
                raise_for_status(response, "STOW-RS")
            return
        reasons = sorted({f"0x{reason:04X}" for reason in failed.values()})
        raise PacsError(
            f"STOW-RS: {len(sent) - len(stored)} of {len(sent)} instances not stored"
            + (f" (failure reasons {', '.join(reasons)})" if reasons else "")
            + (f"; {len(unacknowledged)} not acknowledged" if unacknowledged else ""),
            # Out of resources may pass; so may instances the PACS dropped without a reason (Orthanc does that
            # when its storage is full). Callers bound their retries.
            transient=all(reason in OUT_OF_RESOURCES for reason in failed.values()),
            status=response.status_code,
            failed=failed,
            stored={uid for uid in sent if uid in stored},
            unacknowledged=set(unacknowledged),
        )

    def retrieve_series_files(self, study_uid: str, series_uid: str) -> list[bytes]:
        """Every instance of a series (WADO-RS) as a Part 10 file, in the transfer syntax the PACS stored it in."""
        response = checked_request(
            self.client, "GET", f"{self.base_url}/studies/{study_uid}/series/{series_uid}", "WADO-RS series",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        return decode_multipart(response.content, response.headers.get("Content-Type", ""))

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
        """:meth:`retrieve_series_files`, parsed."""
        datasets = []
        for part in self.retrieve_series_files(study_uid, series_uid):
            try:
                datasets.append(pydicom.dcmread(BytesIO(part)))
            except InvalidDicomError as exc:
                raise PacsError("WADO-RS: a part of the response is not a DICOM file", transient=False) from exc
        return datasets

    def search_series(
        self, study_uid: str | None = None, filters: Mapping[str, str] | None = None, limit: int | None = None
    ) -> list[pydicom.Dataset]:
        """Series matching QIDO-RS ``filters`` (attribute keyword or tag → value), within a study if given."""
        path = f"/studies/{study_uid}/series" if study_uid else "/series"
        params = dict(filters or {})
        if limit is not None:
            params["limit"] = str(limit)
        response = checked_request(
            self.client, "GET", f"{self.base_url}{path}", "QIDO-RS series", params=params,
            headers={"Accept": DICOM_JSON},
        )
        if response.status_code == 204 or not response.content:
            return []
        try:
            return [pydicom.Dataset.from_json(item) for item in response.json()]
        except ValueError as exc:
            raise PacsError("QIDO-RS: the PACS answered with an unreadable body", transient=False) from exc

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    def __enter__(self) -> DicomWebStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
