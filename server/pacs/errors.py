"""PACS failures, and the one place HTTP outcomes become them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import httpx

# HTTP statuses worth retrying: the request may succeed later unchanged.
TRANSIENT_HTTP = frozenset({408, 429})
# DICOM failure reasons (PS3.18 STOW-RS, PS3.4 C-STORE) that mean "try again later": A7xx, out of resources.
OUT_OF_RESOURCES = range(0xA700, 0xA800)


class PacsError(Exception):
    """A PACS request failed. ``transient``: retrying the same request later may succeed.

    ``status`` is the HTTP status when there was one. A STOW-RS answer about each instance fills ``stored`` (SOP
    Instance UIDs the PACS acknowledged: they are stored, whatever happened to the others), ``failed`` (UIDs it
    refused, with the DICOM failure reason) and ``unacknowledged`` (UIDs it answered nothing about: not stored).
    """

    def __init__(
        self, message: str, *, transient: bool, status: int | None = None, failed: dict[str, int] | None = None,
        stored: set[str] | None = None, unacknowledged: set[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.failed = dict(failed or {})
        self.stored = set(stored or ())
        self.unacknowledged = set(unacknowledged or ())

    @property
    def refused(self) -> dict[str, int]:
        """The instances refused for good: failed with a reason that is not "out of resources"."""
        return {uid: reason for uid, reason in self.failed.items() if reason not in OUT_OF_RESOURCES}


def checked_request(
    client: httpx.Client, method: str, url: str, what: str, accept: Collection[int] = (), **kwargs: Any
) -> httpx.Response:
    """Send one request; a connection failure or an error status not in ``accept`` becomes a :class:`PacsError`.

    Connection errors, timeouts, 408, 429 and 5xx are transient; other 4xx are not (the request itself is wrong,
    or the credentials are). ``what`` names the operation in the message (no query values: they may hold PHI).
    """
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise PacsError(f"{what}: PACS unreachable ({type(exc).__name__})", transient=True) from exc
    if response.is_success or response.status_code in accept:
        return response
    raise_for_status(response, what)


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Raise the :class:`PacsError` an error status means (see :func:`checked_request`)."""
    status = response.status_code
    raise PacsError(
        f"{what}: PACS answered HTTP {status} {response.reason_phrase}",
        transient=status >= 500 or status in TRANSIENT_HTTP,
        status=status,
    )
