"""InferenceService controller: cache → profile → children → readiness gate → status.

Level-based: each run reads the cache, the nodes and the children, and converges. The
running profile is kept until the spec changes or it no longer fits the nodes; children are
written only when they differ from what is rendered, so a settled service costs no writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from inferator.api import (
    API_GROUP,
    API_VERSION,
    InferenceServiceSpec,
    InferenceServiceStatus,
    ModelCacheSpec,
    ModelCacheStatus,
)
from inferator.api.common import CONDITION_STATUS
from inferator.api.conditions import get_condition, set_condition
from inferator.api.profile import ServingProfile
from inferator.controllers import children, kube
from inferator.controllers.metrics import (
    CENSUS,
    PROFILE_SELECTIONS,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    TIME_TO_READY,
    seconds_since,
)
from inferator.controllers.modelcache import validation_message
from inferator.controllers.redaction import scrub
from inferator.controllers.settings import SELECTION
from inferator.controllers.status import changed_fields, now_rfc3339
from inferator.controllers.warmup import gate_condition, needs_warmup, warm_up
from inferator.profiles.select import Selection, select_profile
from inferator.render import inferenceservice as render
from inferator.settings import OperatorSettings

KIND = "InferenceService"
OPTIONAL_CHILDREN = (
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
)
_NODE_CACHE_TTL_S = 5.0
_node_cache: dict[str, Any] = {"at": 0.0, "nodes": []}


def list_nodes() -> list[dict[str, Any]]:
    """Nodes, read at most every few seconds: a burst of services shares one LIST."""
    if time.monotonic() - _node_cache["at"] > _NODE_CACHE_TTL_S:
        _node_cache["nodes"] = kube.list_objects("v1", "Node", "", "")
        _node_cache["at"] = time.monotonic()
    return cast(list[dict[str, Any]], _node_cache["nodes"])


def crd_installed(group_version: str, kind: str) -> bool:
    return kind in kube.served_kinds(group_version)


@dataclass
class Conditions:
    """The four conditions Argo CD health checks read, with a stable set of reasons."""

    values: dict[str, tuple[CONDITION_STATUS, str, str]] = field(default_factory=dict)

    def set(self, type_: str, status: CONDITION_STATUS, reason: str, message: str) -> None:
        self.values[type_] = (status, reason, message)


def _pods(namespace: str, name: str) -> list[dict[str, Any]]:
    return kube.list_objects("v1", "Pod", namespace, f"{render.SERVICE_LABEL}={name}")


def _refusal(pods: list[dict[str, Any]]) -> str | None:
    """A serving container's own reason for exiting (the runtime writes it to its termination log)."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                terminated = state.get("terminated")
                if terminated and terminated.get("exitCode") and terminated.get("message"):
                    return f"pod {pod['metadata']['name']}: {scrub(terminated['message'].strip())}"
    return None


def _gate_pods(pods: list[dict[str, Any]], profile: ServingProfile) -> str | None:
    """Warm up pods whose containers are ready; set the gate. Returns the last failure, if any."""
    failure = None
    for pod in pods:
        if not needs_warmup(pod):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get(render.WARMUP_ANNOTATION) == "in-pod":
            # The startup probe ran `inferator warmup` with the API key; started means it passed.
            started = all(
                cs.get("started") for cs in (pod.get("status") or {}).get("containerStatuses") or [{}]
            )
            if not started:
                continue
            passed, message = (
                True,
                f"warmed up in the pod with its API key (startup probe: model listed, one {profile.task} request)",
            )
        else:
            passed, message = warm_up(ip, profile.port, profile.served_model_name, task=profile.task)
        status = "True" if passed else "False"
        current = gate_condition(pod)
        if current is None or (current.get("status"), current.get("message")) != (status, message):
            condition = {"type": render.READINESS_GATE, "status": status,
                         "reason": "WarmupSucceeded" if passed else "WarmupFailed", "message": message,
                         "lastTransitionTime": now_rfc3339()}  # fmt: skip
            kube.patch_pod_status_conditions(
                pod["metadata"]["name"], pod["metadata"]["namespace"], [condition]
            )
        if not passed:
            failure = f"pod {pod['metadata']['name']}: {message}"
    return failure


def _select(
    spec: InferenceServiceSpec, status: InferenceServiceStatus, generation: int, facts: Any, served: str
) -> Selection:
    nodes = list_nodes()

    def select(for_spec: InferenceServiceSpec) -> Selection:
        return select_profile(facts, nodes, for_spec, SELECTION.settings, catalog=SELECTION.catalog,
                              served_model_name=served)  # fmt: skip

    if status.profile and status.profile_generation == generation:
        kept = select(spec.model_copy(update={"profile": status.profile, "selector": None}))
        if kept.ok:
            return kept
    return select(spec)


def reconcile(name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Converge one service; return the status fields it should have."""
    generation = int(body["metadata"].get("generation") or 0)
    status = InferenceServiceStatus.model_validate(body.get("status") or {})
    conds = Conditions()
    out: dict[str, Any] = {"observedGeneration": generation, "selector": f"{render.SERVICE_LABEL}={name}"}
    try:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        conds.set("Ready", "False", "InvalidSpec", validation_message(exc))
        return _finish(out, status, conds, "Failed", generation)

    cache_name = spec.model_cache_ref.name
    cache = kube.get(f"{API_GROUP}/{API_VERSION}", "ModelCache", cache_name, namespace)
    cache_status = ModelCacheStatus.model_validate((cache or {}).get("status") or {})
    cache_ready = get_condition(cache_status.conditions, "Ready")
    if cache is None:
        conds.set(
            "CacheReady",
            "False",
            "CacheNotFound",
            f"ModelCache {cache_name!r} does not exist in namespace {namespace!r}",
        )
    elif (
        cache_ready is None
        or cache_ready.status != "True"
        or (cache_status.model is None and not cache_status.model_error)
        or not cache_status.pvc_name
    ):
        why = f": {cache_ready.reason}: {cache_ready.message}" if cache_ready else ""
        if cache_status.phase == "Failed":
            conds.set("CacheReady", "False", "CacheFailed", f"ModelCache {cache_name!r} failed{why}")
        else:
            conds.set(
                "CacheReady", "False", "CacheNotReady", f"ModelCache {cache_name!r} is not Ready yet{why}"
            )
    else:
        conds.set(
            "CacheReady",
            "True",
            "CacheReady",
            f"ModelCache {cache_name!r} is Ready ({cache_status.resolved_revision or 'no revision'})",
        )
    if conds.values["CacheReady"][0] != "True":
        _, cache_reason, cache_message = conds.values["CacheReady"]
        # A missing or failed cache will not heal by waiting: Ready carries that reason, so
        # Argo CD (which reads Ready) reports Degraded rather than Progressing.
        ready_reason = cache_reason if cache_reason in ("CacheNotFound", "CacheFailed") else "WaitingForCache"
        conds.set("Ready", "False", ready_reason, cache_message)
        return _finish(out, status, conds, "WaitingForCache", generation)
    assert cache is not None and cache_status.pvc_name is not None
    if cache_status.model is None:
        # Waiting would not help: the cache is complete, the planner cannot price its model.
        message = f"ModelCache {cache_name!r} holds a model no profile can be selected for: {cache_status.model_error}"
        conds.set("ProfileSelected", "False", "UnsupportedModel", message)
        conds.set("Ready", "False", "UnsupportedModel", message)
        return _finish(out, status, conds, "NoCompatibleProfile", generation)

    cache_spec = ModelCacheSpec.model_validate(cache["spec"])
    selection = _select(spec, status, generation, cache_status.model, cache_name)
    out["candidates"] = [
        c.to_k8s() for c in selection.status_candidates(SELECTION.settings.status_candidates)
    ]
    if not selection.ok or selection.profile is None:
        conds.set("ProfileSelected", "False", "NoCompatibleProfile", selection.message)
        conds.set("Ready", "False", "NoCompatibleProfile", selection.message)
        return _finish(out, status, conds, "NoCompatibleProfile", generation)
    profile = selection.profile
    conds.set("ProfileSelected", "True", "ProfileSelected", selection.message)
    out |= {"profile": profile.name, "profileGeneration": generation, "task": profile.task,
            "pool": selection.pool.key if selection.pool else None,
            "estimates": selection.estimates.to_k8s() if selection.estimates else None,
            "endpoint": render.endpoint(name, namespace, profile.port)}  # fmt: skip

    inputs = render.ServingInputs(
        name=name, namespace=namespace, spec=spec, selection=selection, pvc_name=cache_status.pvc_name,
        ownership=cache_spec.ownership, settings=OperatorSettings.from_env(),
        keda_installed=crd_installed("keda.sh/v1alpha1", "ScaledObject"),
        servicemonitor_installed=crd_installed("monitoring.coreos.com/v1", "ServiceMonitor"),
        model_subpath=cache_spec.model_subpath, in_place=cache_spec.in_place,
        cache_revision=f"{cache_status.content_hash or ''}:{cache_status.resolved_revision or ''}",
    )  # fmt: skip
    try:
        desired = render.render_children(inputs)
    except render.UnsupportedSignal as exc:
        conds.set("Ready", "False", "InvalidSpec", str(exc))
        return _finish(out, status, conds, "Failed", generation)
    except render.AutoscalerUnavailable as exc:
        conds.set("Ready", "False", "AutoscalerUnavailable", str(exc))
        return _finish(out, status, conds, "Failed", generation)
    owner = [kube.owner_reference(body)]
    wanted = set()
    for obj in desired:
        obj["metadata"]["ownerReferences"] = owner
        wanted.add((obj["apiVersion"], obj["kind"]))
        children.ensure(obj, kube.get(obj["apiVersion"], obj["kind"], name, namespace))
    for api_version, kind in OPTIONAL_CHILDREN:
        stale = (api_version, kind) not in wanted and crd_installed(api_version, kind)
        if stale and kube.get(api_version, kind, name, namespace) is not None:
            kube.delete(api_version, kind, name, namespace)

    deployment = kube.get("apps/v1", "Deployment", name, namespace) or {}
    dstatus = deployment.get("status") or {}
    replicas, ready = int(dstatus.get("replicas") or 0), int(dstatus.get("readyReplicas") or 0)
    out |= {"replicas": replicas, "readyReplicas": ready}
    available = next((c for c in dstatus.get("conditions") or [] if c["type"] == "Available"), None)
    if available and available["status"] == "True":
        conds.set("Available", "True", "MinimumReplicasAvailable", f"{ready}/{replicas} replicas ready")
    else:
        conds.set(
            "Available",
            "False",
            "Deploying",
            (available or {}).get("message") or "waiting for the Deployment",
        )
    desired_replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
    # Every pod of the current rollout ready: no gate to open and no refusal to report, so
    # the pod list (the costliest read of a reconcile) is skipped.
    all_ready = (
        dstatus.get("observedGeneration") == (deployment.get("metadata") or {}).get("generation")
        and replicas == ready == desired_replicas
        and int(dstatus.get("updatedReplicas") or 0) == desired_replicas
    )
    pods = [] if deployment and all_ready else _pods(namespace, name)
    warmup_failure = _gate_pods(pods, profile)
    refusal = _refusal(pods)
    if desired_replicas == 0 and replicas == 0:
        conds.set("Ready", "True", "ScaledToZero", "no replicas requested")
        phase = "Ready"
    elif ready >= 1 and ready >= desired_replicas:
        conds.set(
            "Ready",
            "True",
            "Serving",
            f"{ready}/{desired_replicas} replicas serve {profile.served_model_name} at {out['endpoint']}",
        )
        phase = "Ready"
    elif refusal:
        conds.set("Ready", "False", "RuntimeRefused", refusal)
        phase = "Degraded"
    elif warmup_failure:
        conds.set("Ready", "False", "WarmupFailed", warmup_failure)
        phase = "Deploying"
    else:
        # Scaling up or rolling out: still progressing, not degraded (Argo CD reads the phase).
        conds.set("Ready", "False", "Deploying", f"{ready}/{desired_replicas} replicas ready")
        phase = "Deploying"
    return _finish(out, status, conds, phase, generation)


def _finish(
    out: dict[str, Any], status: InferenceServiceStatus, conds: Conditions, phase: str, generation: int
) -> dict[str, Any]:
    now = now_rfc3339()
    conditions = status.conditions
    for type_, (st, reason, message) in conds.values.items():
        conditions = set_condition(conditions, type_, st, reason, message, now=now, generation=generation)
    out["phase"] = phase
    out["conditions"] = [c.to_k8s() for c in conditions]
    return {k: v for k, v in out.items() if v is not None}


def _run(name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    with RECONCILE_SECONDS.labels(KIND).time(), RECONCILE_ERRORS.labels(KIND).count_exceptions():
        desired = reconcile(name, namespace, body)
    RECONCILES.labels(KIND, desired.get("phase", "")).inc()
    return changed_fields(body.get("status") or {}, desired)


def _observe(body: dict[str, Any], old_status: dict[str, Any], changes: dict[str, Any]) -> None:
    """Metrics on transitions only, so a settled service leaves them still."""
    if changes.get("profile") and changes["profile"] != old_status.get("profile"):
        PROFILE_SELECTIONS.labels("selected").inc()
    phase = changes.get("phase")
    if phase == "NoCompatibleProfile" and old_status.get("phase") != phase:
        PROFILE_SELECTIONS.labels("no_compatible_profile").inc()
    age_s = seconds_since(body["metadata"].get("creationTimestamp"))
    if phase == "Ready" and old_status.get("phase") != "Ready" and age_s is not None:
        TIME_TO_READY.labels(KIND).observe(age_s)


def _event_on_transition(body: kopf.Body, old_phase: str | None, changes: dict[str, Any]) -> None:
    phase = changes.get("phase")
    if phase and phase != old_phase:
        ready: dict[str, Any] = next((c for c in changes.get("conditions", []) if c["type"] == "Ready"), {})
        kopf.event(body, type="Warning" if phase in ("Failed", "Degraded", "NoCompatibleProfile") else "Normal",
                   reason=ready.get("reason", phase), message=ready.get("message", phase)[:1024])  # fmt: skip


def _not_settled(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return not (
        ready.get("status") == "True"
        and status.get("observedGeneration") == meta.get("generation")
        and status.get("readyReplicas") == status.get("replicas")
    )


def _poll_due(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    """The timer polls what no watch tells us (a cache turning Ready, a pod to warm up) only
    after the change handlers have handled the current generation: in a burst, objects wait
    in kopf's queues for longer than the interval, and a timer tick then only repeats them."""
    return status.get("observedGeneration") == meta.get("generation") and _not_settled(status, meta)


@kopf.on.resume(API_GROUP, API_VERSION, "inferenceservices")
@kopf.on.create(API_GROUP, API_VERSION, "inferenceservices")
@kopf.on.update(API_GROUP, API_VERSION, "inferenceservices", field="spec")
@kopf.timer(API_GROUP, API_VERSION, "inferenceservices", interval=5, when=_poll_due)
def reconcile_inferenceservice(
    name: str, namespace: str | None, body: kopf.Body, patch: kopf.Patch, **_: Any
) -> None:
    raw = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"]),
           "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}  # fmt: skip
    changes = _run(name, namespace or "", raw)
    for key, value in changes.items():
        patch.status[key] = value
    _observe(raw, raw["status"], changes)
    _event_on_transition(body, raw["status"].get("phase"), changes)


def _converge(svc: dict[str, Any], namespace: str) -> None:
    """Reconcile a service from an event handler (no kopf patch there): patch what changed."""
    name = svc["metadata"]["name"]
    changes = _run(name, namespace, svc)
    if changes:
        kube.patch_status(f"{API_GROUP}/{API_VERSION}", KIND, name, namespace, changes)
        _observe(svc, svc.get("status") or {}, changes)
        _event_on_transition(cast(kopf.Body, svc), (svc.get("status") or {}).get("phase"), changes)


@kopf.on.event("apps", "v1", "deployments", labels={render.SERVICE_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "services", labels={render.SERVICE_LABEL: kopf.PRESENT})
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels={render.SERVICE_LABEL: kopf.PRESENT})
def child_changed(
    type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any
) -> None:
    """A child moved (scaled, became ready, edited or deleted by hand): converge its owner now."""
    if type is None:  # the initial listing: resume handles owners
        return
    child = dict(body)
    foreign = children.changed_by_others(type, child)
    if not foreign and child.get("kind") != "Deployment":
        return  # our own apply of a Service or NetworkPolicy coming back: nothing to read
    owner_name = labels[render.SERVICE_LABEL]
    owner = kube.get(f"{API_GROUP}/{API_VERSION}", KIND, owner_name, namespace or "")
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    if not foreign and not children.deployment_differs(child, owner.get("status") or {}):
        return
    _converge(owner, namespace or "")


@kopf.on.event(API_GROUP, API_VERSION, "modelcaches")
def cache_changed(type: str | None, name: str, namespace: str | None, status: kopf.Status, **_: Any) -> None:
    """A cache settled (Ready again, a new revision, Failed): converge the services on it now.

    Services waiting for a cache poll anyway; a Ready service is settled and would not notice
    a new revision or a cache that failed under it. Progress patches of a download (phase
    Downloading) are ignored.
    """
    if type is None or type == "DELETED" or status.get("phase") not in ("Ready", "Failed"):
        return
    for svc in kube.list_objects(f"{API_GROUP}/{API_VERSION}", KIND, namespace or "", ""):
        if ((svc.get("spec") or {}).get("modelCacheRef") or {}).get("name") != name:
            continue
        if not svc["metadata"].get("deletionTimestamp"):
            _converge(svc, namespace or "")


@kopf.on.event(API_GROUP, API_VERSION, "inferenceservices")
def census_inferenceservice(
    type: str | None, name: str, namespace: str | None, status: kopf.Status, **_: Any
) -> None:
    CENSUS.observe(KIND, namespace or "", name, status.get("phase"), deleted=type == "DELETED")
