"""Validation of a new profile: a load test Job once Ready, its numbers in status, SLOs judged.

The whole state is `status.validation` (what was measured, under which key, and the run before
it) and the Job itself: a reconcile starts the Job when the service is Ready on a profile with
no run under the current key, reads the Job's pod once it has finished, and afterwards only
judges the stored numbers, so a settled service costs nothing. Changing an SLO runs nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from inferator.api.inferenceservice import (
    ServiceLevelObjectives,
    Validation,
    ValidationLevel,
    ValidationRun,
    ValidationStatus,
)
from inferator.controllers import informers, kube
from inferator.controllers.redaction import scrub
from inferator.controllers.status import now_rfc3339
from inferator.render import validation as render
from inferator.render.groups import is_worker
from inferator.render.inferenceservice import PROFILE_ANNOTATION, READINESS_GATE, ServingInputs

log = logging.getLogger(__name__)
# A rollout that loses more than this against the previous profile's run is reported.
REGRESSION_RATIO = 0.10


@dataclass
class Outcome:
    """What a reconcile makes of validation: the status to write, conditions, events."""

    status: ValidationStatus | None
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    drop_conditions: tuple[str, ...] = ()
    # A run that finished on this pass (Succeeded): what the measurement store records.
    finished_run: ValidationRun | None = None


def headline(levels: list[ValidationLevel], slo: ServiceLevelObjectives | None) -> ValidationLevel | None:
    """The level an SLO is judged at: the one it names, else the highest measured."""
    if not levels:
        return None
    if slo is not None and slo.concurrency is not None:
        return next((lv for lv in levels if lv.concurrency == slo.concurrency), None)
    return max(levels, key=lambda lv: lv.concurrency)


def describe(level: ValidationLevel) -> str:
    return (
        f"at concurrency {level.concurrency}: TTFT p99 {level.ttft_p99_ms} ms, inter-token p99 "
        f"{level.inter_token_latency_p99_ms} ms, {level.output_tokens_per_second} output tokens/s"
    )


def judge(levels: list[ValidationLevel], slo: ServiceLevelObjectives) -> tuple[bool, str]:
    """Whether every target set holds at the judged level, and the numbers that say so."""
    level = headline(levels, slo)
    if level is None:
        return False, f"concurrency {slo.concurrency} was not measured"
    misses: list[str] = []
    holds: list[str] = []
    checks = (
        ("TTFT p99", level.ttft_p99_ms, slo.ttft_p99_ms, "ms", True),
        ("inter-token latency p99", level.inter_token_latency_p99_ms, slo.inter_token_latency_p99_ms, "ms", True),
        ("output tokens/s", level.output_tokens_per_second, slo.output_tokens_per_second, "", False),
    )  # fmt: skip
    for what, measured, target, unit, at_most in checks:
        if target is None:
            continue
        ok = measured is not None and (measured <= target if at_most else measured >= target)
        text = f"{what} {measured}{' ' + unit if unit else ''} ({'<=' if at_most else '>='} {target})"
        (holds if ok else misses).append(text)
    if level.failed:
        misses.append(f"{level.failed} of {level.requests + level.failed} requests failed")
    where = f"at concurrency {level.concurrency}"
    if misses:
        return False, f"misses {where}: {', '.join(misses)}" + (
            f"; holds: {', '.join(holds)}" if holds else ""
        )
    return True, f"meets {where}: {', '.join(holds) or 'no target set'}"


def regression(
    current: ValidationRun, previous: ValidationRun | None, slo: ServiceLevelObjectives | None
) -> str:
    """'' unless the new profile's run is worse than the previous profile's at the same level."""
    if previous is None or previous.state != "Succeeded" or previous.profile == current.profile:
        return ""
    new = headline(current.levels, slo)
    old = next((lv for lv in previous.levels if new and lv.concurrency == new.concurrency), None)
    if new is None or old is None:
        return ""
    worse = []
    if old.output_tokens_per_second and (new.output_tokens_per_second or 0) < old.output_tokens_per_second * (
        1 - REGRESSION_RATIO
    ):
        worse.append(f"output tokens/s {new.output_tokens_per_second} (was {old.output_tokens_per_second})")
    if old.ttft_p99_ms and (new.ttft_p99_ms or 0) > old.ttft_p99_ms * (1 + REGRESSION_RATIO):
        worse.append(f"TTFT p99 {new.ttft_p99_ms} ms (was {old.ttft_p99_ms} ms)")
    if not worse:
        return ""
    return (f"profile {current.profile} is worse than {previous.profile} at concurrency {new.concurrency}: "
            + ", ".join(worse))  # fmt: skip


def parse_report(message: str) -> tuple[list[ValidationLevel], dict[str, Any], str]:
    """The termination message of `inferator validate`: levels, KV-cache figures, error."""
    try:
        report = json.loads(message)
    except ValueError:
        return [], {}, scrub(message.strip())[:500] or "the validation pod wrote no report"
    if not isinstance(report, dict):
        return [], {}, "the validation pod's report is not an object"
    levels = []
    for raw in report.get("levels") or []:
        try:
            levels.append(ValidationLevel.model_validate(raw))
        except ValueError:
            continue
    kv = {k: report[k] for k in ("kvCacheIdle", "kvCachePeak", "kvCacheTokens") if report.get(k) is not None}
    return levels, kv, scrub(str(report.get("error") or ""))


def finished(job: dict[str, Any]) -> str | None:
    """'Complete' or 'Failed' once the Job controller says so."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    return None


def _pod_report(namespace: str, job_name: str) -> str:
    """The validate container's termination message (read once, when the Job has finished)."""
    for pod in kube.list_objects("v1", "Pod", namespace, f"batch.kubernetes.io/job-name={job_name}"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == "validate" and terminated.get("message"):
                return str(terminated["message"])
    return ""


def target_pod(pods: list[dict[str, Any]], profile: str) -> dict[str, Any] | None:
    """A ready pod of the profile (gate open), not going away."""
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        if is_worker(meta.get("labels") or {}):
            continue  # a multi-node group's worker: its leader serves the API
        if (
            not meta.get("deletionTimestamp")
            and (meta.get("annotations") or {}).get(PROFILE_ANNOTATION) == profile
            and conditions.get("Ready") == "True"
            and conditions.get(READINESS_GATE) == "True"
            and status.get("podIP")
        ):
            return pod
    return None


def _complete(
    run: ValidationStatus, job: dict[str, Any], namespace: str, spec: Validation
) -> ValidationStatus:
    state = finished(job)
    levels, kv, error = parse_report(_pod_report(namespace, run.job or ""))
    if state == "Failed" and not error:
        why: dict[str, Any] = next(
            (c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") == "Failed"), {}
        )
        error = f"the Job failed: {why.get('reason', '')} {why.get('message', '')}".strip()
    ok = state == "Complete" and levels and not error
    return run.model_copy(update={
        "state": "Succeeded" if ok else "Failed", "completed_at": now_rfc3339(), "levels": levels,
        "kv_cache_idle": _round(kv.get("kvCacheIdle")), "kv_cache_peak": _round(kv.get("kvCachePeak")),
        "kv_cache_tokens": kv.get("kvCacheTokens"),
        "message": None if ok else (error or "the load test reported no results"),
    })  # fmt: skip


def _round(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) else None


def step(
    inputs: ServingInputs,
    status: ValidationStatus | None,
    ready: bool,
    pods: list[dict[str, Any]],
    view: informers.View,
    owner: list[dict[str, Any]],
    generation: int,
    estimated_kv_tokens: int | None,
) -> Outcome:
    """One reconcile's worth of validation. Writes at most one Job; reads the Job's pod only on
    the pass that finds it finished."""
    spec, profile = inputs.spec.validation, inputs.selection.profile
    assert profile is not None
    if spec is None or not spec.enabled:
        return Outcome(status, drop_conditions=("Validated", "MeetsSLO"))
    out = Outcome(status)
    if profile.task != "generate":
        out.conditions["Validated"] = ("False", "NotSupported",
                                       f"validation load-tests text generation; a {profile.task} model is not measured")  # fmt: skip
        return _slo_conditions(out, spec, None)
    key = render.validation_key(inputs, spec)
    run = status if status is not None and status.key == key and status.profile == profile.name else None
    if run is not None and run.state == "Failed" and run.generation not in (None, generation):
        run = None  # the spec changed since the run failed: measure again (a new Job)
    if run is None:
        run = _start(inputs, spec, status, key, ready, pods, view, owner, estimated_kv_tokens, generation)
        if run is None:
            out.conditions["Validated"] = ("Unknown", "WaitingForReady",
                                           f"the load test of profile {profile.name} starts once a pod of it is Ready")  # fmt: skip
            return _slo_conditions(out, spec, None)
    elif run.state == "Running":
        job = view.get("batch/v1", "Job", run.job or "", inputs.namespace)
        if job is None:
            run = run.model_copy(update={"state": "Failed", "completed_at": now_rfc3339(),
                                         "message": f"the validation Job {run.job} was deleted before it finished"})  # fmt: skip
        elif finished(job):
            run = _complete(run, job, inputs.namespace, spec)
            out.events += _events_on_completion(run, spec)
            out.finished_run = run if run.state == "Succeeded" else None
    out.status = run
    if run.state == "Running":
        out.conditions["Validated"] = (
            "Unknown",
            "Running",
            f"load test Job {run.job} is measuring profile {run.profile}",
        )
    elif run.state == "Failed":
        out.conditions["Validated"] = ("False", "ValidationFailed", f"profile {run.profile}: {run.message}")
    else:
        out.conditions["Validated"] = ("True", "Measured", _measured_message(run, spec))
    _slo_conditions(out, spec, run)
    _keep_previous(out, spec, run, generation)
    return out


def _start(
    inputs: ServingInputs,
    spec: Validation,
    status: ValidationStatus | None,
    key: str,
    ready: bool,
    pods: list[dict[str, Any]],
    view: informers.View,
    owner: list[dict[str, Any]],
    estimated_kv_tokens: int | None,
    generation: int,
) -> ValidationStatus | None:
    """Create the Job for `key` (or adopt it, when an earlier pass created it and its status
    write was lost); the status of the new run, with the old one kept as `previous`."""
    profile = inputs.selection.profile
    assert profile is not None
    name = render.job_name(inputs.name, key, generation)
    job = view.get("batch/v1", "Job", name, inputs.namespace)
    if job is None:
        pod = target_pod(pods, profile.name) if ready else None
        if pod is None:
            return None
        manifest = render.render_job(inputs, spec, key, pod["status"]["podIP"], generation)
        manifest["metadata"]["ownerReferences"] = owner
        informers.remember_write(kube.apply(manifest))
        log.info("InferenceService %s/%s: validation Job %s started against pod %s", inputs.namespace,
                 inputs.name, name, pod["metadata"]["name"])  # fmt: skip
    previous = status.previous if status is not None else None
    if status is not None and status.profile != profile.name and status.state == "Succeeded":
        previous = ValidationRun.model_validate(
            status.model_dump(exclude={"previous", "rejected_profile", "rejected_generation"})
        )
    return ValidationStatus(
        profile=profile.name, key=key, state="Running", job=name, generation=generation, started_at=now_rfc3339(),
        estimated_kv_cache_tokens=estimated_kv_tokens, previous=previous,
        rejected_profile=status.rejected_profile if status else None,
        rejected_generation=status.rejected_generation if status else None,
    )  # fmt: skip


def _measured_message(run: ValidationRun, spec: Validation) -> str:
    parts = [f"profile {run.profile} " + "; ".join(describe(lv) for lv in run.levels)]
    if run.kv_cache_peak is not None:
        parts.append(f"KV cache {run.kv_cache_idle or 0:.1%} at idle, {run.kv_cache_peak:.1%} at peak"
                     + (f" of {run.kv_cache_tokens} tokens" if run.kv_cache_tokens else "")
                     + (f" (estimated {run.estimated_kv_cache_tokens})" if run.estimated_kv_cache_tokens else ""))  # fmt: skip
        if run.kv_cache_peak > 1 - spec.min_kv_cache_headroom:
            parts.append(f"headroom under {spec.min_kv_cache_headroom:.0%}")
    return "; ".join(parts)


def _events_on_completion(run: ValidationStatus, spec: Validation) -> list[tuple[str, str, str]]:
    events = []
    if run.state != "Succeeded":
        events.append(("Warning", "ValidationFailed", f"profile {run.profile}: {run.message}"))
        return events
    events.append(("Normal", "Validated", _measured_message(run, spec)))
    if worse := regression(run, run.previous, spec.slo):
        events.append(("Warning", "ValidationRegressed", worse))
    if run.kv_cache_peak is not None and run.kv_cache_peak > 1 - spec.min_kv_cache_headroom:
        events.append(("Warning", "LowKVCacheHeadroom",
                       f"profile {run.profile}: KV cache {run.kv_cache_peak:.0%} used at the load's peak "
                       f"(headroom under {spec.min_kv_cache_headroom:.0%})"))  # fmt: skip
    return events


def _slo_conditions(out: Outcome, spec: Validation, run: ValidationStatus | None) -> Outcome:
    if spec.slo is None:
        out.drop_conditions = ("MeetsSLO",)
        return out
    if run is None or run.state == "Running":
        out.conditions["MeetsSLO"] = ("Unknown", "NotMeasured", "waiting for the load test")
        return out
    if run.state == "Failed":
        out.conditions["MeetsSLO"] = ("Unknown", "NotMeasured", f"the load test failed: {run.message}")
        return out
    meets, message = judge(run.levels, spec.slo)
    run.meets_slo = meets
    left = (f"; profile {run.rejected_profile} missed it and was left (onSLOFailure: KeepPreviousProfile)"
            if run.rejected_profile and run.rejected_profile != run.profile else "")  # fmt: skip
    out.conditions["MeetsSLO"] = ("True" if meets else "False", "SLOMet" if meets else "SLOMissed",
                                  f"profile {run.profile} {message}{left}")  # fmt: skip
    return out


def _keep_previous(out: Outcome, spec: Validation, run: ValidationStatus, generation: int) -> None:
    """onSLOFailure KeepPreviousProfile: a new profile that misses the SLO, where the previous
    one met it, is left for the previous one until the spec changes (the next selection pins
    it, see `kept_profile`). The previous run becomes the current one again, so its numbers
    are not measured twice."""
    previous = run.previous
    if (
        spec.on_slo_failure != "KeepPreviousProfile"
        or spec.slo is None
        or run.state != "Succeeded"
        or run.meets_slo is not False
        or previous is None
        or previous.state != "Succeeded"
        or previous.profile == run.profile
        or not judge(previous.levels, spec.slo)[0]
    ):
        return
    rejected = ValidationRun.model_validate(
        run.model_dump(exclude={"previous", "rejected_profile", "rejected_generation"})
    )
    out.status = ValidationStatus(
        **previous.model_dump(),
        previous=rejected,
        rejected_profile=run.profile,
        rejected_generation=generation,
    )
    out.events.append(("Warning", "ProfileRejected",
                       f"profile {run.profile} missed the SLO; going back to {previous.profile}"))  # fmt: skip
    _slo_conditions(out, spec, out.status)
    out.conditions["Validated"] = ("True", "Measured", _measured_message(out.status, spec))


def kept_profile(status: ValidationStatus | None, generation: int) -> str | None:
    """The profile selection must keep for this generation because a newer one was rejected."""
    if status is None or status.rejected_generation != generation or not status.rejected_profile:
        return None
    return status.profile if status.profile != status.rejected_profile else None
