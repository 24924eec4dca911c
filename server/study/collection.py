"""Step 2, collection into series: instances delivered one by one (MQTT transfers) → one pipeline run per series.

The assembler (step 1) hands over each instance; :class:`SeriesCollector` files it durably under its series and
runs the series through the pipeline once no instance of it has arrived for a while (see the class docstring).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset

from core import fsync_dir, replace_durably
from server.study.results import SeriesResult

if TYPE_CHECKING:
    from server.study.assembly import TransferInfo

log = logging.getLogger("aegle.collector")
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
FAILED_DIR = "given-up"


class SeriesCollector:
    """Instances delivered one by one (MQTT transfers) → one pipeline run per series, once the series is quiet.

    Each instance is filed durably under ``path/{SeriesInstanceUID}/{transfer_id}.dcm`` before :meth:`add`
    returns (the assembler then marks the transfer delivered), so a restart loses nothing: filed series are
    picked up again at :meth:`start`. A series runs when no instance of it has arrived for ``quiet_s`` (the
    idea of Orthanc's StableAge); an instance arriving later starts a new quiet period and yields a second
    derived series. When nothing could be stored and a failure is retryable (PACS down), the series is kept and
    retried after ``quiet_s · 2^n`` (at most ``max_backoff_s``), ``max_attempts`` times, then moved to
    ``path/given-up/`` with the result. An instance whose header cannot be read is run at once (the pipeline
    records the failure) and dead-lettered through ``reject``.
    """

    def __init__(
        self,
        path: Path,
        quiet_s: float,
        process: Callable[[Sequence[Dataset | bytes]], SeriesResult],
        reject: Callable[[TransferInfo, SeriesResult], None] | None = None,
        *,
        max_attempts: int = 5,
        max_backoff_s: float = 300.0,
    ) -> None:
        self.path = Path(path)
        self.quiet_s = quiet_s
        self.process = process
        self.reject = reject
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.results: list[SeriesResult] = []  # the last results, newest last (bounded)
        self._due: dict[str, float] = {}  # series directory → monotonic time it may run
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, data: bytes, info: TransferInfo) -> None:
        """The assembler's ``on_instance``: file the instance durably under its series."""
        key = _series_key(data)
        if key is None:
            result = self.process([data])
            self._keep(result)
            if self.reject is not None:
                self.reject(info, result)
            return
        with self._lock:
            directory = self.path / key
            directory.mkdir(parents=True, exist_ok=True)
            replace_durably(directory / f"{info.transfer_id}.dcm", data)
            self._due[key] = time.monotonic() + self.quiet_s
            self._attempts.pop(key, None)

    def start(self) -> SeriesCollector:
        """Schedule series filed before a restart, then run due series in a background thread."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for directory in sorted(self.path.iterdir()):
                if directory.is_dir() and directory.name != FAILED_DIR:
                    self._due.setdefault(directory.name, time.monotonic() + self.quiet_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aegle-series-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 120.0) -> None:
        """Stop after the series in progress; series not yet run stay filed for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def pending(self) -> int:
        """Series filed and not yet run."""
        with self._lock:
            return len(self._due)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = sorted((at, key) for key, at in self._due.items() if at <= now)
                upcoming = min(self._due.values(), default=now + self.quiet_s)
            for _, key in due:
                if self._stop.is_set():
                    return
                try:
                    self._run_series(key)
                except Exception as exc:  # a bug or a full disk must not stop the other series
                    log.error("series run failed (%s); retried later", type(exc).__name__, exc_info=exc)
                    self._retry_or_give_up(key, None)
            self._wake.wait(max(0.05, min(upcoming - time.monotonic(), self.quiet_s)))
            self._wake.clear()

    def _run_series(self, key: str) -> None:
        directory = self.path / key
        with self._lock:
            if self._due.get(key, float("inf")) > time.monotonic():
                return  # an instance arrived meanwhile: wait for quiet again
            files = sorted(directory.glob("*.dcm"))
            self._due.pop(key)
        if not files:
            return
        result = self.process([f.read_bytes() for f in files])
        self._keep(result)
        if not result.stored and any(f.retryable for f in result.failures):
            self._retry_or_give_up(key, result)
            return
        with self._lock:
            for f in files:
                f.unlink()
            self._attempts.pop(key, None)
            if key not in self._due:
                shutil.rmtree(directory, ignore_errors=True)
            fsync_dir(self.path)

    def _retry_or_give_up(self, key: str, result: SeriesResult | None) -> None:
        with self._lock:
            attempts = self._attempts.get(key, 0) + 1
            if attempts < self.max_attempts:
                self._attempts[key] = attempts
                delay = min(self.quiet_s * 2**attempts, self.max_backoff_s)
                self._due.setdefault(key, time.monotonic() + delay)
                log.warning("series not stored (attempt %d); retry in %.0f s", attempts, delay)
                return
            self._attempts.pop(key, None)
            self._due.pop(key, None)
            if not (self.path / key).is_dir():
                return
            target = self.path / FAILED_DIR / f"{key}-{uuid.uuid4().hex[:8]}"
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.path / key).replace(target)
            (target / "result.json").write_text(json.dumps(result.to_event() if result else None, default=str))
            fsync_dir(target.parent)
            log.error("series given up after %d attempts; kept in %s", attempts, target.parent)

    def _keep(self, result: SeriesResult) -> None:
        with self._lock:
            self.results = [*self.results[-99:], result]


def _series_key(data: bytes) -> str | None:
    """The directory name of an instance's series (its SeriesInstanceUID), or None if the header is unreadable."""
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        series_uid = str(ds.SeriesInstanceUID)
    except Exception:  # not DICOM, torn header, no series UID: the pipeline says which
        return None
    return series_uid if _UID.match(series_uid) else None
