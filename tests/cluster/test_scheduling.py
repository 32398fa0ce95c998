"""The test bed's real scheduler places GPU pods by the labels and capacity of the KWOK nodes."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.dev.cluster import LocalCluster
from tests.cluster.conftest import wait_for

pytestmark = pytest.mark.cluster


def gpu_pod(name: str, gpus: int, product: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [
                                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}
                            ]}
                        ]
                    }
                }
            },
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "server",
                    "image": "example.invalid/vllm:latest",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }  # fmt: skip


def _apply(cluster: LocalCluster, namespace: str, obj: dict[str, Any]) -> None:
    obj["metadata"]["namespace"] = namespace
    cluster.apply([obj])


def test_eight_gpu_pod_with_h100_affinity_lands_on_an_h100_node(
    cluster: LocalCluster, namespace: str, kubectl_json: Any
) -> None:
    _apply(cluster, namespace, gpu_pod("eight", 8, "NVIDIA-H100-80GB-HBM3"))
    node = wait_for(
        lambda: kubectl_json("pod/eight", "-n", namespace)["spec"].get("nodeName"), what="pod bound"
    )
    labels = kubectl_json(f"node/{node}")["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    # KWOK plays the kubelet: the pod runs, and the GPU taint was tolerated by admission.
    wait_for(
        lambda: kubectl_json("pod/eight", "-n", namespace)["status"].get("phase") == "Running", what="Running"
    )
    tolerations = kubectl_json("pod/eight", "-n", namespace)["spec"]["tolerations"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


def test_sixteen_gpu_pod_stays_pending_with_the_schedulers_reason(
    cluster: LocalCluster, namespace: str, kubectl_json: Any
) -> None:
    _apply(cluster, namespace, gpu_pod("sixteen", 16, "NVIDIA-H100-80GB-HBM3"))

    def unschedulable() -> dict[str, Any] | None:
        pod = kubectl_json("pod/sixteen", "-n", namespace)
        conds = {c["type"]: c for c in pod["status"].get("conditions", [])}
        cond = conds.get("PodScheduled")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(unschedulable, what="PodScheduled=False")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert kubectl_json("pod/sixteen", "-n", namespace)["status"]["phase"] == "Pending"


def test_restricted_pod_security_is_enforced(cluster: LocalCluster, namespace: str) -> None:
    privileged = gpu_pod("root", 1, "NVIDIA-L4")
    privileged["metadata"]["namespace"] = namespace
    del privileged["spec"]["securityContext"]
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    import yaml

    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(privileged), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
