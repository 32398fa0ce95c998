"""Download progress: thread-safe counters, and a ticker that reports them every couple of seconds.

The rate is measured over the last interval (what a person watching `kubectl get` wants to
know: how fast is it going now), and for the final report over the whole run; bytes that
were already on disk from a previous attempt count as done but not towards the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from inferator.api.modelcache import Progress

log = logging.getLogger(__name__)


class ProgressCounter:
    """bytes/files done out of the totals; workers add, the ticker reads."""

    def __init__(
        self, bytes_total: int, files_total: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.bytes_done = 0
        self.files_done = 0
        self.bytes_transferred = 0  # in this run only: the rate's numerator
        self.started = clock()
        self._last_time = self.started
        self._last_transferred = 0

    def already_done(self, nbytes: int, *, whole_file: bool) -> None:
        """Bytes found on disk from an earlier run (a complete file, or a partial one to resume)."""
        with self._lock:
            self.bytes_done += nbytes
            if whole_file:
                self.files_done += 1

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.bytes_transferred += nbytes

    def discard(self, nbytes: int) -> None:
        """A partial download thrown away (server ignored Range, verification retry)."""
        with self._lock:
            self.bytes_done = max(0, self.bytes_done - nbytes)

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def remaining_bytes(self) -> int:
        with self._lock:
            return max(0, self.bytes_total - self.bytes_done)

    def snapshot(self, *, final: bool = False) -> Progress:
        """Current progress; the rate over the interval since the previous snapshot (or the run if final)."""
        with self._lock:
            now = self._clock()
            if final:
                elapsed, moved = now - self.started, self.bytes_transferred
            else:
                elapsed, moved = now - self._last_time, self.bytes_transferred - self._last_transferred
                self._last_time, self._last_transferred = now, self.bytes_transferred
            rate = int(moved / elapsed) if elapsed > 0 else 0
            return Progress(
                bytes_done=min(self.bytes_done, self.bytes_total),
                bytes_total=self.bytes_total,
                files_done=self.files_done,
                files_total=self.files_total,
                bytes_per_second=max(0, rate),
            )


class ProgressTicker:
    """Calls `report(progress)` every `interval_s` on a daemon thread until stopped."""

    def __init__(
        self, counter: ProgressCounter, report: Callable[[Progress], None], interval_s: float
    ) -> None:
        self.counter = counter
        self.report = report
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch-progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.report(self.counter.snapshot())
            except Exception:  # the reporter already swallows its errors; this is belt and braces
                log.warning("progress report failed", exc_info=True)

    def __enter__(self) -> ProgressTicker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
