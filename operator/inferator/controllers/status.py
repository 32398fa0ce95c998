"""Status writes shared by the controllers: only what changed, never at rest."""

from __future__ import annotations

import datetime
from typing import Any

import kopf


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def patch_status_if_changed(patch: kopf.Patch, current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Put into `patch.status` only the top-level status fields whose value differs.

    kopf sends nothing when the patch is empty, so an unchanged object costs no API write.
    """
    changed = False
    for key, value in desired.items():
        if current.get(key) != value:
            patch.status[key] = value
            changed = True
    return changed
