"""Multi-node serving on KWOK GPU nodes, built-in path (no LeaderWorkerSet in the test bed).

A model no single simulated node holds gets a profile spanning two nodes; the operator runs it
as a StatefulSet group whose pods the real scheduler places on two nodes of one zone; a member
deleted restarts the group; replicas add and remove whole groups; status counts groups; the real
HPA controller scales whole groups through the InferenceService's scale subresource.
KWOK runs no engine (and marks its pods Ready whatever their readiness gates say): the serving
path itself is the runner-node tests', and for multi-node it needs GPUs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import kubernetes
import pytest

from inferator.dev.cluster import LocalCluster
from inferator.dev.custom_metrics import CustomMetricsApi
from inferator.dev.nodes import H100_SXM, NodeSpec, node_manifest
from inferator.gateway.config import GatewayConfig
from inferator.gateway.discovery import ClusterCatalog
from inferator.profiles.model_facts import facts_from_directory
from inferator.render import groups
from tests.cluster.conftest import OperatorProcess, wait_for
from tests.cluster.test_autoscaling import QUEUE_METRIC
from tests.cluster.test_inferenceservice_controller import condition, ready_cache, service

pytestmark = pytest.mark.cluster
DEEPSEEK_V3 = facts_from_directory(
    Path(__file__).resolve().parents[1] / "data" / "model_configs" / "deepseek-ai--deepseek-v3"
)
ZONE = "zone-c"
SELECTOR = "inferator.dev/inference-service=deepseek"


def test_a_model_no_node_holds_runs_as_a_group_across_two_nodes_of_one_zone(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    # Two more H100 nodes, both in one zone: the default two are in different zones.
    extra = [NodeSpec(f"gpu-h100-c-{i}", H100_SXM, 8, 192, 2048, "p5.48xlarge", zone=ZONE) for i in range(2)]
    cluster.apply([node_manifest(n) for n in extra])
    try:
        ready_cache(cluster, namespace, "deepseek-v3", DEEPSEEK_V3.to_k8s())
        cluster.apply([service(namespace, "deepseek", "deepseek-v3", selector={"engines": ["vllm"]})])
        svc = wait_for(lambda: (o := kubectl_json("infsvc/deepseek", "-n", namespace)).get("status", {}).get("replicas") and o,
                       timeout_s=90, what="the group created")  # fmt: skip
        assert svc["status"]["profile"] == "vllm-h100-fp8-tp8-pp2-latency"
        sts = kubectl_json("statefulset/deepseek-g0", "-n", namespace)
        assert sts["spec"]["replicas"] == 2 and sts["spec"]["template"]["spec"]["nodeSelector"][
            "topology.kubernetes.io/zone"] == ZONE  # fmt: skip
        assert kubectl_json("deploy", "-n", namespace)["items"] == []
        client = kubectl_json("service/deepseek", "-n", namespace)
        assert client["spec"]["selector"][groups.POD_INDEX_LABEL] == "0"  # leaders only

        def placed() -> list[dict[str, Any]] | None:
            pods = kubectl_json("pods", "-n", namespace, "-l", SELECTOR)["items"]
            return pods if len(pods) == 2 and all(p["spec"].get("nodeName") for p in pods) else None

        pods = wait_for(placed, timeout_s=90, what="both pods of the group scheduled")
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-h100-c-0", "gpu-h100-c-1"]
        for p in pods:
            assert p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
        # The worker is gated open without a warm-up (it serves no API); the leader waits for its
        # warm-up, which KWOK cannot answer.
        worker = next(p for p in pods if p["metadata"]["labels"][groups.POD_INDEX_LABEL] == "1")

        def gate(pod: dict[str, Any]) -> dict[str, Any]:
            conditions = pod["status"].get("conditions", [])
            return next((c for c in conditions if c["type"] == "inferator.dev/model-ready"), {})

        wait_for(lambda: gate(kubectl_json(f"pod/{worker['metadata']['name']}", "-n", namespace)).get("status") == "True",
                 timeout_s=60, what="the worker's gate open")  # fmt: skip
        # (KWOK marks its pods Ready without weighing readiness gates: the StatefulSet counts them.)
        svc = wait_for(lambda: (o := kubectl_json("infsvc/deepseek", "-n", namespace))["status"].get("readyReplicas") == 1 and o,
                       timeout_s=60, what="one group ready")  # fmt: skip
        assert svc["status"]["replicas"] == 1
        assert "1/1 groups of 2 nodes ready" in condition(svc, "Available")["message"]

        # A member deleted: the StatefulSet replaces it, the operator restarts the rest of its group.
        leader_uid = next(p for p in pods if p["metadata"]["labels"][groups.POD_INDEX_LABEL] == "0")[
            "metadata"
        ]["uid"]
        time.sleep(max(0.0, groups.START_WINDOW_S + 1 - _age_s(pods)))  # a member replaced after the start
        cluster.kubectl("delete", "pod", worker["metadata"]["name"], "-n", namespace, "--wait=false")

        def leader_replaced() -> bool:
            pods = kubectl_json("pods", "-n", namespace, "-l", SELECTOR)["items"]
            leaders = [p for p in pods if p["metadata"]["labels"].get(groups.POD_INDEX_LABEL) == "0"]
            return bool(leaders) and all(p["metadata"]["uid"] != leader_uid for p in leaders)

        wait_for(leader_replaced, timeout_s=90, what="the leader restarted with its group")
        events = kubectl_json("events", "-n", namespace, "--field-selector", "involvedObject.name=deepseek")[
            "items"
        ]
        assert any(e["reason"] == "GroupRestarted" for e in events)

        # Replicas are groups: one more is a second StatefulSet of two pods, one fewer removes it.
        cluster.kubectl(
            "patch", "infsvc", "deepseek", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}'
        )
        assert kubectl_json("statefulset/deepseek-g0", "-n", namespace)["metadata"]["annotations"][
            groups.STARTED_ANNOTATION
        ]
        g1 = wait_for(lambda: kubectl_json("statefulset", "-n", namespace, "--ignore-not-found", "deepseek-g1"),
                      timeout_s=60, what="a second group")  # fmt: skip
        assert g1["spec"]["replicas"] == 2
        wait_for(lambda: kubectl_json("infsvc/deepseek", "-n", namespace)["status"].get("replicas") == 2,
                 timeout_s=60, what="status counting two groups")  # fmt: skip
        cluster.kubectl(
            "patch", "infsvc", "deepseek", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":1}}'
        )
        wait_for(lambda: not kubectl_json("statefulset", "-n", namespace, "--ignore-not-found", "deepseek-g1"),
                 timeout_s=60, what="the second group removed")  # fmt: skip
    finally:
        cluster.kubectl("delete", "node", *[n.name for n in extra], "--wait=false", check=False)


def test_the_real_hpa_controller_adds_a_whole_group_through_the_service_scale_subresource(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    # Four H100 nodes in one zone: room for two groups of two.
    extra = [
        NodeSpec(f"gpu-h100-d-{i}", H100_SXM, 8, 192, 2048, "p5.48xlarge", zone="zone-d") for i in range(4)
    ]
    cluster.apply([node_manifest(n) for n in extra])
    try:
        ready_cache(cluster, namespace, "deepseek-v3", DEEPSEEK_V3.to_k8s())
        autoscaling = {
            "minReplicas": 1,
            "maxReplicas": 2,
            "metric": "queueLength",
            "target": 4,
            "backend": "hpa",
        }
        with CustomMetricsApi(cluster) as metrics:
            cluster.apply(
                [
                    service(
                        namespace,
                        "ds",
                        "deepseek-v3",
                        selector={"engines": ["vllm"]},
                        autoscaling=autoscaling,
                    )
                ]
            )
            hpa = wait_for(lambda: kubectl_json("hpa/ds", "-n", namespace, "--ignore-not-found"),
                           timeout_s=90, what="the rendered HPA")  # fmt: skip
            assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "inferator.dev/v1alpha1",
                                                     "kind": "InferenceService", "name": "ds"}  # fmt: skip
            first = wait_for(lambda: (o := kubectl_json("infsvc/ds", "-n", namespace))["status"].get("readyReplicas") == 1 and o,
                             timeout_s=120, what="one group ready")  # fmt: skip
            assert first["status"]["profile"].endswith("-pp2-latency")
            # The HPA reads its pod signal from the leaders only: one pod per replica (group).
            scale = kubectl_json("infsvc/ds", "-n", namespace, "--subresource=scale")
            assert (
                scale["status"]["selector"]
                == f"inferator.dev/inference-service=ds,{groups.POD_INDEX_LABEL}=0"
            )
            assert kubectl_json("pdb/ds", "-n", namespace, "--ignore-not-found"), "two groups possible: a PDB"

            # 10 requests waiting on the leader against a target of 4: ceil(10/4) = 3, capped at 2.
            metrics.set(namespace, QUEUE_METRIC, 10)
            wait_for(lambda: kubectl_json("infsvc/ds", "-n", namespace)["spec"].get("replicas") == 2,
                     timeout_s=120, what="the HPA controller writing spec.replicas 2")  # fmt: skip
            g1 = wait_for(lambda: kubectl_json("statefulset", "-n", namespace, "--ignore-not-found", "ds-g1"),
                          timeout_s=60, what="a second whole group")  # fmt: skip
            assert g1["spec"]["replicas"] == 2
            svc = wait_for(lambda: (o := kubectl_json("infsvc/ds", "-n", namespace))["status"].get("readyReplicas") == 2 and o,
                           timeout_s=120, what="two groups ready")  # fmt: skip
            # A scale is not a change of what is served: same profile, selected for the same generation.
            assert svc["metadata"]["generation"] > first["metadata"]["generation"]
            for key in ("profile", "profileGeneration", "specRevision"):
                assert svc["status"][key] == first["status"][key], key
            pods = kubectl_json("pods", "-n", namespace, "-l", "inferator.dev/inference-service=ds")["items"]
            placed = sorted(str(p["spec"].get("nodeName")) for p in pods)
            assert placed == sorted(n.name for n in extra), placed
            # The HPA reads the leaders only once the status carries their selector: its first read
            # can come before the operator's status write (one sync period); the reads that scaled
            # the service, the last ones, name rank 0.
            asked = [
                r for r in map(unquote, metrics.served(QUEUE_METRIC)) if f"/namespaces/{namespace}/" in r
            ]
            assert asked and f"{groups.POD_INDEX_LABEL}=0" in asked[-1], asked

        # At zero groups (KEDA's scale to zero, here set by hand) an InferenceGateway holding a
        # request wakes the service through the same scale subresource: it has no Deployment.
        cluster.apply([service(namespace, "dz", "deepseek-v3", selector={"engines": ["vllm"]}, replicas=0)])
        wait_for(lambda: condition(kubectl_json("infsvc/dz", "-n", namespace), "Ready").get("reason") == "ScaledToZero",
                 timeout_s=90, what="a group service at zero")  # fmt: skip
        kubernetes.config.load_kube_config(
            config_file=str(cluster.kubeconfig)
        )  # the gateway's default client
        ClusterCatalog(GatewayConfig(namespace=namespace))._scale_up("dz")
        assert kubectl_json("infsvc/dz", "-n", namespace)["spec"]["replicas"] == 1
        wait_for(lambda: kubectl_json("statefulset", "-n", namespace, "--ignore-not-found", "dz-g0"),
                 timeout_s=60, what="the woken service's group")  # fmt: skip
        assert "Traceback" not in operator.log()
    finally:
        cluster.kubectl("delete", "node", *[n.name for n in extra], "--wait=false", check=False)


def _age_s(pods: list[dict[str, Any]]) -> float:
    import datetime

    created = min(
        datetime.datetime.fromisoformat(p["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        for p in pods
    )
    return (datetime.datetime.now(datetime.UTC) - created).total_seconds()
