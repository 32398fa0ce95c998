"""ModelCache controller against the real API server: PVC, RBAC, Jobs, reclaim, and honest failures."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.argocd import health
from inferator.dev.cluster import LocalCluster
from tests.cluster.conftest import OperatorProcess, wait_for

pytestmark = pytest.mark.cluster


def cache(namespace: str, name: str = "m", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"uri": "hf://org/model"}, **spec}}  # fmt: skip


def settled(kubectl_json: Any, namespace: str, name: str = "m") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl_json(f"mcache/{name}", "-n", namespace)
        st = obj.get("status", {})
        return (
            obj
            if st.get("phase") in ("Ready", "Failed")
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            else None
        )

    result: dict[str, Any] = wait_for(check, timeout_s=60, what=f"ModelCache {name} settled")
    return result


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def test_sized_cache_gets_pvc_rbac_and_a_job_as_its_owner(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply(
        [
            cache(
                namespace,
                storage={"size": "5Gi"},
                ownership={"runAsUser": 2000, "runAsGroup": 2000, "fsGroup": 2000},
            )
        ]
    )
    obj = settled(kubectl_json, namespace)
    pvc = kubectl_json("pvc/m-weights", "-n", namespace)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "ownerReferences" not in pvc["metadata"], "Retain: the claim must outlive the ModelCache"
    job = kubectl_json(f"job/{obj['status']['jobName']}", "-n", namespace)
    pod_sc = job["spec"]["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["fsGroup"], pod_sc["runAsNonRoot"]) == (2000, 2000, True)
    role = kubectl_json("role/m-prefetch", "-n", namespace)
    assert role["rules"][1] == {"apiGroups": ["inferator.dev"], "resources": ["modelcaches/status"],
                                "resourceNames": ["m"], "verbs": ["get", "patch"]}  # fmt: skip
    # KWOK "completes" Job pods without running them: no cache was verified, and the
    # operator says so instead of calling the cache Ready.
    cond = ready_condition(obj)
    assert (obj["status"]["phase"], cond["reason"]) == ("Failed", "PrefetchFailed")
    assert "without reporting a verified cache" in cond["message"]
    assert health(obj)["status"] == "Degraded"
    events = kubectl_json("events", "-n", namespace, "--field-selector", "involvedObject.name=m")["items"]
    assert any(e["reason"] == "PrefetchFailed" for e in events)


def test_cache_without_size_starts_a_sizing_job_first(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([cache(namespace)])
    obj = settled(kubectl_json, namespace)
    assert obj["status"]["jobName"].startswith("m-size-")
    assert ready_condition(obj)["reason"] == "SizingFailed"
    assert kubectl_json("pvc", "-n", namespace)["items"] == [], "no claim before its size is known"


def test_missing_adopted_claim_is_reported(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([cache(namespace, storage={"pvcName": "weights"})])
    cond = wait_for(lambda: next((c for c in kubectl_json("mcache/m", "-n", namespace).get("status", {}).get("conditions", [])
                                  if c["reason"] == "PVCNotFound"), None), what="PVCNotFound")  # fmt: skip
    assert "spec.storage.pvcName 'weights' does not exist" in cond["message"]


def test_only_a_content_change_replaces_the_job(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([cache(namespace, storage={"size": "1Gi"})])
    first = settled(kubectl_json, namespace)["status"]["jobName"]
    cluster.apply([cache(namespace, storage={"size": "1Gi"}, prefetch={"parallelDownloads": 2})])
    wait_for(
        lambda: kubectl_json("mcache/m", "-n", namespace)["status"].get("observedGeneration") == 2,
        what="gen 2",
    )
    assert settled(kubectl_json, namespace)["status"]["jobName"] == first
    cluster.apply([cache(namespace, source={"uri": "hf://org/model@v2"}, storage={"size": "1Gi"})])
    wait_for(
        lambda: kubectl_json("mcache/m", "-n", namespace)["status"].get("jobName") not in (None, first),
        what="new Job",
    )
    wait_for(lambda: [j["metadata"]["name"] for j in kubectl_json("jobs", "-n", namespace)["items"]] != [first]
             and first not in [j["metadata"]["name"] for j in kubectl_json("jobs", "-n", namespace)["items"]],
             what="old Job deleted")  # fmt: skip


def test_reclaim_delete_removes_the_claim_retain_keeps_it(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    cluster.apply([cache(namespace, "gone", storage={"size": "1Gi", "reclaimPolicy": "Delete"}),
                   cache(namespace, "kept", storage={"size": "1Gi"})])  # fmt: skip
    settled(kubectl_json, namespace, "gone")
    settled(kubectl_json, namespace, "kept")
    cluster.kubectl("delete", "mcache", "gone", "kept", "-n", namespace)
    wait_for(lambda: [p["metadata"]["name"] for p in kubectl_json("pvc", "-n", namespace)["items"]
                      if not p["metadata"].get("deletionTimestamp")] == ["kept-weights"],
             what="only the retained claim left")  # fmt: skip


def test_a_claim_that_became_too_small_is_reported_then_grown_when_its_class_allows(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    import json

    manifest = {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache",
                "metadata": {"name": "grow", "namespace": namespace},
                "spec": {"source": {"uri": "hf://org/grow"}, "storage": {"size": "1Gi"}}}  # fmt: skip
    cluster.apply([manifest])
    wait_for(lambda: kubectl_json("pvc/grow-weights", "-n", namespace, "--ignore-not-found").get("status", {}).get("phase") == "Bound",
             timeout_s=60, what="the cache's claim bound")  # fmt: skip
    manifest["spec"]["storage"]["size"] = "3Gi"
    cluster.apply([manifest])

    def reason() -> tuple[str, str]:
        c = ready_condition(kubectl_json("mcache/grow", "-n", namespace))
        return c.get("reason", ""), c.get("message", "")

    too_small = wait_for(
        lambda: (r := reason()) and r[0] == "PVCTooSmall" and r, timeout_s=60, what="PVCTooSmall"
    )
    assert "grow-weights requests 1Gi but the cache needs 3Gi" in too_small[1]
    assert "kwok-volume does not allow volume expansion" in too_small[1]
    assert kubectl_json("mcache/grow", "-n", namespace)["status"]["phase"] == "Pending"
    try:
        cluster.kubectl(
            "patch",
            "storageclass",
            "kwok-volume",
            "--type=merge",
            "-p",
            json.dumps({"allowVolumeExpansion": True}),
        )
        wait_for(lambda: kubectl_json("pvc/grow-weights", "-n", namespace)["spec"]["resources"]["requests"]["storage"] == "3Gi",
                 timeout_s=60, what="the claim grown to the new size")  # fmt: skip
        wait_for(lambda: reason()[0] != "PVCTooSmall", timeout_s=60, what="the cache past PVCTooSmall")
    finally:
        cluster.kubectl(
            "patch",
            "storageclass",
            "kwok-volume",
            "--type=merge",
            "-p",
            json.dumps({"allowVolumeExpansion": False}),
        )
