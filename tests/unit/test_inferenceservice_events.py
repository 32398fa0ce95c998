"""Which watch events of an InferenceService queue a reconcile (the handler kopf calls on each)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inferator.controllers import inferenceservice as controller
from inferator.controllers import informers
from inferator.controllers.workqueue import RENDER


class Recorder:
    def __init__(self) -> None:
        self.added: list[tuple[Any, int]] = []

    def add(self, key: Any, after_s: float = 0.0, priority: int = 1) -> None:
        self.added.append((key, priority))


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(controller, "QUEUE", recorder)
    monkeypatch.setattr(controller, "_RESUMED", set())
    return recorder


def event(type_: str | None, generation: int, observed: int | None, uid: str = "u1") -> None:
    indices = {name: {} for name in informers.INDEX_NAMES}
    status = {"observedGeneration": observed} if observed is not None else {}
    asyncio.run(controller.service_changed(type=type_, name="chat", namespace="team",
                                           meta={"generation": generation, "uid": uid}, status=status,
                                           **indices))  # fmt: skip


def test_a_new_generation_is_queued_first_and_status_updates_are_not(queue: Recorder) -> None:
    event("ADDED", 1, None)
    event("MODIFIED", 1, 1)  # our own status write coming back
    event("MODIFIED", 2, 1)  # a spec change
    assert queue.added == [(("team", "chat"), RENDER), (("team", "chat"), RENDER)]


def test_the_first_listing_resumes_a_settled_service_and_a_relisting_does_not(queue: Recorder) -> None:
    event(None, 3, 3)  # found at start, settled: level-based, so looked at once
    event(None, 3, 3)  # kopf lists again after a watch restart (410 Gone)
    assert queue.added == [(("team", "chat"), RENDER)]
    event(None, 4, 3)  # a spec change while the watch was down: queued
    assert len(queue.added) == 2


def test_a_deleted_service_is_not_kept_alive_by_our_last_status_write(queue: Recorder) -> None:
    informers.remember_write({"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceService",
                              "metadata": {"name": "chat", "namespace": "team", "resourceVersion": "9"}})  # fmt: skip
    view = informers.View.of({name: {} for name in informers.INDEX_NAMES})
    assert view.service("team", "chat") is not None
    event("DELETED", 1, 1)
    assert view.service("team", "chat") is None


def test_a_service_deleted_and_created_again_under_the_same_name_is_new(queue: Recorder) -> None:
    event(None, 1, 1)
    event("DELETED", 1, 1)
    event(None, 1, 1, uid="u2")
    assert len(queue.added) == 2
