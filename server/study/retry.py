"""Bounded exponential backoff, for what the study path may find briefly unavailable: the vitals store (step 4)
and the PACS (step 8)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Up to ``attempts`` tries (at least 1); after failed try ``n`` (0-based), wait ``base_s · 2^n`` (≤ ``max_s``)."""

    attempts: int = 4
    base_s: float = 0.5
    max_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based)."""
        return min(self.base_s * 2**attempt, self.max_s)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, tried again after any exception until the tries are used up (then the last one is raised)."""
        for attempt in range(self.attempts - 1):
            try:
                return fn()
            except Exception:
                self.sleep(self.delay(attempt))
        return fn()
