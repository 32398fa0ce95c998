"""The API server itself rejects bad ModelCache/InferenceService manifests, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from inferator.dev.cluster import LocalCluster

pytestmark = pytest.mark.cluster

CACHE = {"source": {"uri": "hf://org/model"}}
SVC = {"modelCacheRef": {"name": "m"}}


def cache(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "inferator.dev/v1alpha1",
        "kind": "ModelCache",
        "metadata": {"name": "x"},
        "spec": spec,
    }


def svc(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "inferator.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "x"},
        "spec": spec,
    }


INVALID = [
    ("cache-without-source", cache({}), "spec.source: Required value"),
    ("ftp-source", cache({"source": {"uri": "ftp://host/model"}}), "spec.source.uri"),
    ("root-uid", cache({**CACHE, "ownership": {"runAsUser": 0}}), "spec.ownership.runAsUser"),
    ("reclaim-typo", cache({**CACHE, "storage": {"reclaimPolicy": "Destroy"}}), "spec.storage.reclaimPolicy: Unsupported value"),
    ("zero-parallel", cache({**CACHE, "prefetch": {"parallelDownloads": 0}}), "spec.prefetch.parallelDownloads"),
    ("bad-access-mode", cache({**CACHE, "storage": {"accessModes": ["ReadWriteEverywhere"]}}), "spec.storage.accessModes[0]"),
    ("endpoint-not-url", cache({"source": {"uri": "s3://bucket/m", "endpoint": "minio:9000"}}), "spec.source.endpoint"),
    ("svc-without-cache", svc({}), "spec.modelCacheRef: Required value"),
    ("pin-and-selector", svc({**SVC, "profile": "vllm-h100-fp8-tp1-latency", "selector": {"engines": ["vllm"]}}), "spec.profile: Invalid value"),
    ("memory-utilisation", svc({**SVC, "serving": {"gpuMemoryUtilization": 1.5}}), "spec.serving.gpuMemoryUtilization"),
    ("min-over-max", svc({**SVC, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}), "spec.autoscaling.minReplicas"),
    ("unknown-engine", svc({**SVC, "selector": {"engines": ["tgi"]}}), "spec.selector.engines[0]"),
    ("negative-replicas", svc({**SVC, "replicas": -1}), "spec.replicas"),
    ("profile-charset", svc({**SVC, "profile": "Not_Valid!"}), "spec.profile"),
    ("hpa-to-zero", svc({**SVC, "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "backend": "hpa"}}), "spec.autoscaling.backend"),
    ("tp-zero", svc({**SVC, "selector": {"tensorParallelSizes": [0]}}), "spec.selector.tensorParallelSizes[0]"),
    ("unknown-field", svc({**SVC, "replica": 2}), 'unknown field "spec.replica"'),
    # The name becomes the Service's name and a label value: refused, not failed on every reconcile.
    ("svc-name-64", {**svc(SVC), "metadata": {"name": "a" * 64}}, "metadata.name must be at most 63 characters"),
    ("svc-name-digit", {**svc(SVC), "metadata": {"name": "7b-chat"}}, "starting with a letter"),
]  # fmt: skip

VALID = [
    ("minimal-cache", cache(CACHE)),
    ("hf-revision", cache({"source": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct@5206a32", "include": ["*.safetensors"]}})),
    ("s3-with-endpoint", cache({"source": {"uri": "s3://models/qwen/", "endpoint": "http://minio:9000", "credentialsSecret": {"name": "s3"}}})),
    ("https-list", cache({"source": {"uri": "https://mirror.internal/models/llama/files.txt"}})),
    ("pvc-air-gapped", cache({"source": {"uri": "pvc://weights/llama"}, "storage": {"pvcName": "weights"}})),
    ("sized-delete", cache({**CACHE, "storage": {"size": "40Gi", "reclaimPolicy": "Delete", "accessModes": ["ReadWriteMany"]}})),
    ("ownership-fix", cache({**CACHE, "ownership": {"runAsUser": 2000, "runAsGroup": 2000, "fsGroup": 2000, "fixOwnership": True}})),
    ("minimal-svc", svc(SVC)),
    ("svc-name-63", {**svc(SVC), "metadata": {"name": "a" * 63}}),
    ("pinned", svc({**SVC, "profile": "vllm-h100-fp8-tp2-latency"})),
    ("selector", svc({**SVC, "selector": {"engines": ["vllm", "sglang"], "precisions": ["fp8"], "tensorParallelSizes": [1, 2], "optimizeFor": "throughput"}})),
    ("keda-zero", svc({**SVC, "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "metric": "kvCacheUsage", "target": 0.8}})),
    ("platform-fields", svc({**SVC, "env": [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "key"}}}], "envFrom": [{"secretRef": {"name": "extra"}}], "scheduling": {"imagePullSecrets": [{"name": "registry"}], "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}, "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]}})),
    ("prefetch-platform-fields", cache({**CACHE, "prefetch": {"imagePullSecrets": [{"name": "registry"}], "affinity": {"nodeAffinity": {}}, "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]}})),
    ("full-serving", svc({**SVC, "serving": {"maxModelLen": 32768, "minConcurrency": 8, "gpuMemoryUtilization": 0.92, "extraArgs": ["--enable-prefix-caching"]}, "scheduling": {"nodeSelector": {"pool": "a"}, "tolerations": [{"key": "k", "operator": "Exists"}]}})),
]  # fmt: skip


def dry_run(cluster: LocalCluster, namespace: str, obj: dict[str, Any]) -> tuple[int, str]:
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False)
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("manifest", "field"), [(m, f) for _, m, f in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: LocalCluster, namespace: str, manifest: dict[str, Any], field: str
) -> None:
    code, stderr = dry_run(cluster, namespace, manifest)
    assert code != 0, "the API server accepted an invalid manifest"
    assert field in stderr


@pytest.mark.parametrize("manifest", [m for _, m in VALID], ids=[i for i, _ in VALID])
def test_valid_manifest_is_accepted(cluster: LocalCluster, namespace: str, manifest: dict[str, Any]) -> None:
    code, stderr = dry_run(cluster, namespace, manifest)
    assert code == 0, stderr


def test_cel_message_explains_the_conflict(cluster: LocalCluster, namespace: str) -> None:
    _, stderr = dry_run(cluster, namespace, INVALID[8][1])
    assert "profile and selector exclude each other" in stderr


def test_defaults_are_applied_by_the_api_server(cluster: LocalCluster, namespace: str) -> None:
    obj = cache(CACHE)
    obj["metadata"]["namespace"] = namespace
    out = cluster.kubectl(
        "create", "--dry-run=server", "-o", "yaml", "-f", "-", input=yaml.safe_dump(obj)
    ).stdout
    spec = yaml.safe_load(out)["spec"]
    assert spec["ownership"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fixOwnership": False,
    }
    assert spec["storage"]["reclaimPolicy"] == "Retain"
