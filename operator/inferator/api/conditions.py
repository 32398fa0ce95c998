"""Pure helpers for metav1.Condition lists: the one place transitions are decided."""

from __future__ import annotations

from inferator.api.common import CONDITION_STATUS, Condition


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: CONDITION_STATUS,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """Return `conditions` with `type_` set; lastTransitionTime moves only when the status does.

    Keeping the old timestamp when nothing changed is what makes a reconcile of an unchanged
    object produce an identical status, and so no write at rest.
    """
    result: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            result.append(cond)
            continue
        found = True
        transition = cond.last_transition_time if cond.status == status and cond.last_transition_time else now
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=generation,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return result


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
