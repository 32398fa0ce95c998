"""The watch-fed view a reconcile reads: compact copies, and our own writes until the watch has them.

The indices are kopf's (exercised against a real API server in tests/cluster); here the View
is given plain mappings shaped like kopf's (key -> iterable of values), and the index
functions are called as kopf calls them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from inferator.controllers import informers
from inferator.render.inferenceservice import READINESS_GATE, SERVICE_LABEL


@pytest.fixture(autouse=True)
def _fresh_own_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informers, "OWN_WRITES", informers._OwnWrites())


def deployment(rv: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "chat",
            "namespace": "team",
            "resourceVersion": rv,
            "labels": {SERVICE_LABEL: "chat"},
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "managedFields": [{"manager": "inferator", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": 0},
    }


def view(children: dict[Any, list[str]] | None = None, **indices: Any) -> informers.View:
    kwargs = {name: {} for name in informers.INDEX_NAMES}
    kwargs["inferator_children"] = children or {}
    kwargs.update(indices)
    return informers.View.of(kwargs)


def index(fn: Any, body: dict[str, Any], **kwargs: Any) -> dict[Any, Any]:
    result: dict[Any, Any] = asyncio.run(fn(body=body, **kwargs))
    return result


KEY = ("apps/v1", "Deployment", "team", "chat")


def test_compact_drops_managed_fields_and_unnamed_annotations() -> None:
    kept = informers.compact(deployment("5"))
    assert "managedFields" not in kept["metadata"] and "annotations" not in kept["metadata"]
    assert kept["spec"] == {"replicas": 1} and kept["metadata"]["resourceVersion"] == "5"
    named = informers.compact(deployment("5"), ("deployment.kubernetes.io/revision",))
    assert named["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "1"}


def test_child_index_keys_by_kind_namespace_and_name() -> None:
    entry = index(informers.inferator_children, deployment("5"))
    assert list(entry) == [KEY]
    assert json.loads(entry[KEY])["spec"] == {"replicas": 1}


def test_absent_from_the_watch_and_never_written_reads_as_absent() -> None:
    assert view().get("apps/v1", "Deployment", "chat", "team") is None


def test_our_write_stands_in_until_the_watch_delivers_it() -> None:
    # Applied (answer at resourceVersion 7); the watch has only version 5 so far.
    informers.remember_write(deployment("7", replicas=2))
    watched = index(informers.inferator_children, deployment("5"))
    v = view({k: [t] for k, t in watched.items()})
    assert v.get("apps/v1", "Deployment", "chat", "team")["spec"]["replicas"] == 2  # type: ignore[index]
    # The watch catches up (version 7, then a newer status update): its copy wins and ours is dropped.
    for rv in ("7", "9"):
        watched = index(informers.inferator_children, deployment(rv, replicas=2))
        v = view({k: [t] for k, t in watched.items()})
        assert v.get("apps/v1", "Deployment", "chat", "team")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    assert len(informers.OWN_WRITES) == 0


def test_a_write_before_the_first_event_is_seen() -> None:
    informers.remember_write(deployment("7"))
    assert view().get("apps/v1", "Deployment", "chat", "team")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]


def test_a_deleted_child_is_not_kept_alive_by_our_earlier_write() -> None:
    informers.remember_write(deployment("7"))
    informers.forget(*KEY)
    assert view().get("apps/v1", "Deployment", "chat", "team") is None


def test_an_unconfirmed_write_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(informers.time, "monotonic", lambda: now[0])
    informers.remember_write(deployment("7"))
    now[0] += informers._OWN_WRITE_TTL_S + 1
    assert view().get("apps/v1", "Deployment", "chat", "team") is None


def test_pods_carry_the_gate_condition_we_wrote() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "chat-abc", "namespace": "team", "resourceVersion": "3",
                     "labels": {SERVICE_LABEL: "chat"},
                     "annotations": {"inferator.dev/warmup": "in-pod", "other": "x"}},
        "status": {"conditions": [{"type": "ContainersReady", "status": "True"}]},
    }  # fmt: skip
    indexed = index(informers.inferator_pods, pod, labels=pod["metadata"]["labels"])
    assert list(indexed) == [("team", "chat")]
    assert json.loads(indexed[("team", "chat")])["metadata"]["annotations"] == {
        "inferator.dev/warmup": "in-pod"
    }
    gated = json.loads(json.dumps(pod))
    gated["metadata"]["resourceVersion"] = "4"
    gated["status"]["conditions"].append({"type": READINESS_GATE, "status": "True"})
    informers.remember_write(gated)
    pods = view(inferator_pods={k: [v] for k, v in indexed.items()}).pods("team", "chat")
    assert [c["type"] for c in pods[0]["status"]["conditions"]] == ["ContainersReady", READINESS_GATE]
    assert pods[0]["metadata"]["annotations"] == {"inferator.dev/warmup": "in-pod"}


def test_services_by_cache_and_nodes() -> None:
    services: dict[Any, list[str]] = {}
    by_cache: dict[Any, list[str]] = {}
    for name, cache in (("a", "llama"), ("b", "qwen"), ("c", "llama")):
        body = {"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": name, "namespace": "team", "resourceVersion": "1",
                             "annotations": {"inferator.dev/last-handled-configuration": "{...}"}},
                "spec": {"modelCacheRef": {"name": cache}}}  # fmt: skip
        for k, v in index(informers.inferator_services, body).items():
            services.setdefault(k, []).append(v)
        for k, v in index(informers.inferator_services_by_cache, body).items():
            by_cache.setdefault(k, []).append(v)
    v = view(inferator_services=services, inferator_services_by_cache=by_cache)
    assert v.service_names_on_cache("team", "llama") == ["a", "c"]
    assert sorted(svc["metadata"]["name"] for svc in v.services_in("team")) == ["a", "b", "c"]
    assert v.services_in("elsewhere") == []
    assert "annotations" not in v.service("team", "a")["metadata"]  # type: ignore[index] # kopf's diff base is not kept
    node = {"metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                         "managedFields": [{}]},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}], "podCIDR": "10.0.0.0/24"},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "images": [{"names": ["big"]}]}}  # fmt: skip
    nodes = view(inferator_nodes={None: list(index(informers.inferator_nodes, node).values())}).nodes()
    assert nodes == [{"metadata": {"name": "gpu-1", "labels": node["metadata"]["labels"]},
                      "spec": {"taints": node["spec"]["taints"]},
                      "status": {"allocatable": {"nvidia.com/gpu": "8"}}}]  # fmt: skip
