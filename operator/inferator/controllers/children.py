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


def ensure(obj: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Server-side apply `obj` unless `live` already matches. Returns whether a write was made."""
    if (
        live is not None
        and is_subset(obj.get("spec"), live.get("spec"))
        and is_subset(obj["metadata"].get("labels", {}), live["metadata"].get("labels", {}))
        and _same_owner(obj, live)
    ):
        return False
    kube.apply(obj)
    return True


def _same_owner(obj: dict[str, Any], live: dict[str, Any]) -> bool:
    wanted = {o["uid"] for o in obj["metadata"].get("ownerReferences", [])}
    have = {o.get("uid") for o in live["metadata"].get("ownerReferences") or []}
    return wanted <= have
