"""The time-series store interface shared by every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from types import TracebackType

from core import Sample


class StoreUnavailable(RuntimeError):
    """The store could not be reached, or did not confirm the write: nothing can be assumed to be stored."""


class VitalsStore(ABC):
    """Where vitals samples are kept.

    A sample's identity is ``(patient_id, device_id, code, t_ms)``: writing it again (a redelivered message) never
    makes a second row.
    """

    @abstractmethod
    def write(self, samples: Sequence[Sample]) -> None:
        """Store ``samples`` idempotently; return only once they are durable. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    def query(self, patient_id: str, start_ms: int, end_ms: int, codes: Collection[str] | None = None) -> list[Sample]:
        """One patient's samples with ``start_ms <= t_ms <= end_ms`` (optionally only ``codes``), sorted by
        ``(t_ms, code)``."""

    @abstractmethod
    def recent(self, since_ms: int) -> list[Sample]:
        """Every patient's samples with ``t_ms >= since_ms``, sorted by ``t_ms`` (then patient, code)."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the object is not used afterwards."""

    def __enter__(self) -> VitalsStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def sort_key_query(sample: Sample) -> tuple[int, str, str, str]:
    """Order of :meth:`VitalsStore.query` results."""
    return (sample.t_ms, sample.code, sample.device_id, sample.patient_id)


def sort_key_recent(sample: Sample) -> tuple[int, str, str, str]:
    """Order of :meth:`VitalsStore.recent` results."""
    return (sample.t_ms, sample.patient_id, sample.code, sample.device_id)
