"""Retrying what a retry may fix (5xx, resets, stalls), with exponential backoff and a bound.

Transfers count consecutive attempts that made no progress, so a flaky link that moves a
few hundred MiB between resets keeps going while a dead one fails after `max_attempts`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from inferator.prefetch.errors import PrefetchError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 60.0  # one minute between attempts at most: a Job should fail in minutes, not hours


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_s: float = 1.0

    def delay_s(self, failures: int) -> float:
        """Backoff before the next attempt after `failures` consecutive failures, with 20% jitter."""
        base: float = min(MAX_BACKOFF_S, self.backoff_s * 2.0 ** max(0, failures - 1))
        return base * (0.8 + 0.4 * random.random())  # noqa: S311 - jitter, not a secret


def with_retries(
    what: str, call: Callable[[], T], policy: RetryPolicy, stop: threading.Event | None = None
) -> T:
    """Run `call`, retrying TransientError up to the policy's bound; other errors pass through."""
    failures = 0
    while True:
        try:
            return call()
        except TransientError as exc:
            failures += 1
            if failures >= policy.max_attempts:
                raise PrefetchError(f"{what}: giving up after {failures} attempts: {exc}") from exc
            delay = policy.delay_s(failures)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, exc, failures, policy.max_attempts - 1, delay)
            if stop is not None and stop.wait(delay):
                raise PrefetchError(f"{what}: stopped") from exc
            if stop is None:
                threading.Event().wait(delay)
