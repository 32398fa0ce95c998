"""ModelCache handlers."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from inferator.api import API_GROUP, API_VERSION, ModelCacheSpec, ModelCacheStatus
from inferator.api.conditions import set_condition
from inferator.controllers.metrics import RECONCILE_SECONDS, RECONCILES
from inferator.controllers.status import now_rfc3339, patch_status_if_changed

KIND = "ModelCache"


def validation_message(error: ValidationError) -> str:
    """One line per problem, with the field path in the CR's own (camelCase) names."""
    lines = []
    for item in error.errors():
        path = "spec." + ".".join(str(p) for p in item["loc"])
        lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)


@kopf.on.resume(API_GROUP, API_VERSION, "modelcaches")
@kopf.on.create(API_GROUP, API_VERSION, "modelcaches")
@kopf.on.update(API_GROUP, API_VERSION, "modelcaches", field="spec")
def reconcile_modelcache(
    spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    with RECONCILE_SECONDS.labels(KIND).time():
        current = ModelCacheStatus.model_validate(dict(status))
        generation = meta.get("generation")
        try:
            ModelCacheSpec.model_validate(dict(spec))
        except ValidationError as exc:
            message = validation_message(exc)
            conditions = set_condition(
                current.conditions,
                "Ready",
                "False",
                "InvalidSpec",
                message,
                now=now_rfc3339(),
                generation=generation,
            )
            desired = current.model_copy(
                update={"phase": "Failed", "conditions": conditions, "observed_generation": generation}
            )
            patch_status_if_changed(patch, dict(status), desired.to_k8s())
            RECONCILES.labels(KIND, "invalid").inc()
            return
        # The prefetch Job controller (issue 5) replaces this: until then a cache is accepted
        # and reported as pending, with the reason in plain words.
        conditions = set_condition(
            current.conditions,
            "Ready",
            "False",
            "PrefetchPending",
            "the prefetch Job has not run yet",
            now=now_rfc3339(),
            generation=generation,
        )
        desired = current.model_copy(
            update={
                "phase": current.phase or "Pending",
                "conditions": conditions,
                "observed_generation": generation,
            }
        )
        patch_status_if_changed(patch, dict(status), desired.to_k8s())
        RECONCILES.labels(KIND, "ok").inc()
