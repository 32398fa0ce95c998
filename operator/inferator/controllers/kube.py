"""The few Kubernetes calls the handlers make, in one place (sync client; kopf runs sync handlers in threads).

Requests go through the kubernetes client's ApiClient (its credentials, TLS and retries) but
answers stay plain JSON: the typed and dynamic clients turn every answer into model objects
and back into dicts, and for an operator that reads the same few objects thousands of times
in a burst that conversion was most of its CPU. Errors raise ApiException as the typed
client's do.
"""

from __future__ import annotations

import json
import threading
import time
from functools import cache
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client import ApiException

from inferator.controllers.status import with_removals

FIELD_MANAGER = "inferator"
_GROUP_VERSION_TTL_S = 60.0
_group_versions: dict[str, tuple[float, frozenset[str]]] = {}
# (apiVersion, kind) -> (plural, namespaced), learnt from discovery; a kind's name never changes.
_resources: dict[tuple[str, str], tuple[str, bool]] = {}
_resources_lock = threading.Lock()


@cache
def _api_client() -> Any:
    # kopf has already logged in; this reuses the same kubeconfig or in-cluster credentials.
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    from inferator import __version__

    configuration = kubernetes.client.Configuration.get_default_copy()
    # One connection per worker thread: with urllib3's default of 10, a burst handled by more
    # threads discards connections and pays a TLS handshake per request.
    configuration.connection_pool_maxsize = 32
    client = kubernetes.client.ApiClient(configuration)
    client.user_agent = f"inferator/{__version__}"  # tells our requests apart in audit logs
    return client


def _discover(api_version: str) -> frozenset[str]:
    """Kinds in the group version's discovery document (one GET); remembers their plurals."""
    group, _, version = api_version.rpartition("/")
    try:
        if group:
            listing = kubernetes.client.CustomObjectsApi(_api_client()).get_api_resources(group, version)
        else:
            listing = kubernetes.client.CoreV1Api(_api_client()).get_api_resources()
    except ApiException as exc:
        if exc.status != 404:
            raise
        return frozenset()
    resources = [r for r in listing.resources or [] if "/" not in r.name]
    with _resources_lock:
        for r in resources:
            _resources[(api_version, r.kind)] = (r.name, bool(r.namespaced))
    return frozenset(r.kind for r in resources)


def served_kinds(api_version: str) -> frozenset[str]:
    """Kinds the API server serves in a group version (empty if none), cached for a minute."""
    now = time.monotonic()
    cached = _group_versions.get(api_version)
    if cached and now - cached[0] < _GROUP_VERSION_TTL_S:
        return cached[1]
    kinds = _discover(api_version)
    _group_versions[api_version] = (now, kinds)
    return kinds


def crd_installed(api_version: str, kind: str) -> bool:
    """Whether the API server serves `kind` in `api_version` (discovery, cached for a minute)."""
    return kind in served_kinds(api_version)


def forget_served_kinds(api_version: str) -> None:
    """Drop the cached discovery of a group version (its CRD was just installed or removed)."""
    _group_versions.pop(api_version, None)


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    if (api_version, kind) not in _resources:
        _discover(api_version)
    try:
        plural, namespaced = _resources[(api_version, kind)]
    except KeyError:
        raise LookupError(f"the API server does not serve {kind} in {api_version}") from None
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    return path + (f"/{sub}" if sub else "")


def _request(
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    content_type: str | None = None,
) -> Any:
    """One REST call with the client's credentials; the answer as parsed JSON."""
    client = _api_client()
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    method, url, headers, body, _ = client.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(method, url, header_params=headers, body=body)
    data = response.read()
    text = data.decode("utf-8") if data else ""
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=text)
    return json.loads(text) if text else None


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
    path = _path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
    result: dict[str, Any] = _request(
        "PATCH",
        path,
        query={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=obj,
        content_type="application/apply-patch+yaml",
    )
    return result


def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = _request("GET", _path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def create(obj: dict[str, Any]) -> None:
    """Create if absent. A concurrent handler (kopf runs timers beside change handlers) may win the race."""
    try:
        _request("POST", _path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace")), body=obj)
    except ApiException as exc:
        if exc.status != 409:
            raise


def delete(api_version: str, kind: str, name: str, namespace: str) -> None:
    try:
        _request(
            "DELETE", _path(api_version, kind, namespace, name), body={"propagationPolicy": "Background"}
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def list_objects(api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    query = {"labelSelector": label_selector} if label_selector else None
    items: list[dict[str, Any]] = _request("GET", _path(api_version, kind, namespace), query=query)["items"]
    return items


def patch(api_version: str, kind: str, name: str, namespace: str, body: dict[str, Any]) -> None:
    """Merge-patch an object (only the keys given)."""
    _request("PATCH", _path(api_version, kind, namespace, name), body=body,
             content_type="application/merge-patch+json")  # fmt: skip


def patch_status(
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    status: dict[str, Any],
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge-patch the status subresource (only the keys given); the object as written. With
    `current` (the status as read), keys a changed object no longer has are sent as null, or
    the merge would keep them."""
    written: dict[str, Any] = _request(
        "PATCH",
        _path(api_version, kind, namespace, name, "status"),
        body={"status": status if current is None else with_removals(current, status)},
        content_type="application/merge-patch+json",
    )
    return written


def patch_pod_status_conditions(
    name: str, namespace: str, conditions: list[dict[str, Any]]
) -> dict[str, Any]:
    """Strategic merge on pod conditions: merged by type, so the kubelet's own conditions stay."""
    written: dict[str, Any] = _request(
        "PATCH",
        _path("v1", "Pod", namespace, name, "status"),
        body={"status": {"conditions": conditions}},
        content_type="application/strategic-merge-patch+json",
    )
    return written
