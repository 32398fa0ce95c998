"""`inferator run` against the real API server: printer columns, status, health and metrics."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.argocd import health
from inferator.dev.cluster import LocalCluster
from tests.cluster.conftest import OperatorProcess, wait_for

pytestmark = pytest.mark.cluster


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def test_get_shows_printer_columns_for_both_kinds(cluster: LocalCluster, namespace: str) -> None:
    cluster.apply([
        {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache",
         "metadata": {"name": "m", "namespace": namespace}, "spec": {"source": {"uri": "hf://org/m"}}},
        {"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceService",
         "metadata": {"name": "s", "namespace": namespace}, "spec": {"modelCacheRef": {"name": "m"}}},
    ])  # fmt: skip
    out = cluster.kubectl("get", "infsvc,mcache", "-A").stdout
    header_lines = [line.split() for line in out.splitlines() if line.startswith("NAMESPACE")]
    assert ["NAMESPACE", "NAME", "PHASE", "PROFILE", "TASK", "READY", "AGE"] in header_lines
    assert ["NAMESPACE", "NAME", "PHASE", "SOURCE", "READY", "AGE"] in header_lines
    assert "inferenceservice.inferator.dev/s" in out and "hf://org/m" in out


def test_operator_reports_status_health_and_metrics(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([
        {"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceService",
         "metadata": {"name": "orphan", "namespace": namespace}, "spec": {"modelCacheRef": {"name": "missing"}}},
        {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache",
         "metadata": {"name": "m", "namespace": namespace}, "spec": {"source": {"uri": "hf://org/m"}}},
    ])  # fmt: skip
    svc = wait_for(lambda: (o := kubectl_json("infsvc/orphan", "-n", namespace)).get("status", {}).get("observedGeneration") and o,
                   what="InferenceService status")  # fmt: skip
    cache_ready = _conditions(svc)["CacheReady"]
    assert (cache_ready["status"], cache_ready["reason"]) == ("False", "CacheNotFound")
    assert "'missing' does not exist" in cache_ready["message"]
    assert svc["status"]["phase"] == "WaitingForCache"
    assert health(svc)["status"] == "Degraded"  # a missing cache will not appear by waiting
    mc = wait_for(lambda: (o := kubectl_json("mcache/m", "-n", namespace)).get("status", {}).get("observedGeneration") and o,
                  what="ModelCache status")  # fmt: skip
    assert mc["status"]["observedGeneration"] == mc["metadata"]["generation"]
    assert "Ready" in _conditions(mc)
    metrics = operator.metrics()
    assert 'inferator_reconcile_total{kind="InferenceService",outcome="WaitingForCache"}' in metrics
    # GitOps: the operator never writes spec; only the applier manages spec fields.
    managed = kubectl_json("infsvc/orphan", "-n", namespace, "--show-managed-fields")["metadata"][
        "managedFields"
    ]
    for entry in managed:
        if "f:spec" in entry.get("fieldsV1", {}):
            assert entry["manager"] == "kubectl", entry["manager"]
    assert any(e.get("subresource") == "status" for e in managed)
