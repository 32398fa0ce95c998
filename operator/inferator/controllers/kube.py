"""The few Kubernetes calls the handlers make, in one place (sync client; kopf runs sync handlers in threads)."""

from __future__ import annotations

import threading
import time
from functools import cache
from typing import Any

import kubernetes
from kubernetes.client import ApiException

FIELD_MANAGER = "inferator"


@cache
def _api_client() -> Any:
    # kopf has already logged in; this reuses the same kubeconfig or in-cluster credentials.
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    from inferator import __version__

    client = kubernetes.client.ApiClient()
    client.user_agent = f"inferator/{__version__}"  # tells our requests apart in audit logs
    return client


@cache
def dynamic() -> Any:
    from kubernetes.dynamic import DynamicClient

    return DynamicClient(_api_client())  # type: ignore[no-untyped-call]


# The dynamic client's discovery cache is not thread-safe, and kopf runs sync handlers in
# threads: concurrent lookups that refresh it can corrupt it (KeyError: 'apis').
_discovery_lock = threading.Lock()
_GROUP_VERSION_TTL_S = 60.0
_group_versions: dict[str, tuple[float, frozenset[str]]] = {}


def resource(api_version: str, kind: str) -> Any:
    with _discovery_lock:
        return dynamic().resources.get(api_version=api_version, kind=kind)


def served_kinds(api_version: str) -> frozenset[str]:
    """Kinds the API server serves in a group version (empty if none), cached for a minute.

    One GET of the group version's discovery document: asking the dynamic client for a kind
    that does not exist would invalidate its whole discovery cache on every call.
    """
    now = time.monotonic()
    cached = _group_versions.get(api_version)
    if cached and now - cached[0] < _GROUP_VERSION_TTL_S:
        return cached[1]
    group, _, version = api_version.rpartition("/")
    try:
        if group:
            listing = kubernetes.client.CustomObjectsApi(_api_client()).get_api_resources(group, version)
        else:
            listing = kubernetes.client.CoreV1Api(_api_client()).get_api_resources()
        kinds = frozenset(r.kind for r in listing.resources or [] if "/" not in r.name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        kinds = frozenset()
    _group_versions[api_version] = (now, kinds)
    return kinds


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply with one field manager: idempotent, and drift in our fields is undone."""
    api = resource(obj["apiVersion"], obj["kind"])
    result = api.server_side_apply(
        body=obj,
        name=obj["metadata"]["name"],
        namespace=obj["metadata"].get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
    )
    return dict(result.to_dict())


def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return dict(resource(api_version, kind).get(name=name, namespace=namespace).to_dict())
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def create(obj: dict[str, Any]) -> None:
    """Create if absent. A concurrent handler (kopf runs timers beside change handlers) may win the race."""
    api = resource(obj["apiVersion"], obj["kind"])
    try:
        api.create(body=obj, namespace=obj["metadata"].get("namespace"))
    except ApiException as exc:
        if exc.status != 409:
            raise


def delete(api_version: str, kind: str, name: str, namespace: str) -> None:
    try:
        resource(api_version, kind).delete(name=name, namespace=namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


def list_objects(api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    result = resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
    return [dict(item.to_dict()) for item in result.items]


def patch_status(api_version: str, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource (only the keys given)."""
    resource(api_version, kind).status.patch(
        name=name, namespace=namespace, body={"status": status}, content_type="application/merge-patch+json"
    )


def patch_pod_status_conditions(name: str, namespace: str, conditions: list[dict[str, Any]]) -> None:
    """Strategic merge on pod conditions: merged by type, so the kubelet's own conditions stay."""
    resource("v1", "Pod").status.patch(
        name=name,
        namespace=namespace,
        body={"status": {"conditions": conditions}},
        content_type="application/strategic-merge-patch+json",
    )
