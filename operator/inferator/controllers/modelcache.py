"""ModelCache controller: RBAC for the Job, the PVC, a sizing Job when no size is given, the prefetch Job.

Level-based: every run reads what exists and moves one step towards the desired state; the
timer keeps looking while a cache is on its way and stops once it is Ready or Failed for the
current generation, so a settled cache costs nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

import kopf
from kubernetes.client import ApiException
from pydantic import ValidationError

from inferator.api import API_GROUP, API_VERSION, ModelCacheSpec, ModelCacheStatus
from inferator.api.common import CONDITION_STATUS, Condition
from inferator.api.conditions import set_condition
from inferator.controllers import kube
from inferator.controllers.metrics import (
    CENSUS,
    PREFETCH_BYTES,
    PREFETCH_SECONDS,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    TIME_TO_READY,
    seconds_since,
)
from inferator.controllers.redaction import scrub
from inferator.controllers.status import changed_fields, now_rfc3339, patch_status_if_changed
from inferator.prefetch.redact import display_url
from inferator.profiles.pools import parse_quantity_bytes
from inferator.render import modelcache as render
from inferator.render.inferenceservice import binary_quantity
from inferator.settings import OperatorSettings

KIND = "ModelCache"
log = logging.getLogger(__name__)
JobState = Literal["missing", "running", "succeeded", "failed"]


def validation_message(error: ValidationError) -> str:
    """One line per problem, with the field path in the CR's own (camelCase) names."""
    lines = []
    for item in error.errors():
        path = "spec." + ".".join(str(p) for p in item["loc"])
        lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)


@dataclass(frozen=True)
class Outcome:
    """The status this reconcile wants: phase, the Ready condition, and the objects it points at."""

    phase: str
    ready: CONDITION_STATUS
    reason: str
    message: str
    pvc_name: str | None = None
    job_name: str | None = None
    retry_s: float | None = None


def job_outcome(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> tuple[JobState, str]:
    """A Job's state and, when it failed, the reason its last pod gave (termination message)."""
    if job is None:
        return "missing", ""
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions or (status.get("succeeded") or 0) > 0:
        return "succeeded", ""
    if "Failed" in conditions:
        message = ""
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (cs.get("state") or {}).get("terminated")
                if cs.get("name") == "prefetch" and terminated:
                    message = (
                        terminated.get("message") or ""
                    ).strip() or f"exit code {terminated.get('exitCode')}"
        why = conditions["Failed"].get("message") or conditions["Failed"].get("reason") or "failed"
        # The prefetch redacts its own termination message; this is the belt to its braces (a
        # pod killed before it could, a message from another image).
        return "failed", scrub(message or why)
    return "running", ""


# How long a completed Job's final status report may trail its completion.
REPORT_GRACE_S = 30.0


def _ensure_job(
    name: str,
    namespace: str,
    spec: ModelCacheSpec,
    body: dict[str, Any],
    mode: str,
    generation: int,
    revision: str | None,
) -> tuple[JobState, str, str]:
    settings = OperatorSettings.from_env()
    manifest = render.render_job(
        name, namespace, spec, settings, mode=mode, generation=generation, resolved_revision=revision
    )
    job_name = manifest["metadata"]["name"]
    job = kube.get("batch/v1", "Job", job_name, namespace)
    if job is not None:
        state, message = job_outcome(job, kube.list_objects("v1", "Pod", namespace, f"job-name={job_name}"))
        job_generation = int(job["metadata"].get("annotations", {}).get("inferator.dev/spec-generation", "0"))
        if state == "failed" and job_generation < generation:
            # The user changed something (credentials, resources) after a failure: try again.
            kube.delete("batch/v1", "Job", job_name, namespace)
            raise kopf.TemporaryError(f"replacing failed Job {job_name} after a spec change", delay=2)
        return state, message, job_name
    manifest["metadata"]["ownerReferences"] = [kube.owner_reference(body)]
    kube.create(manifest)
    return "running", "", job_name


def _ensure_credentials_check(
    name: str,
    namespace: str,
    spec: ModelCacheSpec,
    owner: list[dict[str, Any]],
    generation: int,
    settings: OperatorSettings,
) -> None:
    """The scheduled credentials check while the spec has credentials to check; none otherwise."""
    check_name = render.credentials_check_name(name)
    if not render.wants_credentials_check(spec):
        if kube.get("batch/v1", "CronJob", check_name, namespace) is not None:
            kube.delete("batch/v1", "CronJob", check_name, namespace)
        return
    cron = render.render_credentials_check(name, namespace, spec, settings, generation)
    cron["metadata"]["ownerReferences"] = owner
    try:
        kube.apply(cron)
    except ApiException as exc:
        if exc.status != 422:
            raise
        # A schedule the schema's pattern let through but the API server's cron parser refuses:
        # the download goes on; an Event says what to fix (CredentialsValid stays NotChecked).
        message = (f"credentialsCheck.schedule {spec.credentials_check.schedule!r} was refused by the API "
                   "server: use a CronJob schedule such as '17 */6 * * *'")  # fmt: skip
        log.warning("ModelCache %s/%s: %s", namespace, name, message)
        cache: dict[str, Any] = {
            **owner[0],
            "metadata": {"name": name, "namespace": namespace, "uid": owner[0]["uid"]},
        }
        kopf.event(cast(kopf.Body, cache), type="Warning", reason="InvalidSchedule", message=message)


def credentials_condition(
    spec: ModelCacheSpec, status: ModelCacheStatus
) -> tuple[CONDITION_STATUS, str, str] | None:
    """CredentialsValid from the last scheduled check; None when the cache has nothing to check."""
    if not render.wants_credentials_check(spec):
        return None
    schedule = spec.credentials_check.schedule
    found = status.credentials
    if found is None or found.checked_at is None:
        return ("Unknown", "NotChecked", f"the first scheduled check has not run yet (schedule {schedule!r})")
    message = scrub(f"checked {found.checked_at}: {found.message or ''}".strip())
    if found.valid is True:
        return ("True", "CredentialsAccepted", message)
    if found.valid is False:
        return ("False", "CredentialsRejected", message)
    return ("Unknown", "SourceUnreachable", message)


def _delete_stale_jobs(name: str, namespace: str, spec: ModelCacheSpec) -> None:
    current = render.content_hash(spec)
    for job in kube.list_objects(
        "batch/v1", "Job", namespace, f"{render.CACHE_LABEL}={render.cache_label_value(name)}"
    ):
        if job["metadata"].get("annotations", {}).get("inferator.dev/content-hash") != current:
            kube.delete("batch/v1", "Job", job["metadata"]["name"], namespace)


def _ensure_pvc(
    name: str, namespace: str, spec: ModelCacheSpec, body: dict[str, Any], size: str | int
) -> tuple[str, str | None]:
    """The cache's own claim, created or grown to `size`; with why it cannot be, if so.

    A claim that is now too small (a larger spec.storage.size, or a source that grew) is
    expanded when its StorageClass allows it; otherwise the cache waits, saying what to do,
    rather than a download failing half way with "no space left".
    """
    pvc_name = render.names(name, spec).pvc
    existing = kube.get("v1", "PersistentVolumeClaim", pvc_name, namespace)
    if existing is None:
        pvc = render.render_pvc(name, namespace, spec, size)
        if spec.storage.reclaim_policy == "Delete":
            # Owned: garbage collection removes it with the ModelCache. Retain: no owner, it stays.
            pvc["metadata"]["ownerReferences"] = [kube.owner_reference(body)]
        kube.create(pvc)
        return pvc_name, None
    requested = ((existing.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
    have, want = parse_quantity_bytes(requested), parse_quantity_bytes(size)
    if not have or not want or want <= have:
        return pvc_name, None
    wanted = binary_quantity(want)
    class_name = (existing.get("spec") or {}).get("storageClassName")
    storage_class = kube.get("storage.k8s.io/v1", "StorageClass", class_name, "") if class_name else None
    if storage_class and storage_class.get("allowVolumeExpansion"):
        kube.patch("v1", "PersistentVolumeClaim", pvc_name, namespace,
                   {"spec": {"resources": {"requests": {"storage": wanted}}}})  # fmt: skip
        return pvc_name, None
    return pvc_name, (
        f"PVC {pvc_name} requests {requested} but the cache needs {wanted}, and its StorageClass "
        f"{class_name or '(none)'} does not allow volume expansion: delete the claim to have it "
        "recreated at the new size (with reclaimPolicy Retain its volume stays), or use a StorageClass "
        "with allowVolumeExpansion"
    )


def reconcile(
    name: str, namespace: str, body: dict[str, Any], spec: ModelCacheSpec, status: ModelCacheStatus
) -> Outcome:
    generation = int(body["metadata"].get("generation") or 0)
    settings = OperatorSettings.from_env()
    image = spec.prefetch.image
    if image and not settings.prefetch_image_allowed(image):
        # The Job runs with the cache's credentials and writes the volume: which image does that
        # is the platform team's choice (Helm value prefetch.allowedImages), not the CR author's.
        allowed = ", ".join([settings.prefetch_image, *settings.prefetch_images_allowed])
        return Outcome("Failed", "False", "ImageNotAllowed",
                       f"spec.prefetch.image {image!r} is not allowed by the operator's settings "
                       f"(allowed: {allowed}); remove it to use the default, or ask the platform team "
                       "to allow it")  # fmt: skip
    current_hash = render.content_hash(spec)
    known = status.content_hash == current_hash
    owner = [kube.owner_reference(body)]
    for obj in render.render_rbac(name, namespace, spec):
        obj["metadata"]["ownerReferences"] = owner
        kube.apply(obj)
    _ensure_credentials_check(name, namespace, spec, owner, generation, settings)
    _delete_stale_jobs(name, namespace, spec)

    if spec.storage.pvc_name or spec.in_place:
        pvc_name = render.names(name, spec).pvc
        if kube.get("v1", "PersistentVolumeClaim", pvc_name, namespace) is None:
            field = "spec.source.uri's claim" if spec.in_place else "spec.storage.pvcName"
            return Outcome("Pending", "False", "PVCNotFound",
                           f"{field} {pvc_name!r} does not exist in {namespace!r}",
                           retry_s=15)  # fmt: skip
    else:
        size: str | int | None = spec.storage.size
        if size is None and known and status.size_bytes is not None:
            size = render.pvc_size_bytes(status.size_bytes, OperatorSettings.from_env())
        if size is None:
            state, message, job_name = _ensure_job(name, namespace, spec, body, "size", generation, None)
            if state == "failed":
                return Outcome(
                    "Failed",
                    "False",
                    "SizingFailed",
                    f"listing {display_url(spec.source.uri)} failed: {message}",
                    job_name=job_name,
                )
            if state == "succeeded":
                return Outcome("Failed", "False", "SizingFailed",
                               f"Job {job_name} finished without reporting the source's size", job_name=job_name)  # fmt: skip
            return Outcome("Pending", "False", "Sizing",
                           f"Job {job_name} is listing {display_url(spec.source.uri)} to size the volume", job_name=job_name)  # fmt: skip
        pvc_name, too_small = _ensure_pvc(name, namespace, spec, body, size)
        if too_small:
            return Outcome("Pending", "False", "PVCTooSmall", too_small, pvc_name, retry_s=15)

    revision = status.resolved_revision if known else None
    state, message, job_name = _ensure_job(name, namespace, spec, body, "fetch", generation, revision)
    if state == "failed":
        return Outcome("Failed", "False", "PrefetchFailed", message, pvc_name, job_name)
    if state == "succeeded":
        if not (known and (status.model is not None or status.model_error)):
            # The Job's last status patch and its completion race: a watch may show the Job
            # Complete first. Wait for the report a while before calling the run a failure.
            job = kube.get("batch/v1", "Job", job_name, namespace) or {}
            done_s = seconds_since((job.get("status") or {}).get("completionTime"))
            if done_s is None or done_s < REPORT_GRACE_S:
                return Outcome("Downloading", "False", "Downloading",
                               f"Job {job_name} finished; waiting for its report", pvc_name, job_name)  # fmt: skip
            return Outcome("Failed", "False", "PrefetchFailed",
                           f"Job {job_name} finished {done_s:.0f} s ago without reporting a verified cache; "
                           "delete the Job to run it again", pvc_name, job_name)  # fmt: skip
        total = status.size_bytes or 0
        revision_note = f" at revision {status.resolved_revision}" if status.resolved_revision else ""
        facts_note = (
            f"; no profile can be selected for it: {status.model_error}" if status.model is None else ""
        )
        return Outcome("Ready", "True", "Prefetched",
                       f"{display_url(spec.source.uri)}{revision_note}: {total / 2**30:.2f} GiB verified on PVC {pvc_name}"
                       f"{facts_note}", pvc_name, job_name)  # fmt: skip
    return Outcome("Downloading", "False", "Downloading", f"Job {job_name} is downloading into PVC {pvc_name}",
                   pvc_name, job_name)  # fmt: skip


def _not_settled(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    settled = status.get("phase") in ("Ready", "Failed") and status.get("observedGeneration") == meta.get(
        "generation"
    )
    return not settled


@kopf.on.resume(API_GROUP, API_VERSION, "modelcaches")
@kopf.on.create(API_GROUP, API_VERSION, "modelcaches")
@kopf.on.update(API_GROUP, API_VERSION, "modelcaches", field="spec")
@kopf.timer(API_GROUP, API_VERSION, "modelcaches", interval=3, when=_not_settled)
def reconcile_modelcache(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    with RECONCILE_SECONDS.labels(KIND).time(), RECONCILE_ERRORS.labels(KIND).count_exceptions():
        outcome, desired, current = evaluate(name, namespace or "", dict(body), dict(spec), dict(status))
        if patch_status_if_changed(patch, dict(status), desired) and current.phase != outcome.phase:
            _announce(body, current, outcome, namespace or "")
            logger.info("phase %s -> %s: %s", current.phase, outcome.phase, outcome.reason)
        RECONCILES.labels(KIND, outcome.phase).inc()


def evaluate(
    name: str, namespace: str, body: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]
) -> tuple[Outcome, dict[str, Any], ModelCacheStatus]:
    """The cache's outcome and the status fields the operator owns, from the cluster as it is."""
    current = ModelCacheStatus.model_validate(status)
    generation = body["metadata"].get("generation")
    parsed: ModelCacheSpec | None = None
    try:
        parsed = ModelCacheSpec.model_validate(spec)
    except ValidationError as exc:
        outcome = Outcome("Failed", "False", "InvalidSpec", validation_message(exc))
    else:
        raw = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"])}
        outcome = reconcile(name, namespace, raw, parsed, current)
    conditions = set_condition(
        current.conditions, "Ready", outcome.ready, outcome.reason, outcome.message,
        now=now_rfc3339(), generation=generation,
    )  # fmt: skip
    conditions = _with_credentials(conditions, parsed, current, generation)
    desired = {
        "phase": outcome.phase,
        "observedGeneration": generation,
        "conditions": [c.to_k8s() for c in conditions],
        "pvcName": outcome.pvc_name,
        "jobName": outcome.job_name,
    }
    return outcome, {k: v for k, v in desired.items() if v is not None}, current


def _with_credentials(
    conditions: list[Condition], spec: ModelCacheSpec | None, status: ModelCacheStatus, generation: int | None
) -> list[Condition]:
    """The conditions with CredentialsValid as the last check says (dropped when there is
    nothing to check; left as they are when the spec does not parse)."""
    if spec is None:
        return conditions
    wanted = credentials_condition(spec, status)
    if wanted is None:
        return [c for c in conditions if c.type != CREDENTIALS_CONDITION]
    return set_condition(conditions, CREDENTIALS_CONDITION, *wanted, now=now_rfc3339(), generation=generation)


CREDENTIALS_CONDITION = "CredentialsValid"


def _announce(body: Any, current: ModelCacheStatus, outcome: Outcome, namespace: str) -> None:
    kopf.event(body, type="Warning" if outcome.phase == "Failed" else "Normal",
               reason=outcome.reason, message=outcome.message[:1024])  # fmt: skip
    if outcome.phase == "Ready":
        _observe_ready(body, namespace, current, outcome)


@kopf.on.event("batch", "v1", "jobs", labels={render.CACHE_LABEL: kopf.PRESENT})
def job_deleted(type: str | None, body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A failed cache's Job deleted by hand is the user asking for another run: run it.

    Caches on their way are polled by the timer; a Failed one is settled and would otherwise
    wait for a spec change.
    """
    if type != "DELETED":
        return
    owner = next(
        (o for o in body["metadata"].get("ownerReferences") or [] if o.get("kind") == "ModelCache"), None
    )
    if owner is None:
        return
    cache = kube.get(f"{API_GROUP}/{API_VERSION}", "ModelCache", owner["name"], namespace or "")
    if cache is None or cache["metadata"].get("deletionTimestamp"):
        return
    status = cache.get("status") or {}
    if status.get("phase") != "Failed" or status.get("jobName") != body["metadata"]["name"]:
        return
    outcome, desired, current = evaluate(
        owner["name"], namespace or "", cache, cache.get("spec") or {}, status
    )
    changes = changed_fields(status, desired)
    if changes:
        kube.patch_status(f"{API_GROUP}/{API_VERSION}", "ModelCache", owner["name"], namespace or "", changes)
        if current.phase != outcome.phase:
            _announce(cache, current, outcome, namespace or "")
    RECONCILES.labels(KIND, outcome.phase).inc()


def _observe_ready(body: kopf.Body, namespace: str, status: ModelCacheStatus, outcome: Outcome) -> None:
    """Metrics of a cache that just became Ready: its bytes, its Job's run time, apply to Ready."""
    PREFETCH_BYTES.inc(status.size_bytes or 0)
    job = kube.get("batch/v1", "Job", outcome.job_name, namespace) if outcome.job_name else None
    job_status = (job or {}).get("status") or {}
    if (run_s := seconds_since(job_status.get("startTime"), job_status.get("completionTime"))) is not None:
        PREFETCH_SECONDS.observe(run_s)
    if (age_s := seconds_since(body["metadata"].get("creationTimestamp"))) is not None:
        TIME_TO_READY.labels(KIND).observe(age_s)


@kopf.on.event(API_GROUP, API_VERSION, "modelcaches")
def census_modelcache(
    type: str | None, name: str, namespace: str | None, status: kopf.Status, body: kopf.Body, **_: Any
) -> None:
    CENSUS.observe(KIND, namespace or "", name, status.get("phase"), deleted=type == "DELETED")
    if type != "DELETED":
        _credentials_changed(name, namespace or "", body)


def _credentials_changed(name: str, namespace: str, body: kopf.Body) -> None:
    """A scheduled check reported (its own status key): bring CredentialsValid in line, with an
    Event when the credentials stop being accepted. Level-based: no write when they agree."""
    if body["metadata"].get("deletionTimestamp"):
        return
    status = dict(body.get("status") or {})
    current = ModelCacheStatus.model_validate(status)
    generation = body["metadata"].get("generation")
    try:
        spec: ModelCacheSpec | None = ModelCacheSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError:
        spec = None
    wanted = _with_credentials(current.conditions, spec, current, generation)
    before = next((c for c in current.conditions if c.type == CREDENTIALS_CONDITION), None)
    after = next((c for c in wanted if c.type == CREDENTIALS_CONDITION), None)

    def said(c: Condition | None) -> tuple[str, str, str] | None:
        return (c.status, c.reason, c.message) if c else None

    if said(before) == said(after):
        return
    kube.patch_status(
        f"{API_GROUP}/{API_VERSION}", KIND, name, namespace, {"conditions": [c.to_k8s() for c in wanted]}
    )
    if after is not None and after.status == "False" and (before is None or before.status != "False"):
        kopf.event(body, type="Warning", reason="CredentialsRejected", message=after.message[:1024])
