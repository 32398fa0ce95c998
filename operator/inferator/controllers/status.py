"""Status writes shared by the controllers: only what changed, never at rest."""

from __future__ import annotations

import datetime
from typing import Any

import kopf


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def changed_fields(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The top-level status fields of `desired` whose value differs from `current`."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


def with_removals(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` as a JSON merge patch of `current`: keys of a changed object that the new value
    no longer has are sent as null, or the merge would keep them (a finished run's old message)."""

    def merged(old: Any, new: Any) -> Any:
        if not isinstance(old, dict) or not isinstance(new, dict):
            return new
        out = {k: merged(old.get(k), v) for k, v in new.items()}
        out |= {k: None for k in old if k not in new}
        return out

    return {k: merged(current.get(k), v) for k, v in changes.items()}


def patch_status_if_changed(patch: kopf.Patch, current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Put into `patch.status` only the top-level status fields whose value differs.

    kopf sends nothing when the patch is empty, so an unchanged object costs no API write.
    """
    changed = changed_fields(current, desired)
    for key, value in changed.items():
        patch.status[key] = value
    return bool(changed)
