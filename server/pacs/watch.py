"""PACS-side watch mode: follow Orthanc's changes feed and hand every new stable series to a callback.

Orthanc numbers every change (``Seq``); the watcher asks ``/changes?since=N&limit=M``, acts on ``StableSeries``
and persists N after each series, so a restart neither loses nor repeats work (at least once: a crash between a
callback's return and the write of N repeats that one series). Series Aegle derived are skipped, so the watcher
never enhances its own output. A failing callback is retried with exponential backoff, the retries persisted with
the cursor; after ``max_attempts`` the series is given up and recorded with its cause. Nothing stops the loop but
:meth:`OrthancWatcher.stop`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pydicom
from pydicom.errors import InvalidDicomError

from core import replace_durably
from server.pacs.dicomweb import DicomWebStore
from server.pacs.errors import PacsError, checked_request
from server.study import is_aegle_output

if TYPE_CHECKING:
    from core import PacsSettings
    from server.study.pipeline import StudyPipeline

log = logging.getLogger("aegle.pacs.watch")



@dataclass
class WatchState:
    """What the watcher persists: the last change handled, series waiting for a retry, series given up."""

    last_change: int | None = None  # None: not started yet
    retries: dict[str, dict[str, Any]] = field(default_factory=dict)  # Orthanc series id → pending retry
    given_up: dict[str, dict[str, Any]] = field(default_factory=dict)  # Orthanc series id → last failure

    @classmethod
    def load(cls, path: Path) -> WatchState:
        """The state saved at ``path``, or a fresh one if there is none; a corrupt file is an error, not a reset."""
        try:
            raw = json.loads(path.read_text())
            return cls(int(raw["last_change"]), dict(raw.get("retries", {})), dict(raw.get("given_up", {})))
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"watch state {path} is corrupt ({exc!r}); fix or remove it deliberately") from exc

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old or the new state, never a torn one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"last_change": self.last_change, "retries": self.retries, "given_up": self.given_up}
        replace_durably(path, json.dumps(state).encode())


@dataclass
class WatchStats:
    """Counts since this watcher started."""

    series_done: int = 0
    skipped_own: int = 0
    skipped_gone: int = 0
    callback_failures: int = 0
    given_up: int = 0
    feed_errors: int = 0


class OrthancWatcher:
    """Calls ``on_stable_series(study_uid, series_uid)`` once for every series that becomes stable in Orthanc.

    ``start_from`` applies only when ``state_path`` does not exist yet: ``"now"`` (default) ignores what Orthanc
    already holds, ``"beginning"`` replays its whole changes log. Retries wait ``retry_backoff_s · 2^(n-1)``
    (capped at ``max_backoff_s``).
    """

    def __init__(
        self,
        orthanc_url: str,
        username: str | None,
        password: str | None,
        on_stable_series: Callable[[str, str], None],
        state_path: Path,
        *,
        poll_interval_s: float = 1.0,
        page_size: int = 100,
        start_from: Literal["now", "beginning"] = "now",
        max_attempts: int = 5,
        retry_backoff_s: float = 5.0,
        max_backoff_s: float = 300.0,
        timeout: float = 30.0,
    ) -> None:
        self.orthanc_url = orthanc_url.rstrip("/")
        self.client = httpx.Client(auth=(username, password or "") if username else None, timeout=timeout)
        self.on_stable_series = on_stable_series
        self.state_path = Path(state_path)
        self.state = WatchState.load(self.state_path)
        self.poll_interval_s = poll_interval_s
        self.page_size = page_size
        self.start_from = start_from
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = WatchStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _get(self, path: str, what: str, **params: Any) -> httpx.Response:
        return checked_request(self.client, "GET", f"{self.orthanc_url}{path}", what, params=params)

    def poll_once(self) -> int:
        """Run the retries that are due, then handle one page of the changes feed; returns the changes consumed.

        Raises :class:`PacsError` when Orthanc cannot be read; the cursor then stays where it was.
        """
        since = self.state.last_change if self.state.last_change is not None else self._set_start()
        self._run_due_retries()
        page = self._get("/changes", "changes feed", since=since, limit=self.page_size).json()
        changes = page.get("Changes", [])
        if not changes and page.get("Last", 0) < since:
            log.warning(
                "Orthanc's changes log ends at %d, before this watcher's cursor %d: a new Orthanc database; "
                "following it from its beginning", page.get("Last", 0), since,
            )
            self.state.last_change = 0
        for change in changes:
            if self._stop.is_set():
                break
            stable_series = change.get("ChangeType") == "StableSeries"
            if stable_series:
                self._handle(change["ID"])
            self.state.last_change = int(change["Seq"])
            if stable_series:
                self.state.save(self.state_path)
        self.state.save(self.state_path)
        return len(changes)

    def _set_start(self) -> int:
        """Take and persist the first cursor: the end of the feed ("now") or 0 ("beginning")."""
        last = 0
        if self.start_from == "now":
            last = int(self._get("/changes", "changes feed", last="").json().get("Last", 0))
        self.state.last_change = last
        self.state.save(self.state_path)
        log.info("watching Orthanc from change %d", last)
        return last

    def _handle(self, series_id: str) -> None:
        """Resolve a stable series and run the callback (unless Aegle made it); failures become retries.

        Raises :class:`PacsError` only when Orthanc is unreachable (transient): the change is then read again.
        """
        try:
            study_uid, series_uid, own = self._resolve(series_id)
        except PacsError as exc:
            if exc.transient:
                raise
            if exc.status == 404:  # deleted before we got to it
                self.stats.skipped_gone += 1
                return
            self._give_up(series_id, {"error": str(exc), "attempts": 0}, cause=str(exc))
            return
        except (InvalidDicomError, AttributeError) as exc:  # not DICOM, or no study/series UID
            cause = f"unreadable instance ({type(exc).__name__})"
            self._give_up(series_id, {"error": cause, "attempts": 0}, cause=cause)
            return
        if own:
            self.stats.skipped_own += 1
            log.info("series %s is Aegle output: not enhanced again", series_id)
            return
        self._attempt(series_id, study_uid, series_uid, attempts=0)

    def _give_up(self, series_id: str, failure: dict[str, Any], cause: str) -> None:
        """Record a series that will not be processed; ``cause`` is logged, so it must hold no PHI."""
        self.state.retries.pop(series_id, None)
        self.state.given_up[series_id] = failure
        self.stats.given_up += 1
        log.error("series %s given up after %d attempts: %s", series_id, failure["attempts"], cause)

    def _resolve(self, series_id: str) -> tuple[str, str, bool]:
        """Study and series UIDs of an Orthanc series, and whether Aegle produced it (read from one instance)."""
        instances = self._get(f"/series/{series_id}", "series").json().get("Instances", [])
        if not instances:
            raise PacsError("series has no instances", transient=False, status=404)
        data = self._get(f"/instances/{instances[0]}/file", "instance").content
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), is_aegle_output(ds)

    def _attempt(self, series_id: str, study_uid: str, series_uid: str, attempts: int) -> None:
        try:
            self.on_stable_series(study_uid, series_uid)
        except Exception as exc:  # a callback failure must never stop the watcher
            attempts += 1
            self.stats.callback_failures += 1
            failure = {
                "study_uid": study_uid,
                "series_uid": series_uid,
                "attempts": attempts,
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
            if attempts >= self.max_attempts:
                self._give_up(series_id, failure, cause=type(exc).__name__)
                return
            delay = min(self.retry_backoff_s * 2 ** (attempts - 1), self.max_backoff_s)
            self.state.retries[series_id] = {**failure, "due": time.time() + delay}
            log.warning("series %s failed (%s); retry %d in %.1f s", series_id, type(exc).__name__, attempts, delay)
            return
        self.state.retries.pop(series_id, None)
        self.stats.series_done += 1

    def _run_due_retries(self) -> None:
        now = time.time()
        for series_id, retry in list(self.state.retries.items()):
            if retry["due"] <= now and not self._stop.is_set():
                self._attempt(series_id, retry["study_uid"], retry["series_uid"], retry["attempts"])
                self.state.save(self.state_path)

    def run(self) -> None:
        """Poll until :meth:`stop`; Orthanc outages are logged and waited out with backoff."""
        errors = 0
        while not self._stop.is_set():
            try:
                consumed = self.poll_once()
                errors = 0
            except Exception as exc:  # Orthanc down, a bad answer: keep watching
                errors += 1
                self.stats.feed_errors += 1
                log.warning("cannot follow Orthanc's changes (%s: %s)", type(exc).__name__, exc)
                self._stop.wait(min(self.poll_interval_s * 2 ** min(errors, 6), self.max_backoff_s))
                continue
            if consumed < self.page_size:
                self._stop.wait(self.poll_interval_s)

    def start(self) -> OrthancWatcher:
        """Run :meth:`run` in a background thread (once: starting a running watcher does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        if self.client.is_closed:
            raise RuntimeError("a stopped watcher cannot start again: create a new one (it resumes from its state)")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="orthanc-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """End the loop after the step in progress (a running callback finishes first) and close connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.client.close()

    def __enter__(self) -> OrthancWatcher:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SeriesNotStored(RuntimeError):
    """The pipeline stored nothing for a series and a retry may help (the watcher retries it later)."""


def enhance_series(pacs: DicomWebStore, pipeline: StudyPipeline) -> Callable[[str, str], None]:
    """The watch callback: fetch a series with WADO-RS and run it through the pipeline (which stores it back).

    The files go in as bytes, so the pipeline reads each one with the same checks as any other input
    (``server.study.read_instance``): a corrupt instance in the PACS fails alone with its reason.

    Raises when the PACS cannot be read, or when nothing was stored and some failure is retryable; a series with
    only permanent failures (recorded in the pipeline's result event) is not retried.
    """

    def handle(study_uid: str, series_uid: str) -> None:
        result = pipeline.process_series(pacs.retrieve_series_files(study_uid, series_uid))
        retryable = sorted({f.reason for f in result.failures if f.retryable})
        if not result.stored and retryable:
            raise SeriesNotStored(f"nothing stored; retryable failures: {', '.join(retryable)}")

    return handle


def watcher_for(settings: PacsSettings, pacs: DicomWebStore, pipeline: StudyPipeline) -> OrthancWatcher:
    """An Orthanc watcher (not started) that enhances every new stable series with ``pipeline``."""
    if not settings.orthanc_url:
        raise ValueError("the watch mode needs the Orthanc REST API URL (AEGLE_PACS__ORTHANC_URL)")
    return OrthancWatcher(
        settings.orthanc_url,
        settings.username,
        settings.secret(),
        enhance_series(pacs, pipeline),
        settings.watch_state_path,
        poll_interval_s=settings.poll_interval_s,
    )
