"""A work queue for reconciles: one entry per object, delayed, two priorities, retried with backoff.

kopf runs every watch event's handlers in arrival order on one thread pool. In a burst of
1,000 new services that order is the problem: each Deployment reports its rollout in several
status updates, so a service applied last waited behind thousands of status refreshes of the
others, and each of those events reconciled its owner again. kopf's change handlers and
timers also write their own bookkeeping (a diff-base annotation, a finalizer while a timer
applies). Here, as in client-go's workqueue, the watch handlers only add keys:

- a key is queued at most once: five Deployment events before a worker is free are one reconcile;
- a key is never processed by two workers at once (added while processing: processed again after);
- RENDER keys (a new generation: the service has no children for its spec yet) are taken
  before REFRESH keys (a child's status, a cache, a poll), so new services are rendered first;
- a key can be due later (a poll while a rollout is under way), and a failure is retried after
  a backoff that grows per key and resets on success.

The queue holds keys, never state: whatever a worker reconciles, it reads when it runs.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

RENDER, REFRESH = 0, 1
DEFAULT_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    key: Hashable


class WorkQueue:
    """Keys in, `process(key)` out on `workers` threads. `process` returns the delay after which
    the key is due again (a poll), or None; an exception retries it after the next backoff."""

    def __init__(
        self,
        process: Callable[[Hashable], float | None],
        workers: int,
        backoff_s: Sequence[float] = DEFAULT_BACKOFF_S,
        name: str = "reconcile",
        on_error: Callable[[Hashable, BaseException, float], None] | None = None,
    ) -> None:
        self._process = process
        self._workers = workers
        self._backoff = tuple(backoff_s)
        self._name = name
        self._on_error = on_error
        self._cond = threading.Condition()
        self._heaps: tuple[list[_Entry], list[_Entry]] = ([], [])
        self._queued: dict[Hashable, tuple[int, float, int]] = {}  # key -> (priority, due, seq)
        self._processing: set[Hashable] = set()
        self._again: dict[Hashable, tuple[int, float]] = {}  # added while processing
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def add(self, key: Hashable, after_s: float = 0.0, priority: int = REFRESH) -> None:
        """Queue `key` (due in `after_s`); if queued already, the earlier time and the higher
        priority win."""
        due = time.monotonic() + after_s
        with self._cond:
            self._start()
            if key in self._processing:
                held = self._again.get(key)
                self._again[key] = (min(priority, held[0]), min(due, held[1])) if held else (priority, due)
                return
            self._push(key, priority, due)
            self._cond.notify()

    def _push(self, key: Hashable, priority: int, due: float) -> None:
        held = self._queued.get(key)
        if held is not None:
            priority, due = min(priority, held[0]), min(due, held[1])
            if (priority, due) == held[:2]:
                return
        seq = next(self._seq)
        self._queued[key] = (priority, due, seq)
        heapq.heappush(self._heaps[priority], _Entry(due, seq, key))

    def __len__(self) -> int:
        with self._cond:
            return len(self._queued)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _start(self) -> None:
        if self._threads:
            return
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _take(self) -> Hashable | None:
        """The next due key, RENDER before REFRESH; None when stopped. Call with the lock held."""
        while not self._stopped:
            now = time.monotonic()
            soonest: float | None = None
            for heap in self._heaps:
                while heap and self._queued.get(heap[0].key, (0, 0.0, -1))[2] != heap[0].seq:
                    heapq.heappop(heap)  # superseded by a later add
                if not heap:
                    continue
                if heap[0].due <= now:
                    entry = heapq.heappop(heap)
                    del self._queued[entry.key]
                    self._processing.add(entry.key)
                    return entry.key
                soonest = heap[0].due if soonest is None else min(soonest, heap[0].due)
            self._cond.wait(timeout=None if soonest is None else soonest - now)
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                key = self._take()
            if key is None:
                return
            again: float | None
            try:
                again = self._process(key)
                self._failures.pop(key, None)
            except Exception as exc:  # any failure: retried, reported by on_error
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                again = self._backoff[min(failures, len(self._backoff)) - 1]
                if self._on_error is not None:
                    self._on_error(key, exc, again)
                else:
                    log.warning("%s %s failed (retry in %.0f s): %s", self._name, key, again, exc)
            with self._cond:
                self._processing.discard(key)
                pending = self._again.pop(key, None)
                if pending is not None:
                    self._push(key, *pending)
                if again is not None:
                    self._push(key, REFRESH, time.monotonic() + again)
                self._cond.notify()
