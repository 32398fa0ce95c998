"""Autoscaling in the local control plane: the real HPA controller acting on a rendered HPA, the
scale subresource, and real KEDA (its operator built from the module proxy) acting on the
rendered ScaledObjects: scale to zero when idle, and from zero when a gateway holds requests.

KEDA's Prometheus scaler needs a Prometheus; there is none in the test bed, so a small HTTP
server answers its one call (GET /api/v1/query) with the values a test sets. That is the only
stand-in: the CRDs, the KEDA operator, the Deployment controller and the scheduler are real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from inferator.dev.cluster import LocalCluster
from inferator.dev.custom_metrics import CustomMetricsApi
from inferator.dev.keda import KedaOperator
from inferator.dev.nodes import H100_SXM, NodeSpec, node_manifest
from tests.cluster.conftest import OperatorProcess, wait_for
from tests.cluster.test_inferenceservice_controller import LLAMA_8B, ready_cache, service

pytestmark = pytest.mark.cluster
QUEUE_METRIC = "vllm_num_requests_waiting"  # vllm:num_requests_waiting as an adapter exposes it


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


@dataclass
class PrometheusQueries:
    """Answers KEDA's instant queries: `gateway` for the gateway-requests trigger, `engine` otherwise."""

    engine: float = 0.0
    gateway: float = 0.0
    seen: list[str] = field(default_factory=list)

    def value(self, query: str) -> float:
        self.seen.append(query)
        return self.gateway if "inferator_gateway_" in query else self.engine


@pytest.fixture
def prometheus() -> Iterator[tuple[str, PrometheusQueries]]:
    values = PrometheusQueries()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query).get("query", [""])[0]
            body = {"status": "success", "data": {"resultType": "vector",
                    "result": [{"metric": {}, "value": [time.time(), str(values.value(query))]}]}}  # fmt: skip
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", values
    finally:
        server.shutdown()


@pytest.fixture
def keda_operator(
    cluster: LocalCluster,
    namespace: str,
    tmp_path: Path,
    prometheus: tuple[str, PrometheusQueries],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OperatorProcess]:
    """Real KEDA running before the operator starts (it reads discovery at reconcile time, cached)."""
    keda = KedaOperator(cluster, watch_namespaces=(namespace,))
    keda.start()
    monkeypatch.setenv("INFERATOR_PROMETHEUS_URL", prometheus[0])
    proc = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    try:
        yield proc
    finally:
        proc.stop()
        print("---- KEDA log (tail) ----\n" + keda.tail(60))
        keda.stop()
        print("---- operator log (tail) ----\n" + "\n".join(proc.log().splitlines()[-80:]))


def test_with_keda_installed_a_scaledobject_is_rendered_and_keda_scales_to_zero_and_back_for_a_gateway(
    cluster: LocalCluster,
    namespace: str,
    keda_operator: OperatorProcess,
    kubectl_json: Any,
    prometheus: tuple[str, PrometheusQueries],
) -> None:
    _, queries = prometheus
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    # A multi-node service too ("groups": DeepSeek-V3 spans two H100 nodes of one zone): KEDA
    # scales it through the InferenceService's scale subresource, whole groups.
    from tests.cluster.test_multi_node import DEEPSEEK_V3  # (that module imports this one)

    two_nodes = [
        NodeSpec(f"gpu-h100-e-{i}", H100_SXM, 8, 192, 2048, "p5.48xlarge", zone="zone-e") for i in range(2)
    ]
    cluster.apply([node_manifest(n) for n in two_nodes])
    ready_cache(cluster, namespace, "deepseek-v3", DEEPSEEK_V3.to_k8s())
    cluster.apply([
        service(namespace, "zero", "llama-8b",
                autoscaling={"minReplicas": 0, "maxReplicas": 2, "metric": "queueLength", "target": 4,
                             "cooldownSeconds": 5}),
        service(namespace, "auto", "llama-8b",
                autoscaling={"minReplicas": 1, "maxReplicas": 2, "metric": "kvCacheUsage", "target": 0.8}),
        service(namespace, "groups", "deepseek-v3", selector={"engines": ["vllm"]},
                autoscaling={"minReplicas": 0, "maxReplicas": 1, "metric": "queueLength", "target": 4,
                             "cooldownSeconds": 5}),
    ])  # fmt: skip
    groups_so = wait_for(lambda: kubectl_json("scaledobject.keda.sh/groups", "-n", namespace, "--ignore-not-found"),
                         timeout_s=90, what="ScaledObject groups")  # fmt: skip
    assert groups_so["spec"]["scaleTargetRef"] == {"apiVersion": "inferator.dev/v1alpha1",
                                                   "kind": "InferenceService", "name": "groups"}  # fmt: skip
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

    # KEDA itself acts on them. Idle (every query answers 0): "zero" goes to zero replicas.
    wait_for(
        lambda: replicas_of(kubectl_json, namespace, "zero") == 0, timeout_s=150, what="KEDA scaling to zero"
    )
    wait_for(lambda: group_sets(kubectl_json, namespace, "groups") == (0, 0), timeout_s=150,
             what="KEDA scaling the multi-node service to zero groups")  # fmt: skip
    assert any("inferator_gateway_held_requests" in q and 'service="zero"' in q for q in queries.seen), (
        queries.seen
    )
    # A gateway holds a request for it: the gateway-requests trigger turns KEDA active, and KEDA
    # scales it from zero (the gateway also does that itself at once; this is KEDA agreeing).
    queries.gateway = 1
    wait_for(
        lambda: replicas_of(kubectl_json, namespace, "zero") == 1,
        timeout_s=150,
        what="KEDA scaling from zero",
    )
    active = wait_for(
        lambda: next((c for c in (kubectl_json("scaledobject.keda.sh/zero", "-n", namespace).get("status") or {})
                      .get("conditions", []) if c["type"] == "Active" and c["status"] == "True"), None),
        timeout_s=60, what="ScaledObject Active",
    )  # fmt: skip
    assert active
    wait_for(lambda: group_sets(kubectl_json, namespace, "groups") == (1, 1), timeout_s=150,
             what="KEDA scaling the multi-node service to one whole group")  # fmt: skip
    # Nothing held or in flight any more: back to zero after the cooldown (5 s here).
    queries.gateway = 0
    wait_for(
        lambda: replicas_of(kubectl_json, namespace, "zero") == 0, timeout_s=150, what="KEDA back to zero"
    )
    assert replicas_of(kubectl_json, namespace, "auto") == 1  # minReplicas 1 is never scaled away
    wait_for(lambda: group_sets(kubectl_json, namespace, "groups") == (0, 0), timeout_s=150,
             what="the multi-node service back to zero groups")  # fmt: skip
    cluster.kubectl("delete", "node", *[n.name for n in two_nodes], "--wait=false", check=False)


def group_sets(kubectl_json: Any, namespace: str, name: str) -> tuple[int | None, int]:
    """The InferenceService's spec.replicas (what KEDA wrote) and how many group StatefulSets exist."""
    replicas = kubectl_json(f"infsvc/{name}", "-n", namespace)["spec"].get("replicas")
    sets = kubectl_json("statefulset", "-n", namespace, "-l", f"inferator.dev/inference-service={name}")[
        "items"
    ]
    return replicas, len(sets)
