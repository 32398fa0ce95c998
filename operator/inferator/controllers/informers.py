"""What the operator's watches have seen, read instead of the API server.

A reconcile needs its service's ModelCache, the nodes, its children (to compare before
applying, and to find optional ones left over) and, while a rollout is under way, its pods.
Read from the API server, that was two dozen GETs per service in a burst of 1,000 and most of
the API server's and the operator's CPU. kopf indices keep those objects from the watches the
operator runs anyway, and kopf starts no handler before every index has its initial listing,
so a reconcile after a restart sees every existing child (an absent entry means absent).

Values are compact: the fields the operator reads, no managedFields, and children and pods
as JSON text (a few KiB each, against tens of KiB as nested dicts), parsed on read.

A watch lags our own writes by the time its event takes to come back. Server-side applies
and status patches answer with the object as written, and that answer is kept here until
the watch delivers the same or a newer resourceVersion (or a minute passes), so a second
reconcile in that window does not apply a child again or judge from an old status. A cache
that is behind can only cost an idempotent apply, never a wrong one: every write is a
server-side apply of the whole rendered object with our field manager.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from inferator.api import API_GROUP, API_VERSION
from inferator.render.inferenceservice import PROFILE_ANNOTATION, SERVICE_LABEL, WARMUP_ANNOTATION

# Every kind an InferenceService renders: (group, version, plural, kind, optional). The
# required children always exist; an optional one is deleted when the spec no longer asks for it.
CHILD_RESOURCES = (
    # Optional: a multi-node profile runs as StatefulSets (render/groups.py) instead.
    ("apps", "v1", "deployments", "Deployment", True),
    # Multi-node groups, named per group (never the service's name): listed with View.owned.
    ("apps", "v1", "statefulsets", "StatefulSet", True),
    # Multi-node replicas where LeaderWorkerSet is installed: one per service, the service's name.
    ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet", True),
    ("", "v1", "services", "Service", False),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", False),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    ("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", True),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True),
    # Validation Jobs: named per run (never the service's name), so never "left over" here.
    ("batch", "v1", "jobs", "Job", True),
)
_OWN_WRITE_TTL_S = 60.0
# The annotations of a serving pod the operator reads (the rest are dropped from the index).
POD_ANNOTATIONS = (WARMUP_ANNOTATION, PROFILE_ANNOTATION)

T = TypeVar("T")
ChildKey = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def resource_version(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number: etcd's revision, which every Kubernetes API server uses.
    Opaque by contract; were it ever not a number, -1 makes the watch's copy win."""
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else -1


def compact(obj: Mapping[str, Any], annotations: tuple[str, ...] = ()) -> dict[str, Any]:
    """The object without managedFields and with only the named annotations (kopf's
    last-handled-configuration alone is as large as the spec)."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "generation", "resourceVersion",
                                 "labels", "ownerReferences", "deletionTimestamp", "creationTimestamp")
            if meta.get(k) is not None}  # fmt: skip
    wanted = {k: v for k, v in (meta.get("annotations") or {}).items() if k in annotations}
    if wanted:
        kept["annotations"] = wanted
    out: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": kept}
    for part in ("spec", "status"):
        if obj.get(part) is not None:
            out[part] = obj[part]
    return out


def _text(obj: Mapping[str, Any], annotations: tuple[str, ...] = ()) -> str:
    return json.dumps(compact(obj, annotations), separators=(",", ":"))


def compact_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """What selection reads of a node: labels, taints, cordon, allocatable."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {k: spec[k] for k in ("unschedulable", "taints") if spec.get(k)},
        "status": {"allocatable": dict(status.get("allocatable") or {})},
    }


class _OwnWrites:
    """Objects as our own writes returned them, until the watch catches up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[ChildKey, tuple[int, float, str]] = {}

    def remember(self, key: ChildKey, obj: Mapping[str, Any], text: str) -> None:
        with self._lock:
            self._items[key] = (resource_version(obj), time.monotonic(), text)

    def caught_up(self, key: ChildKey, resource_version: int) -> None:
        """The watch delivered this version: our copy is no newer, drop it."""
        with self._lock:
            held = self._items.get(key)
            if held is not None and held[0] <= resource_version:
                del self._items[key]

    def forget(self, key: ChildKey) -> None:
        with self._lock:
            self._items.pop(key, None)

    def newer_than(self, key: ChildKey, resource_version: int) -> str | None:
        with self._lock:
            held = self._items.get(key)
            if held is None:
                return None
            if time.monotonic() - held[1] > _OWN_WRITE_TTL_S:
                del self._items[key]  # the watch never confirmed it: trust the watch again
                return None
            return held[2] if held[0] > resource_version else None

    def __len__(self) -> int:
        return len(self._items)


OWN_WRITES = _OwnWrites()


def _key(obj: Mapping[str, Any]) -> ChildKey:
    meta = obj.get("metadata") or {}
    return (str(obj.get("apiVersion")), str(obj.get("kind")), meta.get("namespace") or "", meta["name"])


def remember_write(obj: Mapping[str, Any] | None) -> None:
    """Keep the answer of one of our writes (server-side apply, status patch) until the watch has it."""
    if obj and (obj.get("metadata") or {}).get("name"):
        OWN_WRITES.remember(_key(obj), obj, _text(obj, POD_ANNOTATIONS))


def forget(api_version: str, kind: str, namespace: str, name: str) -> None:
    """The object was deleted: nothing we wrote earlier may stand in for it."""
    OWN_WRITES.forget((api_version, kind, namespace, name))


# -- the indices: kopf calls these on every watch event, in its event loop (so: async, cheap) --


def _indexed(obj: Mapping[str, Any], annotations: tuple[str, ...] = ()) -> str:
    """The compact text of a watched object; our own copy of it, if no newer, is dropped."""
    OWN_WRITES.caught_up(_key(obj), resource_version(obj))
    return _text(obj, annotations)


async def inferator_children(body: kopf.Body, **_: Any) -> dict[ChildKey, str]:
    """Children by (apiVersion, kind, namespace, name)."""
    return {_key(body): _indexed(body)}


# One index fed by the watch of every child kind (one decorator per kind, one id).
for _group, _version, _plural, _kind, _optional in CHILD_RESOURCES:
    kopf.index(_group, _version, _plural, id="inferator_children", labels={SERVICE_LABEL: kopf.PRESENT})(
        inferator_children
    )


@kopf.index("", "v1", "pods", labels={SERVICE_LABEL: kopf.PRESENT})
async def inferator_pods(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[tuple[str, str], str]:
    """Serving pods by (namespace, service): the readiness gate and runtime refusals read them."""
    return {(body["metadata"].get("namespace") or "", labels[SERVICE_LABEL]): _indexed(body, POD_ANNOTATIONS)}


@kopf.index("", "v1", "nodes")
async def inferator_nodes(body: kopf.Body, **_: Any) -> dict[None, dict[str, Any]]:
    """All nodes under one key: selection reads them all."""
    return {None: compact_node(body)}


@kopf.index(API_GROUP, API_VERSION, "modelcaches")
async def inferator_modelcaches(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    return {(body["metadata"].get("namespace") or "", body["metadata"]["name"]): _text(body)}


@kopf.index(API_GROUP, API_VERSION, "inferenceservices")
async def inferator_services(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    return {(body["metadata"].get("namespace") or "", body["metadata"]["name"]): _indexed(body)}


@kopf.index(API_GROUP, API_VERSION, "inferenceservices")
async def inferator_services_by_cache(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    """Service names by (namespace, ModelCache name): whom a cache's change concerns."""
    cache = ((body.get("spec") or {}).get("modelCacheRef") or {}).get("name") or ""
    return {(body["metadata"].get("namespace") or "", cache): body["metadata"]["name"]}


INDEX_NAMES = ("inferator_children", "inferator_pods", "inferator_nodes", "inferator_modelcaches",
               "inferator_services", "inferator_services_by_cache")  # fmt: skip


def _first(store: Iterable[Any]) -> Any:
    return next(iter(list(store)), None)


@dataclass(frozen=True)
class View:
    """The indices as one handler call sees them (kopf passes them as keyword arguments)."""

    children: Mapping[Any, Any]
    pod_index: Mapping[Any, Any]
    nodes_index: Mapping[Any, Any]
    modelcaches: Mapping[Any, Any]
    services: Mapping[Any, Any]
    services_by_cache: Mapping[Any, Any]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> View:
        return cls(*(kwargs[name] for name in INDEX_NAMES))

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """A child (or an InferenceService) as last written by us or seen by the watch, whichever is newer."""
        key = (api_version, kind, namespace, name)
        if kind == "InferenceService":
            text = _first(self.services.get((namespace, name), ()))
        else:
            text = _first(self.children.get(key, ()))
        seen = json.loads(text) if text else None
        ours = OWN_WRITES.newer_than(key, resource_version(seen) if seen else -1)
        return json.loads(ours) if ours else seen

    def owned(self, api_version: str, kind: str, namespace: str, service: str) -> list[dict[str, Any]]:
        """The children of one kind a service owns under names of their own (a multi-node
        replica's StatefulSets): found by label in the index, sorted by name."""
        found = []
        for key in list(self.children.keys()):
            if key[0] == api_version and key[1] == kind and key[2] == namespace:
                obj = self.get(api_version, kind, key[3], namespace)
                if obj and ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL) == service:
                    found.append(obj)
        return sorted(found, key=lambda o: o["metadata"]["name"])

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{API_GROUP}/{API_VERSION}", "InferenceService", name, namespace)

    def services_in(self, namespace: str) -> list[dict[str, Any]]:
        """Every InferenceService of a namespace (an InferenceGateway reports what it selects)."""
        names = [name for ns, name in list(self.services.keys()) if ns == namespace]
        return [svc for name in names if (svc := self.service(namespace, name)) is not None]

    def service_names_on_cache(self, namespace: str, cache: str) -> list[str]:
        return sorted(set(self.services_by_cache.get((namespace, cache), ())))

    def model_cache(self, namespace: str, name: str) -> dict[str, Any] | None:
        text = _first(self.modelcaches.get((namespace, name), ()))
        return json.loads(text) if text else None

    def nodes(self) -> list[dict[str, Any]]:
        return sorted(self.nodes_index.get(None, ()), key=lambda n: n["metadata"]["name"])

    def pods(self, namespace: str, service: str) -> list[dict[str, Any]]:
        """The service's pods, each with the readiness-gate condition we last wrote to it."""
        found = []
        for text in list(self.pod_index.get((namespace, service), ())):
            pod = json.loads(text)
            key = ("v1", "Pod", namespace, pod["metadata"]["name"])
            ours = OWN_WRITES.newer_than(key, resource_version(pod))
            found.append(json.loads(ours) if ours else pod)
        return sorted(found, key=lambda p: p["metadata"]["name"])


# The indices are the same objects for the operator's whole run, and kopf hands them only to
# handlers: the first handler call binds them for the work queue's threads, together with
# kopf's context (its event poster lives in context variables).
_bound: dict[str, Any] = {}


def bind(kwargs: Mapping[str, Any]) -> View:
    """The View of a handler call, kept for the work queue's threads."""
    if "view" not in _bound:
        _bound["context"] = contextvars.copy_context()
        _bound["view"] = View.of(kwargs)
    view: View = _bound["view"]
    return view


def current() -> View:
    """The bound View (a handler has run: the queue is fed only by handlers)."""
    view: View = _bound["view"]
    return view


def in_handler_context(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn` in a copy of a kopf handler's context, so kopf.event works from any thread."""
    context: contextvars.Context | None = _bound.get("context")
    return context.copy().run(fn, *args) if context is not None else fn(*args)
