"""Validation: the Job rendered, its report parsed, SLOs judged, regressions and rejections, measured ranking.

Pure functions over real selections (no cluster); the Job running `vllm bench serve` for real is
in tests/runtime/test_validation.py and tests/cluster/test_validation.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from inferator.api.inferenceservice import (
    InferenceServiceSpec,
    ServiceLevelObjectives,
    Validation,
    ValidationLevel,
    ValidationRun,
    ValidationStatus,
)
from inferator.api.modelcache import Ownership
from inferator.controllers import measurements
from inferator.controllers import validation as ctl
from inferator.controllers.status import with_removals
from inferator.profiles import facts_from_config, select_profile
from inferator.profiles.measured import Measured
from inferator.render import inferenceservice as render
from inferator.render import validation as vrender
from inferator.runtime import validate as runner
from inferator.settings import OperatorSettings
from tests.unit.test_render_inferenceservice import LLAMA_8B, NODES

FACTS = facts_from_config(LLAMA_8B, weight_bytes=16_060_522_496, parameter_count=8_030_261_248)


def inputs(**spec: Any) -> render.ServingInputs:
    parsed = InferenceServiceSpec.model_validate(
        {"modelCacheRef": {"name": "llama"}, "validation": {}, **spec}
    )
    selection = select_profile(FACTS, NODES, parsed, served_model_name="llama")
    assert selection.ok, selection.message
    return render.ServingInputs(
        name="chat", namespace="team-a", spec=parsed, selection=selection, pvc_name="llama-weights",
        ownership=Ownership(run_as_user=1000, run_as_group=1000, fs_group=1000),
        settings=OperatorSettings(), cache_revision="abc:main",
    )  # fmt: skip


def job(i: render.ServingInputs | None = None) -> dict[str, Any]:
    i = i or inputs()
    assert i.spec.validation is not None
    return vrender.render_job(i, i.spec.validation, vrender.validation_key(i, i.spec.validation), "10.1.2.3")


def level(c: int, ttft: float, itl: float, tps: float, failed: int = 0) -> ValidationLevel:
    return ValidationLevel(concurrency=c, requests=32, failed=failed, ttft_p99_ms=ttft,
                           inter_token_latency_p99_ms=itl, output_tokens_per_second=tps)  # fmt: skip


def run(profile: str, *levels: ValidationLevel, state: str = "Succeeded") -> ValidationRun:
    return ValidationRun.model_validate(
        {"profile": profile, "key": profile[:8], "state": state, "levels": [lv.to_k8s() for lv in levels]}
    )


# -- the Job ------------------------------------------------------------------------------------


def test_the_job_runs_restricted_without_a_token_and_reads_the_cache_as_its_owner() -> None:
    pod = job()["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["fsGroup"]) == (True, 1000, 1000)
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert {v["name"]: v for v in pod["volumes"]}["model"]["persistentVolumeClaim"] == {
        "claimName": "llama-weights", "readOnly": True}  # fmt: skip
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])  # the load generator needs no GPU
    assert c["terminationMessagePolicy"] == "File"


def test_the_job_measures_one_pod_at_each_level_with_the_served_name_and_is_bounded() -> None:
    i = inputs(validation={"concurrency": [8, 1, 8], "requestsPerLevel": 20, "timeoutSeconds": 300},
               serving={"servedModelName": "chat-model"})  # fmt: skip
    j = job(i)
    command = j["spec"]["template"]["spec"]["containers"][0]["command"]
    args = dict(zip(command[2::2], command[3::2], strict=False))
    assert command[:2] == ["inferator", "validate"]
    assert args["--url"].startswith("http://10.1.2.3:") and args["--model"] == "chat-model"
    assert args["--concurrency"] == "1,8" and args["--requests"] == "20"
    assert j["spec"]["activeDeadlineSeconds"] == 300 and j["spec"]["backoffLimit"] == 0
    assert len(j["metadata"]["name"]) <= 63
    labels = j["spec"]["template"]["metadata"]["labels"]
    # The pod is not a serving pod (no service label: it would count as a replica) ...
    assert render.SERVICE_LABEL not in labels and labels[render.VALIDATION_LABEL] == "chat"
    # ... while the Job is the service's child (watched, owned).
    assert j["metadata"]["labels"][render.SERVICE_LABEL] == "chat"


def test_the_key_changes_with_what_is_measured_and_not_with_the_slo() -> None:
    base = inputs()
    assert base.spec.validation is not None
    key = vrender.validation_key(base, base.spec.validation)
    slo = inputs(validation={"slo": {"ttftP99Ms": 100}})
    assert slo.spec.validation is not None
    assert vrender.validation_key(slo, slo.spec.validation) == key
    heavier = inputs(validation={"outputTokens": 512})
    assert heavier.spec.validation is not None
    assert vrender.validation_key(heavier, heavier.spec.validation) != key
    other = inputs(selector={"engines": ["sglang"]})
    assert other.spec.validation is not None and other.selection.profile != base.selection.profile
    assert vrender.validation_key(other, other.spec.validation) != key


def test_an_api_key_reaches_the_benchmark_from_the_secret_never_as_a_value() -> None:
    env = job(inputs(serving={"apiKeySecret": {"name": "chat-key"}}))["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    key = next(e for e in env if e["name"] == "OPENAI_API_KEY")
    assert key == {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "chat-key", "key": "api-key"}},
    }


def test_the_load_generator_image_has_vllm_whatever_the_engine() -> None:
    settings = OperatorSettings()
    assert job()["spec"]["template"]["spec"]["containers"][0]["image"] == settings.engine_images["vllm"]
    sglang = inputs(selector={"engines": ["sglang"]})
    assert vrender.bench_image(sglang) == settings.engine_images["vllm"]
    own = inputs(image="registry.corp/vllm-runtime:1")
    assert vrender.bench_image(own) == "registry.corp/vllm-runtime:1"


def test_a_narrowed_network_policy_admits_the_services_own_validation_pods() -> None:
    i = inputs(networking={"allowedPodLabels": {"team": "a"}})
    policy = next(o for o in render.render_children(i) if o["kind"] == "NetworkPolicy")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {render.VALIDATION_LABEL: "chat"}}} in peers
    without = inputs(networking={"allowedPodLabels": {"team": "a"}}, validation=None)
    policy = next(o for o in render.render_children(without) if o["kind"] == "NetworkPolicy")
    assert render.VALIDATION_LABEL not in json.dumps(policy)


def test_the_schema_refuses_an_slo_level_that_is_not_measured() -> None:
    # pydantic mirrors the CEL rule only in the CRD; the model itself accepts it, the API server refuses it
    schema = json.dumps(Validation.model_json_schema())
    assert "slo.concurrency must be one of validation.concurrency" in schema
    with pytest.raises(ValidationError):
        Validation.model_validate({"concurrency": []})
    assert Validation.model_validate({"concurrency": [4, 1, 4]}).concurrency == [1, 4]


# -- the report ---------------------------------------------------------------------------------

BENCH_RESULT = {  # the keys of vllm.benchmarks.serve's result dictionary this reads
    "completed": 30, "failed": 2, "duration": 12.345, "output_throughput": 812.3456,
    "median_ttft_ms": 40.123, "p99_ttft_ms": 95.5, "median_itl_ms": 7.01, "p99_itl_ms": 21.9,
    "ttfts": [0.04] * 30,
}  # fmt: skip


def test_a_benchmark_result_is_summarised_in_milliseconds_and_tokens_per_second() -> None:
    assert runner.summarize(4, BENCH_RESULT) == {
        "concurrency": 4, "requests": 30, "failed": 2, "ttftP50Ms": 40.12, "ttftP99Ms": 95.5,
        "interTokenLatencyP50Ms": 7.01, "interTokenLatencyP99Ms": 21.9, "outputTokensPerSecond": 812.35,
        "durationSeconds": 12.35,
    }  # fmt: skip


def test_kv_cache_use_and_size_are_read_from_the_engines_metrics() -> None:
    page = (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0\n'
    )
    assert runner.kv_usage(page) == 0.5
    assert runner.kv_cache_tokens(page) == 16_000
    assert runner.kv_usage("# TYPE sglang:token_usage gauge\nsglang:token_usage 0.75\n") == 0.75
    assert runner.kv_usage("# TYPE other gauge\nother 1\n") is None


def test_the_termination_message_stays_within_the_kubelets_limit_as_valid_json() -> None:
    levels = [runner.summarize(c, BENCH_RESULT) for c in range(1, 60)]
    text = runner.termination_message({"levels": levels, "kvCacheIdle": 0.0})
    assert len(text.encode()) <= runner.TERMINATION_LIMIT
    report = json.loads(text)
    assert report["truncated"] is True and report["levels"][0]["concurrency"] == 1


def test_a_report_is_parsed_and_garbage_becomes_a_message_not_a_crash() -> None:
    text = json.dumps({"levels": [runner.summarize(1, BENCH_RESULT), {"bad": 1}], "kvCachePeak": 0.4})
    levels, kv, error = ctl.parse_report(text)
    assert [lv.concurrency for lv in levels] == [1] and kv == {"kvCachePeak": 0.4} and error == ""
    assert ctl.parse_report("")[2] == "the validation pod wrote no report"
    assert ctl.parse_report("Traceback: boom")[2] == "Traceback: boom"
    assert ctl.parse_report(json.dumps({"error": "ValueError: no server"}))[2] == "ValueError: no server"


def test_the_validate_command_reports_an_unreachable_server_in_its_termination_log(tmp_path: Any) -> None:
    log = tmp_path / "termination-log"
    code = runner.main(["--url", "http://127.0.0.1:9", "--model", "m", "--tokenizer", str(tmp_path),
                        "--concurrency", "1", "--requests", "1", "--termination-log", str(log)])  # fmt: skip
    report = json.loads(log.read_text())
    assert code == 1 and report["levels"] == [] and report["error"]


# -- SLOs ---------------------------------------------------------------------------------------


def test_slos_are_judged_at_their_level_with_the_numbers_in_the_message() -> None:
    levels = [level(1, 50, 8, 90), level(4, 120, 12, 300)]
    meets, message = ctl.judge(levels, ServiceLevelObjectives(ttft_p99_ms=150, output_tokens_per_second=250))
    assert meets and "at concurrency 4" in message and "TTFT p99 120.0 ms (<= 150.0)" in message
    meets, message = ctl.judge(levels, ServiceLevelObjectives(concurrency=1, output_tokens_per_second=100))
    assert not meets and "output tokens/s 90.0 (>= 100.0)" in message and "at concurrency 1" in message
    meets, message = ctl.judge(levels, ServiceLevelObjectives(inter_token_latency_p99_ms=10))
    assert not meets and "inter-token latency p99 12.0 ms" in message
    meets, _ = ctl.judge([level(4, 10, 1, 999, failed=3)], ServiceLevelObjectives(ttft_p99_ms=100))
    assert not meets  # failed requests never meet an SLO
    meets, message = ctl.judge(levels, ServiceLevelObjectives(concurrency=16, ttft_p99_ms=100))
    assert not meets and "16 was not measured" in message


def test_a_rollout_that_measures_worse_than_the_previous_profile_is_a_regression() -> None:
    old = run("vllm-h100-bf16-tp8-latency", level(4, 100, 10, 1000))
    new = run("vllm-h100-bf16-tp4-latency", level(4, 100, 10, 650))
    assert "output tokens/s 650.0 (was 1000.0)" in ctl.regression(new, old, None)
    assert ctl.regression(run("x", level(4, 105, 10, 950)), old, None) == ""  # within 10 %
    assert "TTFT p99 200.0 ms" in ctl.regression(run("x", level(4, 200, 10, 1000)), old, None)
    assert ctl.regression(new, None, None) == ""


def outcome_for(spec: dict[str, Any], current: ValidationRun, previous: ValidationRun | None) -> ctl.Outcome:
    validation = Validation.model_validate(spec)
    status = ValidationStatus(**current.model_dump(), previous=previous)
    out = ctl.Outcome(status)
    ctl._slo_conditions(out, validation, status)
    ctl._keep_previous(out, validation, status, generation=3)
    return out


def test_keep_previous_profile_goes_back_to_a_profile_that_met_the_slo() -> None:
    old = run("vllm-h100-bf16-tp8-latency", level(4, 100, 10, 1000))
    new = run("vllm-h100-bf16-tp4-latency", level(4, 100, 10, 650))
    spec = {"slo": {"outputTokensPerSecond": 800}, "onSLOFailure": "KeepPreviousProfile"}
    out = outcome_for(spec, new, old)
    assert out.status is not None
    assert out.status.profile == old.profile and out.status.rejected_profile == new.profile
    assert out.status.previous is not None and out.status.previous.profile == new.profile
    assert ctl.kept_profile(out.status, 3) == old.profile and ctl.kept_profile(out.status, 4) is None
    assert (
        out.conditions["MeetsSLO"][0] == "True" and "missed it and was left" in out.conditions["MeetsSLO"][2]
    )
    assert any(reason == "ProfileRejected" for _, reason, _ in out.events)
    # Report (the default) only reports
    reported = outcome_for({"slo": {"outputTokensPerSecond": 800}}, new, old)
    assert reported.status is not None and reported.status.profile == new.profile
    assert reported.conditions["MeetsSLO"][:2] == ("False", "SLOMissed")
    # and a previous profile that missed the SLO too is no better
    worse = run("vllm-h100-bf16-tp8-latency", level(4, 100, 10, 600))
    kept = outcome_for(spec, new, worse)
    assert kept.status is not None and kept.status.profile == new.profile


def test_removing_a_key_from_status_is_sent_as_null_in_the_merge_patch() -> None:
    old = {"validation": {"state": "Failed", "message": "boom", "levels": []}, "phase": "Ready"}
    patch = with_removals(old, {"validation": {"state": "Running"}})
    assert patch == {"validation": {"state": "Running", "message": None, "levels": None}}


# -- measured ranking ---------------------------------------------------------------------------


def test_rank_by_measured_puts_the_best_measured_profile_first_and_keeps_the_rest_static() -> None:
    spec = {
        "modelCacheRef": {"name": "llama"},
        "selector": {"optimizeFor": "throughput", "rankBy": "measured"},
    }
    parsed = InferenceServiceSpec.model_validate(spec)
    static = select_profile(FACTS, NODES, InferenceServiceSpec.model_validate(
        {**spec, "selector": {"optimizeFor": "throughput"}}))  # fmt: skip
    feasible = [c for c in static.candidates if c.feasible]
    assert len(feasible) >= 3
    first, third = feasible[0], feasible[2]
    # never measured: the static order
    assert select_profile(FACTS, NODES, parsed, measured={}).chosen == static.chosen
    seeded = {(first.name, first.pool.key): Measured(500.0), (third.name, third.pool.key): Measured(900.0)}
    chosen = select_profile(FACTS, NODES, parsed, measured=seeded)
    assert chosen.chosen is not None and (chosen.chosen.name, chosen.chosen.pool.key) == (
        third.name,
        third.pool.key,
    )
    ranked = [c for c in chosen.candidates if c.feasible]
    assert ranked[1].name == first.name  # measured ones first, then the rest in the static order
    assert [c.name for c in ranked[2:]] == [
        c.name for c in feasible if c.name not in (first.name, third.name)
    ]
    # a static selector ignores the numbers
    static_again = select_profile(FACTS, NODES, InferenceServiceSpec.model_validate(
        {**spec, "selector": {"optimizeFor": "throughput"}}), measured=seeded)  # fmt: skip
    assert static_again.chosen == static.chosen


def test_rank_by_measured_for_latency_prefers_the_lowest_ttft() -> None:
    parsed = InferenceServiceSpec.model_validate(
        {"modelCacheRef": {"name": "llama"}, "selector": {"rankBy": "measured"}}
    )
    static = [c for c in select_profile(FACTS, NODES, parsed).candidates if c.feasible]
    a, b = static[0], static[1]
    seeded = {
        (a.name, a.pool.key): Measured(900.0, ttft_p99_ms=300),
        (b.name, b.pool.key): Measured(400.0, ttft_p99_ms=80),
    }
    chosen = select_profile(FACTS, NODES, parsed, measured=seeded).chosen
    assert chosen is not None and chosen.name == b.name


def test_measurements_are_stored_per_model_profile_and_pool_and_bad_entries_are_skipped() -> None:
    good = run("vllm-h100-bf16-tp1-latency", level(1, 40, 5, 100), level(4, 90, 9, 320))
    doc = measurements.entry("hf://meta/llama@abc", good.profile, "h100-80gb", good, None, "team-a/chat")
    assert doc is not None and doc["concurrency"] == 4 and doc["outputTokensPerSecond"] == 320
    assert measurements.entry("m", "p", "pool", run("p", state="Failed"), None, "a/b") is None
    data = {
        measurements.entry_key(doc["model"], doc["profile"], doc["pool"]): json.dumps(doc),
        "m-other": json.dumps({**doc, "model": "hf://other@1"}),
        "m-garbage": "{not json",
        "m-partial": json.dumps({"model": doc["model"], "profile": "x"}),
    }
    found = measurements.measured_for(data, "hf://meta/llama@abc")
    assert found == {(good.profile, "h100-80gb"): Measured(320.0, ttft_p99_ms=90.0, concurrency=4)}
    assert measurements.model_identity("hf://meta/llama", None, "c0ffee") == "hf://meta/llama@c0ffee"


def test_a_failed_run_is_kept_until_the_spec_changes_then_measured_again() -> None:
    from inferator.controllers.informers import View

    i = inputs()
    assert i.spec.validation is not None and i.selection.profile is not None
    key = vrender.validation_key(i, i.spec.validation)
    failed = ValidationStatus(profile=i.selection.profile.name, key=key, state="Failed", generation=1,
                              job=vrender.job_name("chat", key, 1), message="the Job failed: DeadlineExceeded")  # fmt: skip
    empty = View({}, {}, {}, {}, {}, {})

    def step(generation: int) -> ctl.Outcome:
        return ctl.step(i, failed, ready=False, pods=[], view=empty, owner=[], generation=generation,
                        estimated_kv_tokens=None)  # fmt: skip

    same = step(1)
    assert same.conditions["Validated"][:2] == ("False", "ValidationFailed") and same.status == failed
    changed = step(2)  # nothing Ready to measure yet: waits, and the failed run no longer stands
    assert changed.conditions["Validated"][:2] == ("Unknown", "WaitingForReady")
    assert (
        vrender.job_name("chat", key, 2) != failed.job and len(vrender.job_name("x" * 63, key, 12345)) == 63
    )


def test_a_run_waiting_for_a_pod_is_polled_unless_the_service_is_at_zero() -> None:
    from inferator.controllers.inferenceservice import settled

    waiting = {"type": "Validated", "status": "Unknown", "reason": "WaitingForReady"}
    ready = {"type": "Ready", "status": "True", "reason": "Serving"}
    status = {"observedGeneration": 2, "conditions": [ready, waiting], "replicas": 1, "readyReplicas": 1}
    assert not settled(status, 2)  # a pod of the profile is on its way: poll
    at_zero = {
        **status,
        "replicas": 0,
        "readyReplicas": 0,
        "conditions": [{**ready, "reason": "ScaledToZero"}, waiting],
    }
    assert settled(at_zero, 2)  # nothing coming: no poll; scaling up is an event of its own
    measured = {**status, "conditions": [ready, {**waiting, "status": "True", "reason": "Measured"}]}
    assert settled(measured, 2)
