"""InferenceService controller: cache → profile → children → readiness gate → status.

Level-based: each run reads the cache, the nodes, the children and the pods (from the
watches' indices, `informers`, not the API server), and converges. The running profile is
kept until the spec changes or it no longer fits the nodes; children are written only when
they differ from what is rendered, so a settled service costs no writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from kubernetes.client import ApiException
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
from inferator.controllers import children, informers, kube, measurements, validation, workqueue
from inferator.controllers.metrics import (
    CENSUS,
    PROFILE_SELECTIONS,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    TIME_TO_READY,
    VALIDATION,
    WORKQUEUE_DEPTH,
    seconds_since,
)
from inferator.controllers.modelcache import validation_message
from inferator.controllers.redaction import scrub
from inferator.controllers.settings import SELECTION
from inferator.controllers.status import changed_fields, now_rfc3339
from inferator.controllers.warmup import gate_condition, needs_warmup, warm_up
from inferator.profiles.measured import Measured
from inferator.profiles.select import Selection, parse_profile_name, select_profile
from inferator.render import groups
from inferator.render import inferenceservice as render
from inferator.settings import OperatorSettings

KIND = "InferenceService"
# (apiVersion, kind) of the children a spec may stop asking for: found in the index, deleted.
OPTIONAL_CHILDREN = tuple(
    (f"{group}/{version}" if group else version, kind)
    for group, version, _, kind, optional in informers.CHILD_RESOURCES
    if optional
)


@dataclass
class Conditions:
    """The four conditions Argo CD health checks read, with a stable set of reasons."""

    values: dict[str, tuple[CONDITION_STATUS, str, str]] = field(default_factory=dict)
    # Conditions a spec no longer asks for (validation switched off): removed from status.
    dropped: set[str] = field(default_factory=set)
    # Events to post once the status is written: (type, reason, message).
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def set(self, type_: str, status: CONDITION_STATUS, reason: str, message: str) -> None:
        self.values[type_] = (status, reason, message)


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
        rank = groups.rank_of(pod["metadata"].get("labels") or {})
        if groups.is_worker(pod["metadata"].get("labels") or {}):
            # A multi-node group's worker serves no API: its leader's warm-up answers for the group.
            passed, message = True, f"rank {rank} of a multi-node group: its leader serves and is warmed up"
        elif annotations.get(render.WARMUP_ANNOTATION) == "in-pod":
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
            informers.remember_write(
                kube.patch_pod_status_conditions(
                    pod["metadata"]["name"], pod["metadata"]["namespace"], [condition]
                )
            )
        if not passed:
            failure = f"pod {pod['metadata']['name']}: {message}"
    return failure


def _measured(spec: InferenceServiceSpec, model: str) -> dict[tuple[str, str], Measured]:
    """The stored validation numbers of this model, read only for a service that ranks by them."""
    if spec.selector is None or spec.selector.rank_by != "measured":
        return {}
    try:
        return measurements.load(OperatorSettings.from_env().operator_namespace, model)
    except ApiException as exc:  # no numbers: the static order, and the reason in the log
        log.warning("measurements unreadable (%s %s): ranking by the static order", exc.status, exc.reason)
        return {}


def _select(
    spec: InferenceServiceSpec,
    status: InferenceServiceStatus,
    generation: int,
    facts: Any,
    served: str,
    nodes: list[dict[str, Any]],
    model: str,
) -> tuple[Selection, bool]:
    """The selection, and whether it is the running profile kept (checked to still fit)."""

    def select(for_spec: InferenceServiceSpec) -> Selection:
        return select_profile(facts, nodes, for_spec, SELECTION.settings, catalog=SELECTION.catalog,
                              served_model_name=served, measured=_measured(for_spec, model))  # fmt: skip

    # A new profile that missed its SLO was left for the one validated before it.
    if (back := validation.kept_profile(status.validation, generation)) is not None:
        kept = select(spec.model_copy(update={"profile": back, "selector": None}))
        if kept.ok:
            return kept, True
    if status.profile and status.profile_generation == generation:
        kept = select(spec.model_copy(update={"profile": status.profile, "selector": None}))
        if kept.ok:
            return kept, True
    return select(spec), False


def spec_revision(spec: InferenceServiceSpec) -> str:
    """What is served, as a digest: the spec without `replicas`, which an autoscaler writes
    through the scale subresource (for multi-node groups) and `kubectl scale` changes. Selection
    and validation follow the spec's revision rather than its generation, so scaling neither
    re-selects nor lifts a KeepPreviousProfile pin nor retries a failed validation run."""
    served = spec.model_dump(mode="json", by_alias=True, exclude={"replicas"}, exclude_none=True)
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:16]


def selected_generation(status: InferenceServiceStatus, revision: str, generation: int) -> int:
    """The generation the running profile was selected for while the spec's revision is the same
    (only replicas changed since), else this generation: the spec changed, select again."""
    if status.profile_generation is not None and status.spec_revision == revision:
        return status.profile_generation
    return generation


def reconcile(name: str, namespace: str, body: dict[str, Any], view: informers.View) -> dict[str, Any]:
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
    cache = view.model_cache(namespace, cache_name)
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
    model = measurements.model_identity(
        cache_spec.source.uri, cache_status.resolved_revision, cache_status.content_hash
    )
    revision = spec_revision(spec)
    selected_for = selected_generation(status, revision, generation)
    selection, kept = _select(spec, status, selected_for, cache_status.model, cache_name, view.nodes(), model)
    # A kept profile is checked as a pin, whose ranking says nothing of the alternatives: the
    # candidates stay those of the selection that chose it (else every later pass rewrote them).
    previous = (body.get("status") or {}).get("candidates")
    out["candidates"] = (
        previous
        if kept and previous
        else [c.to_k8s() for c in selection.status_candidates(SELECTION.settings.status_candidates)]
    )
    if not selection.ok or selection.profile is None:
        conds.set("ProfileSelected", "False", "NoCompatibleProfile", selection.message)
        conds.set("Ready", "False", "NoCompatibleProfile", selection.message)
        return _finish(out, status, conds, "NoCompatibleProfile", generation)
    profile = selection.profile
    conds.set("ProfileSelected", "True", "ProfileSelected", selection.message)
    out |= {"profile": profile.name, "profileGeneration": selected_for, "specRevision": revision, "task": profile.task,
            "servedModelName": profile.served_model_name,
            "pool": selection.pool.key if selection.pool else None,
            "estimates": selection.estimates.to_k8s() if selection.estimates else None,
            "endpoint": render.endpoint(name, namespace, profile.port)}  # fmt: skip

    inputs = render.ServingInputs(
        name=name, namespace=namespace, spec=spec, selection=selection, pvc_name=cache_status.pvc_name,
        ownership=cache_spec.ownership, settings=OperatorSettings.from_env(),
        keda_installed=kube.crd_installed("keda.sh/v1alpha1", "ScaledObject"),
        servicemonitor_installed=kube.crd_installed("monitoring.coreos.com/v1", "ServiceMonitor"),
        lws_installed=kube.crd_installed(groups.LWS_API_VERSION, "LeaderWorkerSet"),
        model_subpath=cache_spec.model_subpath, in_place=cache_spec.in_place,
        cache_revision=f"{cache_status.content_hash or ''}:{cache_status.resolved_revision or ''}",
    )  # fmt: skip
    if profile.nodes > 1:  # what an HPA reads its pod signals from: one leader per group
        leaders = render.selector(name) | groups.leader_selector(inputs.lws_installed)
        out["selector"] = ",".join(f"{k}={v}" for k, v in leaders.items())
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
        informers.remember_write(
            children.ensure(obj, view.get(obj["apiVersion"], obj["kind"], name, namespace))
        )
    for api_version, kind in OPTIONAL_CHILDREN:
        if (api_version, kind) not in wanted and view.get(api_version, kind, name, namespace) is not None:
            kube.delete(api_version, kind, name, namespace)
            informers.forget(api_version, kind, namespace, name)

    wanted_sets = {o["metadata"]["name"] for o in desired if o["kind"] == "StatefulSet"}
    # Group StatefulSets exist only while a profile spans nodes, or just after one did (the
    # running profile in status): only then is the children index searched for them.
    spanned = int((parse_profile_name(status.profile or "") or {}).get("pp", "1")) > 1
    owned = view.owned("apps/v1", "StatefulSet", namespace, name) if profile.nodes > 1 or spanned else []
    for stale in owned:
        if stale["metadata"]["name"] not in wanted_sets:  # fewer groups, or one node per replica again
            kube.delete("apps/v1", "StatefulSet", stale["metadata"]["name"], namespace)
            informers.forget("apps/v1", "StatefulSet", namespace, stale["metadata"]["name"])
    headless = groups.headless_name(name)
    if not wanted_sets and view.get("v1", "Service", headless, namespace) is not None:
        kube.delete("v1", "Service", headless, namespace)
        informers.forget("v1", "Service", namespace, headless)

    pods = view.pods(namespace, name)
    lws = view.get(groups.LWS_API_VERSION, "LeaderWorkerSet", name, namespace) if profile.nodes > 1 else None
    if lws is not None:
        replicas, ready, desired_replicas, rolled_out = _lws_status(lws, conds)
    elif profile.nodes > 1:
        sets = [s for s in owned if s["metadata"]["name"] in wanted_sets]
        replicas, ready, desired_replicas, rolled_out = _group_status(sets, len(wanted_sets), conds)
        _restart_groups(body, namespace, sets, pods)
    else:
        replicas, ready, desired_replicas, rolled_out = _deployment_status(view, namespace, name, conds)
    out |= {"replicas": replicas, "readyReplicas": ready}
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
    checked = validation.step(inputs, status.validation, phase == "Ready" and rolled_out, pods, view, owner,
                              selected_for, selection.estimates.kv_cache_tokens if selection.estimates else None)  # fmt: skip
    if checked.status is not None:
        out["validation"] = checked.status.to_k8s()
    for type_, (st, reason, message) in checked.conditions.items():
        conds.set(type_, cast(CONDITION_STATUS, st), reason, message)
    conds.dropped.update(checked.drop_conditions)
    conds.events += checked.events
    if checked.finished_run is not None and spec.validation is not None and selection.pool is not None:
        doc = measurements.entry(model, checked.finished_run.profile, selection.pool.key, checked.finished_run,
                                 spec.validation.slo, f"{namespace}/{name}")  # fmt: skip
        try:
            if doc is not None:
                measurements.record(inputs.settings.operator_namespace, doc)
        except ApiException as exc:  # the run stays in status; only `rankBy: measured` misses it
            log.warning("InferenceService %s/%s: measurement not recorded in %s/%s: %s %s", namespace, name,
                        inputs.settings.operator_namespace, measurements.CONFIGMAP, exc.status, exc.reason)  # fmt: skip
    return _finish(out, status, conds, phase, generation)


def _deployment_status(
    view: informers.View, namespace: str, name: str, conds: Conditions
) -> tuple[int, int, int, bool]:
    """Replicas, ready replicas, replicas asked for, and whether the rollout is done."""
    deployment = view.get("apps/v1", "Deployment", name, namespace) or {}
    dstatus = deployment.get("status") or {}
    replicas, ready = int(dstatus.get("replicas") or 0), int(dstatus.get("readyReplicas") or 0)
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
    desired = int((deployment.get("spec") or {}).get("replicas") or 0)
    rolled_out = int(dstatus.get("updatedReplicas") or 0) == replicas and replicas >= 1
    return replicas, ready, desired, rolled_out


def _group_status(sets: list[dict[str, Any]], wanted: int, conds: Conditions) -> tuple[int, int, int, bool]:
    """A multi-node replica is a group: ready when every pod of its StatefulSet is."""
    ready = rolled = 0
    size = 0
    for group in sets:
        size = int((group.get("spec") or {}).get("replicas") or 0)
        st = group.get("status") or {}
        ready += int(st.get("readyReplicas") or 0) == size > 0
        rolled += int(st.get("updatedReplicas") or 0) == size and st.get("currentRevision") == st.get(
            "updateRevision"
        )
    if ready:
        conds.set("Available", "True", "MinimumReplicasAvailable",
                  f"{ready}/{wanted} groups of {size} nodes ready")  # fmt: skip
    else:
        conds.set("Available", "False", "Deploying", f"0/{wanted} groups of {size or '?'} nodes ready")
    return len(sets), ready, wanted, rolled == len(sets) and len(sets) >= 1


def _lws_status(lws: dict[str, Any], conds: Conditions) -> tuple[int, int, int, bool]:
    """A LeaderWorkerSet counts its groups itself (status.replicas, readyReplicas, updatedReplicas)."""
    st, size = (
        lws.get("status") or {},
        ((lws.get("spec") or {}).get("leaderWorkerTemplate") or {}).get("size"),
    )
    replicas, ready = int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0)
    desired = int((lws.get("spec") or {}).get("replicas") or 0)
    message = f"{ready}/{desired} groups of {size} nodes ready (LeaderWorkerSet)"
    conds.set(
        "Available",
        "True" if ready else "False",
        "MinimumReplicasAvailable" if ready else "Deploying",
        message,
    )
    return replicas, ready, desired, int(st.get("updatedReplicas") or 0) == replicas >= 1


def _restart_groups(
    body: dict[str, Any], namespace: str, sets: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> None:
    """Start a group again, whole, when it lost a member or must move to a new template (what
    LeaderWorkerSet's RecreateGroupOnPodRestart does). A broken group goes at once; a rollout
    takes one group at a time, while the others are ready, so a service with several keeps
    serving."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_group.setdefault((pod["metadata"].get("labels") or {}).get(groups.GROUP_LABEL, ""), []).append(pod)
    unready = [
        s for s in sets if int((s.get("status") or {}).get("readyReplicas") or 0) < int(s["spec"]["replicas"])
    ]
    for sts in sets:
        restart = groups.group_restart(
            sts, by_group.get(sts["metadata"]["labels"].get(groups.GROUP_LABEL, ""), [])
        )
        if restart is None:
            continue
        if "older template" in restart.reason and [u for u in unready if u is not sts]:
            continue  # a rollout waits for the other groups to be ready
        log.info("InferenceService %s/%s: restarting group %s: %s", namespace, body["metadata"]["name"],
                 restart.group, restart.reason)  # fmt: skip
        kube.patch("apps/v1", "StatefulSet", sts["metadata"]["name"], namespace,
                   {"metadata": {"annotations": {groups.STARTED_ANNOTATION: now_rfc3339()}}})  # fmt: skip
        for victim in restart.pods:
            kube.delete("v1", "Pod", victim, namespace)
        kopf.event(cast(kopf.Body, body), type="Warning", reason="GroupRestarted",
                   message=f"group {restart.group}: {restart.reason}; deleted {', '.join(restart.pods)}"[:1024])  # fmt: skip
        unready.append(sts)


def _finish(
    out: dict[str, Any], status: InferenceServiceStatus, conds: Conditions, phase: str, generation: int
) -> dict[str, Any]:
    now = now_rfc3339()
    conditions = [c for c in status.conditions if c.type not in conds.dropped]
    for type_, (st, reason, message) in conds.values.items():
        conditions = set_condition(conditions, type_, st, reason, message, now=now, generation=generation)
    out["phase"] = phase
    out["conditions"] = [c.to_k8s() for c in conditions]
    if conds.events:
        out[EVENTS_KEY] = conds.events
    return {k: v for k, v in out.items() if v is not None}


# Events ride along with the desired status until it is written (never written themselves).
EVENTS_KEY = "__events"


def _run(
    name: str, namespace: str, body: dict[str, Any], view: informers.View
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    with RECONCILE_SECONDS.labels(KIND).time(), RECONCILE_ERRORS.labels(KIND).count_exceptions():
        desired = reconcile(name, namespace, body, view)
    events = desired.pop(EVENTS_KEY, [])
    RECONCILES.labels(KIND, desired.get("phase", "")).inc()
    return changed_fields(body.get("status") or {}, desired), events


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


POLL_INTERVAL_S = 5.0
# A Deployment reports its rollout in several status updates within a second or two: a
# refresh waits this long so that they cost one reconcile.
REFRESH_DELAY_S = 1.0
WORKERS = 16
log = logging.getLogger(__name__)


def settled(status: dict[str, Any], generation: int) -> bool:
    """Nothing left to poll for: this generation handled, Ready, every replica ready.

    A service that is not settled waits on something no watch reports (a pod to warm up, a
    cache or a rollout to finish): it is polled every POLL_INTERVAL_S until it is."""
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    return (
        (conditions.get("Ready") or {}).get("status") == "True"
        and status.get("observedGeneration") == generation
        and status.get("readyReplicas") == status.get("replicas")
        # a validation run waiting for a pod of its profile (a running one is woken by its Job;
        # a service scaled to zero has none coming, and its scale-up is an event of its own)
        and (
            (conditions.get("Validated") or {}).get("reason") != "WaitingForReady"
            or not status.get("replicas")
        )
    )


def _converge(svc: dict[str, Any], namespace: str, view: informers.View) -> dict[str, Any]:
    """Reconcile a service and patch the status fields that changed (none: no write); return
    the status it now has. The answer of the patch is kept (`informers.remember_write`) so the
    next reconcile judges from it even before the watch delivers it."""
    name = svc["metadata"]["name"]
    old = svc.get("status") or {}
    changes, events = _run(name, namespace, svc, view)
    if changes:
        informers.remember_write(
            kube.patch_status(f"{API_GROUP}/{API_VERSION}", KIND, name, namespace, changes, current=old)
        )
        log.info("InferenceService %s/%s reconciled: status %s written (phase %s)", namespace, name,
                 ", ".join(sorted(changes)), changes.get("phase") or old.get("phase"))  # fmt: skip
        _observe(svc, old, changes)
        _event_on_transition(cast(kopf.Body, svc), old.get("phase"), changes)
        for type_, reason, message in events:
            kopf.event(cast(kopf.Body, svc), type=type_, reason=reason, message=message[:1024])
    return {**old, **changes}


def _process(key: Any) -> float | None:
    """One reconcile from the queue: the service as the watch (or our last write) has it."""
    namespace, name = key
    view = informers.current()
    svc = view.service(namespace, name)
    if svc is None or svc["metadata"].get("deletionTimestamp"):
        return None
    status = informers.in_handler_context(_converge, svc, namespace, view)
    return None if settled(status, int(svc["metadata"].get("generation") or 0)) else POLL_INTERVAL_S


def _failed(key: Any, exc: BaseException, retry_in_s: float) -> None:
    namespace, name = key
    log.warning("InferenceService %s/%s: reconcile failed, retrying in %.0f s: %s", namespace, name, retry_in_s,
                scrub(f"{type(exc).__name__}: {exc}")[:2000])  # fmt: skip


# Services seen by this process (namespace, name, uid): what a re-listing need not resume.
_RESUMED: set[tuple[str, str, str | None]] = set()
QUEUE = workqueue.WorkQueue(_process, workers=WORKERS, name="inferenceservice", on_error=_failed)
WORKQUEUE_DEPTH.labels(KIND).set_function(lambda: len(QUEUE))


@kopf.on.event(API_GROUP, API_VERSION, "inferenceservices")
async def service_changed(
    type: str | None, name: str, namespace: str | None, meta: kopf.Meta, status: kopf.Status, **kwargs: Any
) -> None:
    """Queue a service whose generation is not handled yet (created, spec changed, or found at
    start: the initial listing). Status updates, ours included, queue nothing: the events of
    its children, its cache and the poll of an unsettled service do.

    kopf's change handlers are not used: they write a diff-base annotation on every change,
    and their timers need a finalizer on the object (a service then cannot be deleted while the
    operator is away). The generation in the status is the whole bookkeeping."""
    informers.bind(kwargs)
    CENSUS.observe(KIND, namespace or "", name, status.get("phase"), deleted=type == "DELETED")
    VALIDATION.observe(namespace or "", name, status.get("validation"), deleted=type == "DELETED")
    key = (namespace or "", name, meta.get("uid"))
    if type == "DELETED":
        _RESUMED.discard(key)
        # Our last status write must not stand in for a deleted service (a queued poll would
        # apply children for an owner that is gone).
        informers.forget(f"{API_GROUP}/{API_VERSION}", KIND, namespace or "", name)
        return
    # kopf lists again whenever a watch has to restart from scratch (410 Gone after a quiet
    # spell, every few minutes): a listing resumes only the services this process has not
    # seen yet, or a settled fleet would be reconciled in full each time.
    first_sight = type is None and key not in _RESUMED
    _RESUMED.add(key)
    if first_sight or status.get("observedGeneration") != meta.get("generation"):
        QUEUE.add((namespace or "", name), priority=workqueue.RENDER)


def _child_changed(
    type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str | None, **kwargs: Any
) -> None:
    """A child moved (scaled, became ready, edited or deleted by hand): refresh its owner."""
    if type is None:  # the initial listing: the owners' own listing queues them
        return
    child = dict(body)
    if type == "DELETED":
        informers.forget(child["apiVersion"], child["kind"], namespace or "", child["metadata"]["name"])
    foreign = children.changed_by_others(type, child)
    if child.get("kind") == "Job":
        # A validation Job: its owner reads the results once it has finished (or was deleted).
        foreign = type == "DELETED" or validation.finished(child) is not None
        if not foreign:
            return
    elif child.get("kind") in ("StatefulSet", "LeaderWorkerSet") and not foreign:
        # A multi-node group's progress (pods ready, replaced): its owner counts groups.
        view = informers.bind(kwargs)
        if view.service(namespace or "", labels[render.SERVICE_LABEL]) is not None:
            QUEUE.add((namespace or "", labels[render.SERVICE_LABEL]), after_s=REFRESH_DELAY_S)
        return
    elif not foreign and child.get("kind") != "Deployment":
        return  # our own apply of a child coming back: nothing to do
    view = informers.bind(kwargs)
    owner_name = labels[render.SERVICE_LABEL]
    owner = view.service(namespace or "", owner_name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    if foreign:
        QUEUE.add((namespace or "", owner_name))
    elif children.deployment_differs(child, owner.get("status") or {}):
        QUEUE.add((namespace or "", owner_name), after_s=REFRESH_DELAY_S)


async def child_changed(**kwargs: Any) -> None:
    _child_changed(**kwargs)


# Every child kind: a hand edit of any of them is undone, a deleted one comes back.
for _group, _version, _plural, _kind, _optional in informers.CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, id="child_changed", labels={render.SERVICE_LABEL: kopf.PRESENT})(
        child_changed
    )


@kopf.on.event(API_GROUP, API_VERSION, "modelcaches")
async def cache_changed(
    type: str | None, name: str, namespace: str | None, status: kopf.Status, **kwargs: Any
) -> None:
    """A cache settled (Ready again, a new revision, Failed): refresh the services on it.

    Services waiting for a cache poll anyway; a Ready service is settled and would not notice
    a new revision or a cache that failed under it. Progress patches of a download (phase
    Downloading) are ignored.
    """
    if type is None or type == "DELETED" or status.get("phase") not in ("Ready", "Failed"):
        return
    view = informers.bind(kwargs)
    for svc_name in view.service_names_on_cache(namespace or "", name):
        QUEUE.add((namespace or "", svc_name))
