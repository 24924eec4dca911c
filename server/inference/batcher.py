"""Micro-batching: requests queue, are grouped by shape bucket and run as one batch after at most ``max_wait_ms``.

Thread based, so the FastAPI service (through ``asyncio.wrap_future`` or a worker thread) and the synchronous
study pipeline share one queue. One worker thread runs the batches one after another (the backends use the
cores themselves). The queue is bounded: :meth:`MicroBatcher.submit` raises :class:`QueueFull` instead of
growing, which the API turns into ``503`` with ``Retry-After``.

The bucket key is chosen by the caller (the engine uses model name + exact input shape: items of different
shapes never share a batch, and nothing is padded, so a batched result equals the single-item result).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchRunner", "MicroBatcher", "QueueFull"]

# Runs one batch: the bucket key and each item's payload, in order; returns one result per item.
BatchRunner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFull(RuntimeError):
    """The bounded queue has no room; ``retry_after_s`` is a hint for the client."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Item:
    payload: Any
    future: Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Group queued items by bucket key and run each group through ``run`` as one batch.

    A group runs when it holds ``max_batch`` items or its oldest item has waited ``max_wait_ms``; the group
    whose oldest item is oldest goes first. At most ``queue_max`` items wait at any time.
    """

    def __init__(
        self,
        run: BatchRunner,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_max: int,
        batch_limit: Callable[[Hashable], int] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or queue_max < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_max must be >= 1 and max_wait_ms >= 0")
        self._run = run
        self.max_batch = max_batch
        # Per-key cap below max_batch (e.g. fewer large images per batch); at least 1.
        self._batch_limit = batch_limit
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_max = queue_max
        self._pending: dict[Hashable, deque[_Item]] = {}
        self._depth = 0
        self._busy_s = 0.0  # smoothed seconds per batch, for the Retry-After hint
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting (not yet taken into a batch)."""
        return self._depth

    def limit(self, key: Hashable) -> int:
        """Largest batch for ``key``: ``max_batch``, or less if ``batch_limit`` says so."""
        if self._batch_limit is None:
            return self.max_batch
        return max(1, min(self.max_batch, self._batch_limit(key)))

    def retry_after_s(self) -> int:
        """Whole seconds until the current queue has probably drained (at least 1)."""
        batches = self._depth / self.max_batch + 1
        return max(1, round(batches * self._busy_s + 0.5))

    def submit(self, key: Hashable, payloads: Sequence[Any], timeout: float | None = 0.0) -> list[Future[Any]]:
        """Queue ``payloads`` (all or none) under ``key``; one future per payload.

        ``timeout`` is how long to wait for room: 0 (default) fails at once with :class:`QueueFull`, None waits
        indefinitely. A request larger than ``queue_max`` can never fit and raises ``ValueError``.
        """
        n = len(payloads)
        if n > self.queue_max:
            raise ValueError(f"{n} items exceed the queue capacity of {self.queue_max}; submit them in parts")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._depth + n > self.queue_max:
                if self._closed:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueFull(
                        f"inference queue full ({self._depth}/{self.queue_max} items waiting)", self.retry_after_s()
                    )
                self._cond.wait(remaining)
            if self._closed:
                raise RuntimeError("the batcher is closed")
            items = [_Item(p, Future()) for p in payloads]
            self._pending.setdefault(key, deque()).extend(items)
            self._depth += n
            self._cond.notify_all()
        return [item.future for item in items]

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _next_ready(self, now: float) -> tuple[Hashable | None, float | None]:
        """The key to run now (or None) and, if none, how long until one is due (None: nothing queued)."""
        best_key, best_t = None, None
        for key, items in self._pending.items():
            head = items[0].enqueued
            due = len(items) >= self.limit(key) or self._closed or now - head >= self.max_wait_s
            if due and (best_t is None or head < best_t):
                best_key, best_t = key, head
        if best_key is not None:
            return best_key, None
        if not self._pending:
            return None, None
        oldest = min(items[0].enqueued for items in self._pending.values())
        return None, max(0.0, oldest + self.max_wait_s - now)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    key, wait = self._next_ready(time.monotonic())
                    if key is not None:
                        break
                    if self._closed and not self._pending:
                        return
                    self._cond.wait(wait)
                items = self._pending[key]
                batch = [items.popleft() for _ in range(min(self.limit(key), len(items)))]
                if not items:
                    del self._pending[key]
                self._depth -= len(batch)
                self._cond.notify_all()  # room for waiting submitters
            self._execute(key, batch)

    def _execute(self, key: Hashable, batch: list[_Item]) -> None:
        started = time.monotonic()
        try:
            results = self._run(key, [item.payload for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch runner returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # every waiter must hear about the failure
            for item in batch:
                item.future.set_exception(exc)
        else:
            for item, result in zip(batch, results, strict=True):
                item.future.set_result(result)
        self._busy_s = 0.8 * self._busy_s + 0.2 * (time.monotonic() - started)
