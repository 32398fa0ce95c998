"""InferenceService handlers."""

from __future__ import annotations

from typing import Any, cast

import kopf
from pydantic import ValidationError

from inferator.api import (
    API_GROUP,
    API_VERSION,
    InferenceServiceSpec,
    InferenceServiceStatus,
    ModelCacheStatus,
)
from inferator.api.common import CONDITION_STATUS
from inferator.api.conditions import get_condition, set_condition
from inferator.controllers.metrics import RECONCILE_SECONDS, RECONCILES
from inferator.controllers.modelcache import validation_message
from inferator.controllers.status import now_rfc3339, patch_status_if_changed

KIND = "InferenceService"


def _cache_status(namespace: str | None, name: str) -> tuple[bool, ModelCacheStatus | None]:
    import kubernetes

    api = kubernetes.client.CustomObjectsApi()
    try:
        obj = api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace or "", "modelcaches", name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return False, None
        raise kopf.TemporaryError(f"reading ModelCache {name}: {exc.reason}", delay=10) from exc
    body = cast(dict[str, Any], obj)
    return True, ModelCacheStatus.model_validate(body.get("status") or {})


@kopf.on.resume(API_GROUP, API_VERSION, "inferenceservices")
@kopf.on.create(API_GROUP, API_VERSION, "inferenceservices")
@kopf.on.update(API_GROUP, API_VERSION, "inferenceservices", field="spec")
def reconcile_inferenceservice(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    with RECONCILE_SECONDS.labels(KIND).time():
        current = InferenceServiceStatus.model_validate(dict(status))
        generation = meta.get("generation")
        now = now_rfc3339()
        try:
            parsed = InferenceServiceSpec.model_validate(dict(spec))
        except ValidationError as exc:
            conditions = set_condition(
                current.conditions,
                "Ready",
                "False",
                "InvalidSpec",
                validation_message(exc),
                now=now,
                generation=generation,
            )
            desired = current.model_copy(
                update={"phase": "Failed", "conditions": conditions, "observed_generation": generation}
            )
            patch_status_if_changed(patch, dict(status), desired.to_k8s())
            RECONCILES.labels(KIND, "invalid").inc()
            return
        cache_name = parsed.model_cache_ref.name
        exists, cache = _cache_status(namespace, cache_name)
        cache_ready = get_condition(cache.conditions, "Ready") if cache else None
        cache_cond: tuple[CONDITION_STATUS, str, str]
        if not exists:
            cache_cond = (
                "False",
                "CacheNotFound",
                f"ModelCache {cache_name!r} does not exist in namespace {namespace!r}",
            )
        elif cache_ready is None or cache_ready.status != "True":
            why = f": {cache_ready.reason}: {cache_ready.message}" if cache_ready else ""
            cache_cond = ("False", "CacheNotReady", f"ModelCache {cache_name!r} is not Ready yet{why}")
        else:
            cache_cond = ("True", "CacheReady", f"ModelCache {cache_name!r} is Ready")
        conditions = set_condition(
            current.conditions, "CacheReady", *cache_cond, now=now, generation=generation
        )
        if cache_cond[0] != "True":
            conditions = set_condition(
                conditions, "Ready", "False", "WaitingForCache", cache_cond[2], now=now, generation=generation
            )
            phase = "WaitingForCache"
        else:
            conditions = set_condition(
                conditions,
                "Ready",
                "False",
                "SelectionPending",
                "profile selection has not run yet",
                now=now,
                generation=generation,
            )
            phase = "Pending"
        desired = current.model_copy(
            update={"phase": phase, "conditions": conditions, "observed_generation": generation}
        )
        patch_status_if_changed(patch, dict(status), desired.to_k8s())
        RECONCILES.labels(KIND, "ok").inc()
        if cache_cond[0] != "True":
            # Level-based: look again later rather than trusting an event from the cache.
            raise kopf.TemporaryError(cache_cond[2], delay=15)
