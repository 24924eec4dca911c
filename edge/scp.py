"""The edge node's DICOM C-STORE SCP: a modality sends images, each is written durably into the outbox.

* Success (0x0000) is answered only after the instance is fsynced in the outbox (:meth:`edge.outbox.Outbox.put`);
  if it cannot be stored (outbox over its byte limit, disk error) the answer is 0xA700 "Out of resources" and the
  modality keeps the image and retries later.
* Only image storage SOP classes are negotiated (every storage class whose name says "Image Storage", any
  transfer syntax: the bytes are forwarded unchanged). Aegle enhances images; structured reports, presentation
  states, waveforms or encapsulated documents are refused at association negotiation, so the sending modality
  reports them as not accepted instead of believing they were handled.
* The called AE title must match ``ae_title``; the SCP listens on loopback unless told otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from edge.outbox import Outbox

log = logging.getLogger("aegle.edge.scp")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
#: Storage SOP classes of images: the only ones the SCP accepts.
IMAGE_STORAGE_CLASSES: tuple[str, ...] = tuple(
    str(cx.abstract_syntax)
    for cx in AllStoragePresentationContexts
    if "Image Storage" in UID(str(cx.abstract_syntax)).name
)


class StorageSCP:
    """A C-STORE SCP that puts each received instance into an :class:`~edge.outbox.Outbox`."""

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
        self.refused = 0
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

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        try:
            data = event.encoded_dataset()  # preamble + file meta + dataset exactly as received
            self.outbox.put(data, str(request.AffectedSOPInstanceUID), str(request.AffectedSOPClassUID))
        except OSError as exc:  # OutboxFull is an OSError
            self.refused += 1
            log.error("could not store a received instance (answered 0xA700): %s", exc)
            return OUT_OF_RESOURCES
        self.stored += 1
        if self.on_stored is not None:
            self.on_stored()
        return SUCCESS
