"""Applying rendered children without writing at rest: compare first, apply only what differs."""

from __future__ import annotations

from typing import Any

from inferator.controllers import kube


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field we set has the value we set (the API server may add more)."""
    if isinstance(desired, dict):
        # The API server omits empty collections (`egress: []` reads back as absent): treat
        # an empty desired value as matching a missing one, or we would re-apply forever.
        return isinstance(live, dict) and all(
            is_subset(v, live[k]) if k in live else v in ([], {}, None) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(is_subset, desired, live))
    if (isinstance(desired, (int, float)) and isinstance(live, str)) or (
        isinstance(desired, str) and isinstance(live, (int, float))
    ):
        return str(desired) == str(live)
    return bool(desired == live)


def ensure(obj: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any] | None:
    """Server-side apply `obj` unless `live` already matches. Returns the object as written, or
    None when no write was needed."""
    if (
        live is not None
        and is_subset(obj.get("spec"), live.get("spec"))
        and is_subset(obj["metadata"].get("labels", {}), live["metadata"].get("labels", {}))
        and _same_owner(obj, live)
    ):
        return None
    return kube.apply(obj)


def _same_owner(obj: dict[str, Any], live: dict[str, Any]) -> bool:
    wanted = {o["uid"] for o in obj["metadata"].get("ownerReferences", [])}
    have = {o.get("uid") for o in live["metadata"].get("ownerReferences") or []}
    return wanted <= have


def changed_by_others(event_type: str | None, child: dict[str, Any]) -> bool:
    """Whether a child's watch event needs its owner reconciled whatever the owner's status.

    Every Deployment goes through several status updates on its way up, and a burst of
    services means thousands of them: reconciling the owner on each costs a dozen API calls for
    nothing. True when the child is deleted, was never written by us, or was written by a
    manager other than us or a status writer at or after our last apply (ties count as
    foreign: an edit in the same second as our apply is never missed). Needs no read of the
    owner; for a Deployment, `deployment_differs` decides the rest."""
    if event_type == "DELETED":
        return True
    entries = child.get("metadata", {}).get("managedFields") or []
    ours = [e.get("time") or "" for e in entries if e.get("manager") == kube.FIELD_MANAGER]
    if not ours:
        return True
    foreign = [
        e.get("time") or ""
        for e in entries
        if e.get("manager") != kube.FIELD_MANAGER and e.get("subresource") != "status"
    ]
    return any(t >= max(ours) for t in foreign)


def deployment_differs(deployment: dict[str, Any], owner_status: dict[str, Any]) -> bool:
    """The Deployment's replica counts or availability are not what the owner reports."""
    status = deployment.get("status") or {}
    available: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Available"), {}
    )
    owner_available: dict[str, Any] = next(
        (c for c in owner_status.get("conditions") or [] if c.get("type") == "Available"), {}
    )
    return (
        int(status.get("replicas") or 0) != owner_status.get("replicas")
        or int(status.get("readyReplicas") or 0) != owner_status.get("readyReplicas")
        or (available.get("status") or "False") != (owner_available.get("status") or "False")
    )
