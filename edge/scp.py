"""The edge node's DICOM C-STORE SCP: a modality sends images, each is checked, then written durably into the outbox.

* Before answering, each instance is checked (:func:`check_instance`): the data set parses into elements, carries
  the UIDs of an image instance that match the C-STORE request, and has pixel data, whose length (for native,
  uncompressed transfer syntaxes) is the one its Image Pixel attributes imply. An instance that fails is not
  stored and gets a failure status (PS3.4 B.2.3, Table B.2-1) with an Error Comment (0000,0902) and, where one
  element is at fault, Offending Element (0000,0901), so the modality learns it was not accepted:

  - **0xC000** "Error: Cannot understand" when the data set does not parse into elements;
  - **0xA900** "Error: Data Set does not match SOP Class" when it parses but is not a usable instance of the
    negotiated image SOP class (a required UID missing, a UID differing from the request, no pixel data, or
    pixel data shorter or longer than Rows × Columns × Frames × Samples × Bits Allocated / 8).

  Cut pixel data is the case that matters: before this check the edge answered Success and the instance failed
  alone on the server, so the sender never learned.
* Success (0x0000) is answered only after the instance is fsynced in the outbox (:meth:`edge.outbox.Outbox.put`);
  if it cannot be stored (outbox over its byte limit, disk error) the answer is 0xA700 "Out of resources" and the
  modality keeps the image and retries later.
* Only image storage SOP classes are negotiated (every storage class whose name says "Image Storage", any
  transfer syntax: the bytes are forwarded unchanged). Aegle enhances images; structured reports, presentation
  states, waveforms or encapsulated documents are refused at association negotiation, so the sending modality
  reports them as not accepted instead of believing they were handled.
* The called AE title must match ``ae_title``; the SCP listens on loopback unless told otherwise.
* Log lines name the reason, the SOP class and the calling AE title, never patient data or UIDs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from edge.outbox import Outbox

log = logging.getLogger("aegle.edge.scp")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
# The two C-STORE errors of PS3.4 Table B.2-1 used for unusable instances. Not A7xx "Out of resources": that
# invites the modality to send the same bytes again later, which cannot succeed.
#: "Error: Data Set does not match SOP Class": it parses, but is not a usable instance of its image SOP class
#: (Type 1 UIDs missing, UIDs differing from the request, pixel data absent or not the length the header implies).
DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: "Error: Cannot understand": the data set does not even parse into elements.
CANNOT_UNDERSTAND = 0xC000
#: Type 1 UIDs of every image instance (SOP Common, General Study and General Series modules).
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: Image Pixel attributes from which the length of native pixel data follows (NumberOfFrames defaults to 1).
PIXEL_ATTRIBUTES = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")
#: Storage SOP classes of images: the only ones the SCP accepts.
IMAGE_STORAGE_CLASSES: tuple[str, ...] = tuple(
    str(cx.abstract_syntax)
    for cx in AllStoragePresentationContexts
    if "Image Storage" in UID(str(cx.abstract_syntax)).name
)


@dataclass(frozen=True, slots=True)
class Unusable:
    """Why a received instance is refused: a C-STORE failure status, a reason without patient data (it is both
    logged and sent as the Error Comment, at most 64 characters) and the offending element's keyword, if one."""

    status: int
    reason: str
    keyword: str | None = None

    def response(self) -> Dataset:
        """The C-STORE response status: Status, Error Comment and (if known) Offending Element."""
        rsp = Dataset()
        rsp.Status = self.status
        rsp.ErrorComment = self.reason[:64]
        if self.keyword is not None:
            rsp.OffendingElement = [tag_for_keyword(self.keyword)]
        return rsp


def _parse_elements(ds: Dataset) -> None:
    """Read the header of every element of ``ds`` and, recursively, of every sequence item; raises if one does
    not parse. Other values stay raw bytes: converting them makes pydicom warn about invalid ones by quoting them,
    and they may be patient data."""
    for tag in list(ds.keys()):
        vr = ds.get_item(tag).VR or (dictionary_VR(tag) if tag in DicomDictionary else None)  # None: implicit VR
        if vr == "SQ":
            for item in ds[tag].value:
                _parse_elements(item)


def _raw_text(ds: Dataset, keyword: str) -> str:
    """An attribute's value decoded from its raw bytes ("" if absent or empty), without converting it."""
    element = ds.get_item(keyword)
    value = b"" if element is None or element.value is None else element.value
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip("\x00 ")


def check_instance(data: bytes, sop_class_uid: str, sop_instance_uid: str) -> Unusable | None:
    """Check a received Part 10 instance against the C-STORE request's UIDs; ``None`` if it can be accepted.

    Compressed (encapsulated) pixel data is only checked for presence; whether it decodes is the server's
    concern (a stream cut inside encapsulated pixel data leaves no Pixel Data element, which is refused here).
    """
    try:
        ds = pydicom.dcmread(DicomBytesIO(data))
        _parse_elements(ds)
    except Exception as exc:  # pydicom raises many types on malformed input; the message may quote values
        return Unusable(CANNOT_UNDERSTAND, f"data set does not parse into elements ({type(exc).__name__})")
    uids = {keyword: _raw_text(ds, keyword) for keyword in REQUIRED_UIDS}
    for keyword, value in uids.items():
        if not value:
            return Unusable(DOES_NOT_MATCH_SOP_CLASS, f"{keyword} missing or empty", keyword)
    for keyword, requested in (("SOPClassUID", sop_class_uid), ("SOPInstanceUID", sop_instance_uid)):
        if uids[keyword] != requested:
            return Unusable(DOES_NOT_MATCH_SOP_CLASS, f"{keyword} differs from the C-STORE request", keyword)
    if "PixelData" not in ds:
        return Unusable(DOES_NOT_MATCH_SOP_CLASS, "no Pixel Data in an image instance", "PixelData")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    try:
        missing = next((keyword for keyword in PIXEL_ATTRIBUTES if ds.get(keyword) in (None, "")), None)
        expected = 0 if missing else get_expected_length(ds, "bytes")  # handles 1-bit and YBR_FULL_422 packing
    except Exception as exc:  # a value that does not convert
        return Unusable(DOES_NOT_MATCH_SOP_CLASS, f"unusable Image Pixel attributes ({type(exc).__name__})")
    if missing:
        return Unusable(DOES_NOT_MATCH_SOP_CLASS, f"{missing} missing or empty", missing)
    actual = len(ds.get_item("PixelData").value)
    if actual not in (expected, expected + expected % 2):  # an odd length carries one padding byte
        return Unusable(DOES_NOT_MATCH_SOP_CLASS, f"Pixel Data has {actual} bytes, not {expected}", "PixelData")
    return None


class StorageSCP:
    """A C-STORE SCP that checks each received instance and puts it into an :class:`~edge.outbox.Outbox`."""

    def __init__(
        self,
        outbox: Outbox,
        ae_title: str = "AEGLE_EDGE",
        host: str = "127.0.0.1",
        port: int = 11112,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.ae_title, self.host, self.port = ae_title, host, port
        self.on_stored = on_stored
        self.stored = 0
        self.refused = 0  # answered 0xA700: could not be stored
        self.unusable = 0  # answered 0xA900 / 0xC000: failed check_instance
        self._server: Any = None

    def start(self) -> StorageSCP:
        """Listen in background threads until :meth:`stop`."""
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        for uid in IMAGE_STORAGE_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        log.info("C-STORE SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: evt.Event) -> int | Dataset:
        request = event.request
        sop_class, sop_instance = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
        data = event.encoded_dataset()  # preamble + file meta + dataset exactly as received
        problem = check_instance(data, sop_class, sop_instance)
        if problem is not None:
            self.unusable += 1
            log.warning(
                "refused a received %s from %s (answered 0x%04X): %s",
                UID(sop_class).name, event.assoc.requestor.ae_title, problem.status, problem.reason,
            )  # fmt: skip
            return problem.response()
        try:
            self.outbox.put(data, sop_instance, sop_class)
        except OSError as exc:  # OutboxFull is an OSError
            self.refused += 1
            log.error("could not store a received instance (answered 0xA700): %s", exc)
            return OUT_OF_RESOURCES
        self.stored += 1
        if self.on_stored is not None:
            self.on_stored()
        return SUCCESS
