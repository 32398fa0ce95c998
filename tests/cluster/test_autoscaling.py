"""Autoscaling in the local control plane: the real HPA controller acting on a rendered HPA, the
scale subresource, and a ScaledObject instead of an HPA once KEDA's CRD is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferator.dev.cluster import LocalCluster
from inferator.dev.custom_metrics import CustomMetricsApi
from tests.cluster.conftest import OperatorProcess, wait_for
from tests.cluster.test_inferenceservice_controller import LLAMA_8B, ready_cache, service

pytestmark = pytest.mark.cluster
QUEUE_METRIC = "vllm_num_requests_waiting"  # vllm:num_requests_waiting as an adapter exposes it
# A stand-in for KEDA's CRD: the group, kind and an open schema; no KEDA controller runs.
SCALEDOBJECT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "names": {"kind": "ScaledObject", "listKind": "ScaledObjectList", "plural": "scaledobjects",
                  "singular": "scaledobject", "shortNames": ["so"]},
        "scope": "Namespaced",
        "versions": [{"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}  # fmt: skip


def replicas_of(kubectl_json: Any, namespace: str, name: str) -> int | None:
    spec: dict[str, Any] = (
        kubectl_json(f"deploy/{name}", "-n", namespace, "--ignore-not-found").get("spec") or {}
    )
    return spec.get("replicas")


def test_real_hpa_controller_scales_on_the_engine_queue_and_the_operator_lets_it(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    autoscaling = {"minReplicas": 1, "maxReplicas": 3, "metric": "queueLength", "target": 4, "backend": "hpa"}
    with CustomMetricsApi(cluster) as metrics:
        cluster.apply([service(namespace, "chat", "llama-8b", autoscaling=autoscaling)])
        hpa = wait_for(lambda: kubectl_json("hpa/chat", "-n", namespace, "--ignore-not-found"),
                       timeout_s=90, what="the rendered HPA")  # fmt: skip
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == QUEUE_METRIC
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "chat",
        }
        wait_for(lambda: replicas_of(kubectl_json, namespace, "chat") == 1, what="one replica to begin with")

        # 10 requests waiting per pod against a target of 4: the controller wants ceil(10/4) = 3.
        metrics.set(namespace, QUEUE_METRIC, 10)
        wait_for(lambda: replicas_of(kubectl_json, namespace, "chat") == 3, timeout_s=120,
                 what="the HPA controller scaling the Deployment to 3")  # fmt: skip
        hpa = kubectl_json("hpa/chat", "-n", namespace)
        active = next(c for c in hpa["status"]["conditions"] if c["type"] == "ScalingActive")
        assert active["status"] == "True", active
        assert hpa["status"]["currentMetrics"][0]["pods"]["current"]["averageValue"] == "10"
        assert metrics.served(QUEUE_METRIC), "the API server forwarded the controller's reads"

        # The operator leaves replicas to the autoscaler and reports what it did.
        svc = wait_for(lambda: (o := kubectl_json("infsvc/chat", "-n", namespace))["status"].get("replicas") == 3 and o,
                       timeout_s=60, what="status.replicas following the HPA")  # fmt: skip
        assert svc["spec"].get("replicas", 1) == 1, "the operator never writes spec"
        assert replicas_of(kubectl_json, namespace, "chat") == 3
        text = "\n".join(operator.log().splitlines())
        assert "Traceback" not in text


def test_kubectl_scale_goes_through_the_scale_subresource_to_the_deployment(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    cluster.apply([service(namespace, "chat", "llama-8b")])
    wait_for(lambda: replicas_of(kubectl_json, namespace, "chat") == 1, timeout_s=90, what="one replica")
    cluster.kubectl("scale", "infsvc/chat", "-n", namespace, "--replicas=2")
    wait_for(lambda: replicas_of(kubectl_json, namespace, "chat") == 2, timeout_s=60, what="two replicas")
    scale = kubectl_json("infsvc/chat", "-n", namespace, "--subresource=scale")
    assert scale["spec"]["replicas"] == 2
    wait_for(lambda: kubectl_json("infsvc/chat", "-n", namespace, "--subresource=scale")["status"].get("replicas") == 2,
             timeout_s=60, what="scale status")  # fmt: skip
    assert kubectl_json("pdb/chat", "-n", namespace, "--ignore-not-found"), "two replicas get a PDB"


@pytest.fixture
def keda_operator(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """KEDA's CRD served before the operator starts (it reads discovery at reconcile time, cached)."""
    cluster.apply([SCALEDOBJECT_CRD])
    cluster.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")
    proc = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    try:
        yield proc
    finally:
        proc.stop()
        cluster.kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=true", check=False)
        print("---- operator log (tail) ----\n" + "\n".join(proc.log().splitlines()[-80:]))


def test_with_keda_installed_a_scaledobject_is_rendered_instead_of_an_hpa(
    cluster: LocalCluster, namespace: str, keda_operator: OperatorProcess, kubectl_json: Any
) -> None:
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    cluster.apply([
        service(namespace, "zero", "llama-8b",
                autoscaling={"minReplicas": 0, "maxReplicas": 2, "metric": "queueLength", "target": 4}),
        service(namespace, "auto", "llama-8b",
                autoscaling={"minReplicas": 1, "maxReplicas": 2, "metric": "kvCacheUsage", "target": 0.8}),
    ])  # fmt: skip
    for name, minimum, metric in (
        ("zero", 0, "vllm:num_requests_waiting"),
        ("auto", 1, "vllm:kv_cache_usage_perc"),
    ):
        so = wait_for(lambda n=name: kubectl_json(f"scaledobject.keda.sh/{n}", "-n", namespace, "--ignore-not-found"),
                      timeout_s=90, what=f"ScaledObject {name}")  # fmt: skip
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (minimum, 2)
        trigger = spec["triggers"][0]
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["query"].startswith(f'sum({metric}{{namespace="{namespace}"')
        assert so["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
        assert not kubectl_json(f"hpa/{name}", "-n", namespace, "--ignore-not-found"), "KEDA owns its HPA"
        svc = kubectl_json(f"infsvc/{name}", "-n", namespace)
        assert svc["status"].get("phase") not in ("Failed", "Degraded"), svc["status"]
