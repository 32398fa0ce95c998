"""The readiness gate: a pod takes traffic only after its server lists the model and answers one token."""

from __future__ import annotations

from typing import Any

from inferator.render.inferenceservice import READINESS_GATE
from inferator.runtime.warmup import WARMUP_TIMEOUT_S, warm_up

__all__ = ["WARMUP_TIMEOUT_S", "gate_condition", "needs_warmup", "warm_up"]


def gate_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == READINESS_GATE),
        None,
    )


def needs_warmup(pod: dict[str, Any]) -> bool:
    """Containers ready (the health probe passes), gate not yet True, pod not going away."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    gate = gate_condition(pod)
    return conditions.get("ContainersReady") == "True" and (gate is None or gate.get("status") != "True")
