"""What the gateway may route to: the InferenceServices it selects, and their ready pods.

Read from the API server's watches (no per-request lookup): the selected InferenceServices give
each served model name, their pods (the operator's `inferator.dev/inference-service` label) the
addresses. A pod counts once it is Ready, which includes the operator's readiness gate (the
model listed and a warm-up answered), so a request is never sent to a replica still loading.

A model whose service has no ready pod is held (app.py); `scale_up` asks for one replica
through the Deployment's scale subresource (a multi-node service's own, which has no
Deployment) when it has none, which is what KEDA itself would do
on its next poll: the gateway only ever moves 0 -> 1, never down and never above one, so it does
not fight the autoscaler that owns `replicas` from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from inferator.gateway.config import GatewayConfig

log = logging.getLogger("inferator.gateway")

GROUP, VERSION, PLURAL = "inferator.dev", "v1alpha1", "inferenceservices"
SERVICE_LABEL = "inferator.dev/inference-service"
SCALE_UP_EVERY_S = 5.0


@dataclass(frozen=True)
class Route:
    model: str
    service: str
    upstreams: tuple[str, ...]


class Catalog(Protocol):
    def route(self, model: str) -> Route | None: ...
    def models(self) -> list[str]: ...
    async def changed(self, timeout: float) -> None: ...
    async def scale_up(self, route: Route) -> None: ...


class _Notifier:
    """Wakes held requests (on the event loop) when a watch thread sees a change."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._event = loop, asyncio.Event()

    async def changed(self, timeout: float) -> None:
        assert self._event is not None
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def notify(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        assert self._event is not None
        old, self._event = self._event, asyncio.Event()
        old.set()


@dataclass
class StaticCatalog:
    """Fixed addresses per model, from the config's `staticRoutes` (benchmarks, tests without a cluster)."""

    config: GatewayConfig
    notifier: _Notifier = field(default_factory=_Notifier)

    def route(self, model: str) -> Route | None:
        static = self.config.static_routes.get(model)
        if static is None:
            return None
        return Route(model, static.service or model, tuple(static.upstreams))

    def models(self) -> list[str]:
        return sorted(self.config.static_routes)

    async def changed(self, timeout: float) -> None:
        await asyncio.sleep(timeout)

    async def scale_up(self, route: Route) -> None:
        return None


def _k8s() -> Any:
    """The kubernetes client, imported where used (benchmarks and tests without a cluster skip it)."""
    import kubernetes

    return kubernetes


def served_model(service: Mapping[str, Any]) -> str | None:
    """The name clients send as `model`: what the operator recorded, else the spec's pin."""
    status = service.get("status") or {}
    serving = (service.get("spec") or {}).get("serving") or {}
    name = status.get("servedModelName") or serving.get("servedModelName")
    return str(name) if name else None


def requires_own_key(service: Mapping[str, Any]) -> bool:
    """The service asks clients for its own API key (`serving.apiKeySecret`), which a gateway
    does not hold: it is not exposed."""
    return bool(((service.get("spec") or {}).get("serving") or {}).get("apiKeySecret"))


def pod_address(pod: dict[str, Any]) -> str | None:
    """`http://ip:port` of a Ready, not terminating pod, on its container port named http."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletionTimestamp") or not status.get("podIP"):
        return None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    if not ready:
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http":
                return f"http://{status['podIP']}:{port['containerPort']}"
    return None


class ClusterCatalog:
    """Selected InferenceServices and their ready pods, kept by two watches in threads."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.notifier = _Notifier()
        self._lock = threading.Lock()
        self._services: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, tuple[str, str | None]] = {}
        self._routes: dict[str, Route] = {}
        self._scaled: dict[str, float] = {}
        self.synced = threading.Event()
        self._synced_kinds: set[str] = set()

    # -- read side (event loop) -------------------------------------------------------------
    def route(self, model: str) -> Route | None:
        return self._routes.get(model)

    def models(self) -> list[str]:
        return sorted(self._routes)

    async def changed(self, timeout: float) -> None:
        await self.notifier.changed(timeout)

    async def scale_up(self, route: Route) -> None:
        now = time.monotonic()
        if now - self._scaled.get(route.service, -SCALE_UP_EVERY_S) < SCALE_UP_EVERY_S:
            return
        self._scaled[route.service] = now
        await asyncio.to_thread(self._scale_up, route.service)

    def _scale_up(self, name: str) -> None:
        kubernetes = _k8s()

        apps = kubernetes.client.AppsV1Api()
        custom = kubernetes.client.CustomObjectsApi()
        namespace = self.config.namespace
        try:
            try:
                replicas = apps.read_namespaced_deployment_scale(name, namespace).spec.replicas or 0
                grow: Any = partial(apps.patch_namespaced_deployment_scale, name, namespace)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise
                # No Deployment: a multi-node service, whose groups the autoscaler scales through
                # the InferenceService's own scale subresource.
                scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name)
                replicas = (scale.get("spec") or {}).get("replicas") or 0
                grow = partial(
                    custom.patch_namespaced_custom_object_scale, GROUP, VERSION, namespace, PLURAL, name
                )
            if replicas == 0:
                grow({"spec": {"replicas": 1}})
                log.info("scaled %s/%s from zero for a held request", namespace, name)
        except kubernetes.client.ApiException as error:
            log.warning("could not scale %s/%s up: %s %s", namespace, name, error.status, error.reason)

    # -- write side (watch threads) -----------------------------------------------------------
    def start(self) -> None:
        kubernetes = _k8s()

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.config.selector.items()))
        for kind, target in (("services", self._watch_services), ("pods", self._watch_pods)):
            threading.Thread(target=self._forever, args=(kind, target, selector), daemon=True).start()

    def _forever(self, kind: str, target: Any, selector: str) -> None:
        while True:
            try:
                target(selector)
            except Exception as error:
                log.warning("watch of %s ended (%s); restarting in 2 s", kind, type(error).__name__)
                time.sleep(2)

    def _watch_services(self, selector: str) -> None:
        kubernetes = _k8s()

        api = kubernetes.client.CustomObjectsApi()
        listing = api.list_namespaced_custom_object(
            GROUP, VERSION, self.config.namespace, PLURAL, label_selector=selector
        )
        with self._lock:
            self._services = {o["metadata"]["name"]: o for o in listing["items"]}
        self._rebuild("services")
        version = listing["metadata"]["resourceVersion"]
        stream = kubernetes.watch.Watch().stream(
            api.list_namespaced_custom_object, GROUP, VERSION, self.config.namespace, PLURAL,
            label_selector=selector, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=300,
        )  # fmt: skip
        for event in stream:
            if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK (its object has no name), ERROR (the stream ends after it)
            obj = event["object"]
            name = obj["metadata"]["name"]
            with self._lock:
                if event["type"] == "DELETED":
                    self._services.pop(name, None)
                else:
                    self._services[name] = obj
            self._rebuild("services")

    def _watch_pods(self, _selector: str) -> None:
        kubernetes = _k8s()

        core = kubernetes.client.CoreV1Api()
        client = kubernetes.client.ApiClient()
        listing = core.list_namespaced_pod(self.config.namespace, label_selector=SERVICE_LABEL)
        pods = {}
        for pod in listing.items:
            obj = client.sanitize_for_serialization(pod)
            pods[obj["metadata"]["name"]] = (obj["metadata"]["labels"][SERVICE_LABEL], pod_address(obj))
        with self._lock:
            self._pods = pods
        self._rebuild("pods")
        stream = kubernetes.watch.Watch().stream(
            core.list_namespaced_pod, self.config.namespace, label_selector=SERVICE_LABEL,
            resource_version=listing.metadata.resource_version, allow_watch_bookmarks=True, timeout_seconds=300,
        )  # fmt: skip
        for event in stream:
            if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            obj = client.sanitize_for_serialization(event["object"])
            name = obj["metadata"]["name"]
            with self._lock:
                if event["type"] == "DELETED":
                    self._pods.pop(name, None)
                else:
                    self._pods[name] = (obj["metadata"]["labels"].get(SERVICE_LABEL, ""), pod_address(obj))
            self._rebuild("pods")

    def _rebuild(self, kind: str) -> None:
        with self._lock:
            addresses: dict[str, list[str]] = {}
            for owner, address in self._pods.values():
                if address:
                    addresses.setdefault(owner, []).append(address)
            routes = {}
            for name, service in self._services.items():
                model = served_model(service)
                if model is None or requires_own_key(service):
                    continue
                routes[model] = Route(model, name, tuple(sorted(addresses.get(name, []))))
            self._routes = routes
            self._synced_kinds.add(kind)
            if self._synced_kinds == {"services", "pods"}:
                self.synced.set()
        self.notifier.notify()
