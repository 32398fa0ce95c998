"""InferenceService controller on the simulated GPU nodes: selection, placement, drift, no writes at rest."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest

from inferator.api import ModelCacheSpec
from inferator.argocd import health
from inferator.dev.cluster import LocalCluster
from inferator.dev.nodes import GpuModel, NodeSpec, node_manifest
from inferator.render.modelcache import content_hash
from tests.cluster.conftest import OperatorProcess, operator_writes, wait_for, wait_until_quiet

pytestmark = pytest.mark.cluster

LLAMA_8B = {"architecture": "LlamaForCausalLM", "modelType": "llama", "numLayers": 32, "hiddenSize": 4096,
            "numAttentionHeads": 32, "numKeyValueHeads": 8, "headDim": 128, "maxPositionEmbeddings": 131072,
            "vocabSize": 128256, "dtype": "bfloat16", "parameterCount": 8030261248, "weightBytes": 16060522496}  # fmt: skip
LLAMA_405B = {**LLAMA_8B, "numLayers": 126, "hiddenSize": 16384, "numAttentionHeads": 128,
              "parameterCount": 405853388800, "weightBytes": 811706777600}  # fmt: skip
GROUP = "inferator.dev/v1alpha1"


def ready_cache(
    cluster: LocalCluster, namespace: str, name: str, facts: dict[str, Any], model_error: str | None = None
) -> None:
    """A ModelCache whose prefetch already reported (as the Job would, through its Role).

    With `model_error`, the Job reported sound files whose facts it could not read.
    """
    spec = {"source": {"uri": f"hf://org/{name}"}, "storage": {"size": "20Gi"}}
    cluster.apply(
        [
            {
                "apiVersion": GROUP,
                "kind": "ModelCache",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        ]
    )
    status = {"contentHash": content_hash(ModelCacheSpec.model_validate(spec)), "sizeBytes": facts["weightBytes"],
              "resolvedRevision": "0123abc", "model": facts}  # fmt: skip
    if model_error is not None:
        status = {**status, "model": None, "modelError": model_error}
    import json

    cluster.kubectl("patch", "mcache", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip


def service(namespace: str, name: str, cache: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "InferenceService", "metadata": {"name": name, "namespace": namespace},
            "spec": {"modelCacheRef": {"name": cache}, **spec}}  # fmt: skip


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


@pytest.fixture
def llama(cluster: LocalCluster, namespace: str) -> str:
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    return "llama-8b"


def test_service_is_placed_on_the_selected_pool_under_restricted_psa(
    cluster: LocalCluster, namespace: str, llama: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([service(namespace, "chat", llama, serving={"maxModelLen": 8192})])
    svc = wait_for(lambda: (o := kubectl_json("infsvc/chat", "-n", namespace)).get("status", {}).get("profile") and o,
                   timeout_s=90, what="profile selected")  # fmt: skip
    profile = svc["status"]["profile"]
    assert condition(svc, "ProfileSelected")["status"] == "True"
    assert condition(svc, "CacheReady")["status"] == "True"
    assert svc["status"]["estimates"]["kvCacheTokens"] > 0
    assert svc["status"]["candidates"][0]["name"] == profile
    deploy = kubectl_json("deploy/chat", "-n", namespace)
    pod_spec = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert pod_spec["readinessGates"] == [{"conditionType": "inferator.dev/model-ready"}]
    gpus = int(pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert f"-tp{gpus}-" in profile
    # The real scheduler places the pod on a node of the profile's GPU product.
    pod = wait_for(lambda: next((p for p in kubectl_json("pods", "-n", namespace, "-l", "inferator.dev/inference-service=chat")["items"]
                                 if p["spec"].get("nodeName")), None), timeout_s=60, what="pod scheduled")  # fmt: skip
    node = kubectl_json(f"node/{pod['spec']['nodeName']}")
    short = profile.split("-")[1]
    assert short in node["metadata"]["labels"]["nvidia.com/gpu.product"].lower().replace("nvidia-", "")
    out = cluster.kubectl("get", "infsvc", "-n", namespace).stdout
    assert profile in out
    # Rolling out or Ready, the operator put nothing on the object but its status: no
    # finalizer to block a delete while the operator is away, no kopf annotations.
    meta = kubectl_json("infsvc/chat", "-n", namespace)["metadata"]
    assert not meta.get("finalizers"), meta
    assert not [k for k in meta.get("annotations") or {} if k.startswith("inferator.dev/")], meta


def test_model_that_fits_nowhere_proceeds_when_a_pool_that_fits_is_added(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    ready_cache(cluster, namespace, "llama-405b", LLAMA_405B)
    cluster.apply(
        [
            service(
                namespace,
                "big",
                "llama-405b",
                selector={"precisions": ["bf16"]},
                serving={"maxModelLen": 8192},
            )
        ]
    )
    svc = wait_for(lambda: (o := kubectl_json("infsvc/big", "-n", namespace)).get("status", {}).get("phase") == "NoCompatibleProfile" and o,
                   timeout_s=60, what="NoCompatibleProfile")  # fmt: skip
    assert health(svc)["status"] == "Degraded"  # Argo CD's view of the live object
    message = condition(svc, "ProfileSelected")["message"]
    assert "GiB" in message, message
    assert any(not c["feasible"] and c["reason"] for c in svc["status"]["candidates"])
    b200 = NodeSpec(
        "gpu-b200-test", GpuModel("NVIDIA-B200", 183359, 10, 0, "blackwell"), 8, 224, 2048, "p6-b200.48xlarge"
    )
    try:
        cluster.apply([node_manifest(b200)])
        svc = wait_for(lambda: (o := kubectl_json("infsvc/big", "-n", namespace)).get("status", {}).get("profile") and o,
                       timeout_s=90, what="profile once a B200 pool exists")  # fmt: skip
        assert "-b200-bf16-tp8-" in svc["status"]["profile"]
        assert kubectl_json("deploy/big", "-n", namespace)["spec"]["template"]["spec"]["affinity"]
    finally:
        cluster.kubectl("delete", "node", b200.name, "--wait=false", check=False)


def test_a_model_the_planner_cannot_price_is_reported_not_waited_for(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    why = "FooForCausalLM: quantization_config.quant_method 'hqq' is not served by vLLM, SGLang or TensorRT-LLM profiles"
    ready_cache(cluster, namespace, "odd", LLAMA_8B, model_error=why)
    cluster.apply([service(namespace, "odd", "odd")])
    svc = wait_for(lambda: (o := kubectl_json("infsvc/odd", "-n", namespace)).get("status", {}).get("phase") == "NoCompatibleProfile" and o,
                   timeout_s=60, what="NoCompatibleProfile")  # fmt: skip
    assert condition(svc, "CacheReady")["status"] == "True"
    selected = condition(svc, "ProfileSelected")
    assert (selected["status"], selected["reason"]) == ("False", "UnsupportedModel")
    assert why in selected["message"] and why in condition(svc, "Ready")["message"]
    assert health(svc)["status"] == "Degraded"
    cache = kubectl_json("mcache/odd", "-n", namespace)
    assert cache["status"]["phase"] == "Ready"
    assert "no profile can be selected" in condition(cache, "Ready")["message"]
    assert kubectl_json("deploy", "-n", namespace)["items"] == []


def test_hand_edits_are_undone_and_deletion_cascades(
    cluster: LocalCluster, namespace: str, llama: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([service(namespace, "chat", llama, replicas=2)])
    wait_for(
        lambda: kubectl_json("deploy/chat", "-n", namespace, "--ignore-not-found").get("spec"),
        timeout_s=60,
        what="Deployment",
    )
    wait_for(
        lambda: (
            kubectl_json("pdb/chat", "-n", namespace, "--ignore-not-found")
            .get("spec", {})
            .get("maxUnavailable")
            == 1
        ),
        what="PDB",
    )
    cluster.kubectl("patch", "deploy", "chat", "-n", namespace, "--type=json",
                    "-p", '[{"op": "replace", "path": "/spec/strategy/rollingUpdate/maxSurge", "value": 2}]')  # fmt: skip
    wait_for(lambda: kubectl_json("deploy/chat", "-n", namespace)["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0,
             timeout_s=30, what="maxSurge restored")  # fmt: skip
    cluster.kubectl("delete", "service", "chat", "-n", namespace)
    wait_for(lambda: cluster.kubectl("get", "service", "chat", "-n", namespace, check=False).returncode == 0,
             timeout_s=30, what="Service recreated")  # fmt: skip
    cluster.kubectl("scale", "infsvc", "chat", "-n", namespace, "--replicas=1")
    wait_for(
        lambda: kubectl_json("deploy/chat", "-n", namespace)["spec"]["replicas"] == 1,
        timeout_s=30,
        what="scaled via the CRD",
    )
    wait_for(lambda: cluster.kubectl("get", "pdb", "chat", "-n", namespace, check=False).returncode != 0,
             timeout_s=30, what="PDB removed at one replica")  # fmt: skip
    cluster.kubectl("delete", "infsvc", "chat", "-n", namespace)
    for kind in ("deploy", "service", "networkpolicy"):
        wait_for(lambda k=kind: cluster.kubectl("get", k, "chat", "-n", namespace, check=False).returncode != 0,
                 timeout_s=60, what=f"{kind} garbage-collected")  # fmt: skip


def test_a_settled_operator_writes_nothing(
    cluster: LocalCluster, namespace: str, llama: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    applied_at = time.time()
    cluster.apply([service(namespace, "chat", llama)])
    wait_for(lambda: kubectl_json("infsvc/chat", "-n", namespace).get("status", {}).get("phase") in ("Ready",),
             timeout_s=90, what="Ready (KWOK reports the pod ready; warm-up cannot reach a simulated pod)")  # fmt: skip
    # From apply to Ready, every reconcile read its cache, nodes, children and pods from the
    # operator's watches: not one GET or LIST of them by the operator's own client.
    time.sleep(2)  # the audit log is written asynchronously
    # (The ModelCache controller still reads its Jobs' pods and its cache: not this path.)
    reads = [
        e for e in cluster.audit_events(applied_at, "inferator/")
        if e["verb"] in ("get", "list") and e.get("objectRef", {}).get("resource") != "modelcaches"
        and "job-name" not in urllib.parse.unquote(e.get("requestURI", ""))
    ]  # fmt: skip
    assert reads == [], [(e["verb"], e["objectRef"]) for e in reads]
    assert health(kubectl_json("infsvc/chat", "-n", namespace))["status"] == "Healthy"
    assert health(kubectl_json(f"mcache/{llama}", "-n", namespace))["status"] == "Healthy"

    def in_namespace(event: dict[str, Any]) -> bool:
        return event.get("objectRef", {}).get("namespace") in (namespace, None)

    # Settling (the last conditions, kopf's own bookkeeping) may take a few seconds on a loaded
    # machine: wait for 15 quiet seconds, then demand a whole quiet minute.
    wait_until_quiet(cluster, in_namespace, timeout_s=120)
    quiet_from = time.time()
    time.sleep(60)
    writes = operator_writes(cluster, quiet_from, in_namespace)
    assert writes == [], [(e["verb"], e["objectRef"], e["requestReceivedTimestamp"]) for e in writes]


def test_a_late_report_a_retried_job_and_a_new_revision_reach_the_cache_and_its_service(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    """The Job completes before its report lands; a Failed cache's Job deleted by hand runs again;
    a new revision of a Ready cache rolls the service's pods onto it."""
    import json

    spec = {"source": {"uri": "hf://org/late"}, "storage": {"size": "20Gi"}}
    cluster.apply([{"apiVersion": GROUP, "kind": "ModelCache", "metadata": {"name": "late", "namespace": namespace},
                    "spec": spec}])  # fmt: skip

    def ready_reason() -> tuple[str, str, str]:
        obj = kubectl_json("mcache/late", "-n", namespace)
        c = condition(obj, "Ready")
        return obj.get("status", {}).get("phase", ""), c.get("reason", ""), c.get("message", "")

    # KWOK completes the Job's pod at once; no report arrives: not a failure yet, then one.
    waiting = wait_for(lambda: (r := ready_reason()) and "waiting for its report" in r[2] and r, timeout_s=60,
                       what="the finished Job's report awaited")  # fmt: skip
    assert waiting[0] == "Downloading"
    failed = wait_for(lambda: (r := ready_reason()) and r[0] == "Failed" and r, timeout_s=90,
                      what="no report after the grace period")  # fmt: skip
    assert "delete the Job to run it again" in failed[2]
    job = kubectl_json("mcache/late", "-n", namespace)["status"]["jobName"]
    uid = kubectl_json(f"job/{job}", "-n", namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "job", job, "-n", namespace, "--wait=true")
    wait_for(lambda: (j := kubectl_json(f"job/{job}", "-n", namespace, "--ignore-not-found")) and j["metadata"]["uid"] != uid,
             timeout_s=60, what="the Job run again")  # fmt: skip
    # This time the report lands (as the Job would patch it, late or not): Ready.
    status = {"contentHash": content_hash(ModelCacheSpec.model_validate(spec)), "sizeBytes": LLAMA_8B["weightBytes"],
              "resolvedRevision": "rev-1", "model": LLAMA_8B}  # fmt: skip
    cluster.kubectl("patch", "mcache", "late", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip
    wait_for(lambda: ready_reason()[0] == "Ready", timeout_s=60, what="the cache Ready after its report")

    cluster.apply([service(namespace, "chat", "late")])

    def annotation() -> str | None:
        deploy = kubectl_json("deploy/chat", "-n", namespace, "--ignore-not-found") or {}
        meta = deploy.get("spec", {}).get("template", {}).get("metadata", {})
        return (meta.get("annotations") or {}).get("inferator.dev/cache-revision")

    first = wait_for(annotation, timeout_s=90, what="the serving Deployment")
    assert first is not None and first.endswith(":rev-1")
    wait_for(lambda: kubectl_json("infsvc/chat", "-n", namespace).get("status", {}).get("phase") == "Ready",
             timeout_s=90, what="service Ready (settled)")  # fmt: skip
    cluster.kubectl("patch", "mcache", "late", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"resolvedRevision": "rev-2"}}))  # fmt: skip
    second = wait_for(lambda: (a := annotation()) and a.endswith(":rev-2") and a, timeout_s=60,
                      what="the settled service woken by its cache's new revision")  # fmt: skip
    assert second != first
