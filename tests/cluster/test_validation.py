"""Validation on the runner node: a real vLLM-CPU service load-tested by its validation Job.

The Job really runs `inferator validate` (vLLM's benchmark) against the serving pod; the operator
reads its report from the pod's termination message into status, judges the SLOs, records the
numbers in the measurements ConfigMap, and a service ranking by measurements follows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferator.controllers import measurements
from inferator.dev import demo
from inferator.dev.cluster import LocalCluster
from inferator.dev.tiny_model import vllm_python
from inferator.render.inferenceservice import VALIDATION_LABEL
from tests.cluster.conftest import OperatorProcess, wait_for

pytestmark = pytest.mark.cluster
TINY = demo.TINY
OPERATOR_NAMESPACE = "inferator-system"  # the operator's default (no POD_NAMESPACE in the tests)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


@pytest.mark.timeout(1200)  # a vLLM-CPU cold start (1-3 min here, more on a busy machine) and the load test
def test_a_new_profile_is_load_tested_judged_against_slos_and_its_numbers_rank_profiles(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, tmp_path: Path
) -> None:
    vllm_python()  # fails with the install hint when .venv-vllm is missing
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)  # shared by tests; may exist
    try:
        demo.serve_tiny_model(cluster, namespace, demo.StepLog(lambda _line: None), tmp_path)
    finally:
        demo.stop_mirror(cluster)
    static_profile = kubectl_json(f"inferenceservice/{TINY}", "-n", namespace)["status"]["profile"]

    # Validation asked for on the running service: a Job measures the pod, nothing restarts.
    validation = {"concurrency": [1, 2], "requestsPerLevel": 6, "inputTokens": 32, "outputTokens": 16,
                  "timeoutSeconds": 600, "slo": {"ttftP99Ms": 600000, "outputTokensPerSecond": 0.01}}  # fmt: skip
    cluster.kubectl("patch", "inferenceservice", TINY, "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"validation": validation}}))  # fmt: skip

    def measured() -> dict[str, Any] | None:
        status = kubectl_json(f"inferenceservice/{TINY}", "-n", namespace).get("status") or {}
        state = (status.get("validation") or {}).get("state")
        assert state != "Failed", status["validation"]
        return status if state == "Succeeded" and _condition(status, "MeetsSLO") else None

    status = wait_for(measured, timeout_s=600, interval_s=2, what="the validation run's numbers in status")
    run = status["validation"]
    print("validation status:", json.dumps({"validation": run, "conditions": status["conditions"]}, indent=2))
    assert run["profile"] == static_profile == status["profile"]
    assert [lv["concurrency"] for lv in run["levels"]] == [1, 2]
    for lv in run["levels"]:
        assert lv["requests"] == 6 and lv["failed"] == 0
        assert lv["ttftP99Ms"] > 0 and lv["interTokenLatencyP99Ms"] > 0 and lv["outputTokensPerSecond"] > 0
    assert run["kvCacheIdle"] == 0.0 and run["kvCachePeak"] > 0 and run["kvCacheTokens"] > 0
    assert run["estimatedKvCacheTokens"] > 0  # what the profile was chosen with, beside the measured size
    assert run["meetsSLO"] is True
    validated, meets = _condition(status, "Validated"), _condition(status, "MeetsSLO")
    assert validated["status"] == "True" and "at concurrency 2: TTFT p99" in validated["message"]
    assert meets["status"] == "True" and meets["reason"] == "SLOMet", meets
    assert _condition(status, "Ready")["status"] == "True"
    jobs = kubectl_json("jobs", "-n", namespace, "-l", f"{VALIDATION_LABEL}={TINY}")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [run["job"]]
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    events = kubectl_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={TINY}")[
        "items"
    ]
    assert any(e["reason"] == "Validated" for e in events)

    # A target above what was measured: MeetsSLO flips on the stored numbers, no second run.
    tighter = {**validation, "slo": {"ttftP99Ms": 0.001}}
    cluster.kubectl("patch", "inferenceservice", TINY, "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"validation": tighter}}))  # fmt: skip

    def missed() -> dict[str, Any] | None:
        status = kubectl_json(f"inferenceservice/{TINY}", "-n", namespace).get("status") or {}
        return status if _condition(status, "MeetsSLO").get("status") == "False" else None

    status = wait_for(missed, timeout_s=60, what="MeetsSLO False under a target nothing meets")
    meets = _condition(status, "MeetsSLO")
    assert (
        meets["reason"] == "SLOMissed" and "TTFT p99" in meets["message"] and "(<= 0.001)" in meets["message"]
    )
    assert status["validation"]["key"] == run["key"] and status["validation"]["meetsSLO"] is False
    assert len(kubectl_json("jobs", "-n", namespace, "-l", f"{VALIDATION_LABEL}={TINY}")["items"]) == 1

    # The run is kept per (model, profile, pool) in the operator's namespace ...
    store = kubectl_json(f"configmap/{measurements.CONFIGMAP}", "-n", OPERATOR_NAMESPACE)
    ours = [
        json.loads(v) for v in store["data"].values() if json.loads(v)["service"] == f"{namespace}/{TINY}"
    ]
    assert len(ours) == 1 and ours[0]["profile"] == static_profile and ours[0]["concurrency"] == 2
    # ... and a service ranking by measurements follows them: seed a better number for the
    # other CPU profile (never run here) and that one is chosen over the static first choice.
    other = static_profile.replace("-latency", "-throughput")
    assert other != static_profile
    seeded = {
        **ours[0],
        "profile": other,
        "outputTokensPerSecond": 1e6,
        "ttftP99Ms": 0.01,
        "service": "seeded",
    }
    key = measurements.entry_key(seeded["model"], other, seeded["pool"])
    cluster.kubectl("patch", "configmap", measurements.CONFIGMAP, "-n", OPERATOR_NAMESPACE, "--type=merge",
                    "-p", json.dumps({"data": {key: json.dumps(seeded)}}))  # fmt: skip
    svc = kubectl_json(f"inferenceservice/{TINY}", "-n", namespace)
    ranked = {"apiVersion": svc["apiVersion"], "kind": "InferenceService",
              "metadata": {"name": "ranked", "namespace": namespace},
              "spec": {**{k: v for k, v in svc["spec"].items() if k not in ("validation", "selector")},
                       "replicas": 0, "selector": {"engines": ["vllm-cpu"], "rankBy": "measured"}}}  # fmt: skip
    cluster.apply([ranked])

    def chosen() -> str | None:
        status = kubectl_json("inferenceservice/ranked", "-n", namespace).get("status") or {}
        return status.get("profile")

    assert wait_for(chosen, timeout_s=60, what="a profile for the ranked service") == other

    # `inferator plan` reading the live cluster shows the numbers beside the estimates.
    nodes = tmp_path / "cpu-node.yaml"
    nodes.write_text(yaml.safe_dump({"nodes": [{"name": "cpu", "cpu": 2, "memory": "8Gi"}]}))
    planned = subprocess.run(
        [sys.executable, "-m", "inferator.cli", "plan", "--model-cache", f"{namespace}/{TINY}",
         "--kubeconfig", str(cluster.kubeconfig), "--nodes", str(nodes), "--engine", "vllm-cpu",
         "--max-model-len", "1024", "--rank-by", "measured", "-o", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["profile"]["name"] == other
    by_name = {c["name"]: c for c in plan["candidates"]}
    assert by_name[other]["measured"]["outputTokensPerSecond"] == 1e6
    assert by_name[static_profile]["measured"]["concurrency"] == 2 and by_name[static_profile]["estimates"]
