"""The reconcile work queue: one entry per key, no key on two workers, RENDER first, polls, retries."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator

import pytest

from inferator.controllers.workqueue import REFRESH, RENDER, WorkQueue


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def queues() -> Iterator[list[WorkQueue]]:
    made: list[WorkQueue] = []
    yield made
    for q in made:
        q.stop()


def one_busy_worker(queues: list[WorkQueue], first: str) -> tuple[WorkQueue, threading.Event, list[Hashable]]:
    """A queue whose only worker is held on `first` until the returned gate is set."""
    gate = threading.Event()
    seen: list[Hashable] = []

    def process(key: Hashable) -> None:
        gate.wait()
        seen.append(key)

    q = WorkQueue(process, workers=1)
    queues.append(q)
    q.add(first)
    wait_until(lambda: len(q) == 0)
    return q, gate, seen


def test_keys_added_before_a_worker_is_free_are_processed_once(queues: list[WorkQueue]) -> None:
    q, gate, seen = one_busy_worker(queues, "busy")
    for _ in range(5):
        q.add("a")
        q.add("b")
    assert len(q) == 2
    gate.set()
    wait_until(lambda: len(seen) == 3)
    time.sleep(0.1)
    assert seen == ["busy", "a", "b"]


def test_render_keys_are_taken_before_refresh_keys(queues: list[WorkQueue]) -> None:
    q, gate, seen = one_busy_worker(queues, "first")
    for i in range(3):
        q.add(f"refresh-{i}", priority=REFRESH)
    q.add("new-service", priority=RENDER)
    q.add("refresh-1", priority=RENDER)  # queued already: the higher priority wins
    gate.set()
    wait_until(lambda: len(seen) == 5)
    # Among RENDER keys, the one queued first (refresh-1 keeps its earlier time).
    assert seen == ["first", "refresh-1", "new-service", "refresh-0", "refresh-2"]


def test_a_key_is_never_on_two_workers_and_an_add_meanwhile_runs_again_after(queues: list[WorkQueue]) -> None:
    running: set[Hashable] = set()
    overlaps: list[Hashable] = []
    counts: dict[Hashable, int] = {}
    lock = threading.Lock()

    def process(key: Hashable) -> None:
        with lock:
            if key in running:
                overlaps.append(key)
            running.add(key)
        time.sleep(0.05)
        with lock:
            running.discard(key)
            counts[key] = counts.get(key, 0) + 1

    q = WorkQueue(process, workers=4)
    queues.append(q)
    q.add("k")
    wait_until(lambda: "k" in running)
    q.add("k")  # while processing: once more afterwards, not in parallel
    q.add("k")
    wait_until(lambda: counts.get("k") == 2)
    time.sleep(0.2)
    assert overlaps == [] and counts["k"] == 2


def test_a_poll_comes_back_after_its_delay(queues: list[WorkQueue]) -> None:
    times: list[float] = []

    def process(key: Hashable) -> float | None:
        times.append(time.monotonic())
        return 0.3 if len(times) < 3 else None

    q = WorkQueue(process, workers=2)
    queues.append(q)
    q.add("svc")
    wait_until(lambda: len(times) == 3)
    time.sleep(0.5)
    assert len(times) == 3, "settled: no more polls"
    assert all(later - earlier >= 0.29 for earlier, later in itertools.pairwise(times))


def test_failures_are_retried_with_a_growing_backoff_then_reset(queues: list[WorkQueue]) -> None:
    attempts: list[float] = []
    errors: list[tuple[Hashable, str, float]] = []

    def process(key: Hashable) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise RuntimeError(f"API server unavailable ({len(attempts)})")

    q = WorkQueue(process, workers=1, backoff_s=(0.1, 0.3),
                  on_error=lambda key, exc, retry: errors.append((key, str(exc), retry)))  # fmt: skip
    queues.append(q)
    q.add("svc")
    wait_until(lambda: len(attempts) == 3)
    assert errors == [("svc", "API server unavailable (1)", 0.1), ("svc", "API server unavailable (2)", 0.3)]
    assert attempts[1] - attempts[0] >= 0.09 and attempts[2] - attempts[1] >= 0.29
    time.sleep(0.4)
    assert len(attempts) == 3, "succeeded: not retried again"


def test_a_later_due_time_does_not_postpone_an_earlier_one(queues: list[WorkQueue]) -> None:
    seen: list[float] = []
    q = WorkQueue(lambda key: seen.append(time.monotonic()), workers=1)  # type: ignore[func-returns-value]
    queues.append(q)
    start = time.monotonic()
    q.add("svc", after_s=0.2)
    q.add("svc", after_s=5)
    wait_until(lambda: len(seen) == 1)
    assert seen[0] - start < 2
