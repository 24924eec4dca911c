"""PACS failures, and the one place HTTP outcomes become them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import httpx

# HTTP statuses worth retrying: the request may succeed later unchanged.
TRANSIENT_HTTP = frozenset({408, 429})


class PacsError(Exception):
    """A PACS request failed. ``transient``: retrying the same request later may succeed.

    ``status`` is the HTTP status when there was one; ``failed`` maps the SOP Instance UIDs a STOW-RS request
    did not store to their DICOM failure reason.
    """

    def __init__(
        self, message: str, *, transient: bool, status: int | None = None, failed: dict[str, int] | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.failed = dict(failed or {})


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
