"""Random and adversarial specs against the real API server and a running operator (hypothesis).

Every generated object is either rejected by the API server (the CRD schema and its CEL rules)
with a message that names a field, or accepted and then given a status for its generation
with a Ready condition and a message. The operator never crashes (no traceback, still alive),
never hot-loops (writes to these objects stop), and never logs, records or reports the value of
the credentials Secret some of the caches reference.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import kubernetes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiException

from inferator.dev.cluster import LocalCluster
from tests.cluster.conftest import OperatorProcess, wait_for, wait_until_quiet
from tests.cluster.test_inferenceservice_controller import LLAMA_8B, ready_cache

pytestmark = pytest.mark.cluster
GROUP, VERSION = "inferator.dev", "v1alpha1"
EXAMPLES = 60

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
name = st.one_of(st.sampled_from(["llama-8b", "missing", "creds"]), st.text(max_size=20), junk)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape (with bad values), sometimes anything at all."""
    return st.one_of(*[strategy] * 7, junk)


# fmt: off
service_spec = st.fixed_dictionaries(
    {"modelCacheRef": maybe(st.fixed_dictionaries({"name": name}))},
    optional={
        "profile": maybe(
            st.sampled_from(["vllm-h100-bf16-tp1-latency", "trtllm-l4-fp8-tp8-throughput", "x"])
        ),
        "selector": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "engines": st.lists(
                        st.sampled_from(["vllm", "trtllm", "sglang", "vllm-cpu", "tgi", ""]), max_size=5
                    ),
                    "precisions": st.lists(
                        st.sampled_from(["bf16", "fp8", "fp4", "int4", "fp64"]), max_size=3
                    ),
                    "tensorParallelSizes": st.lists(st.integers(-2, 100), max_size=3),
                    "gpuProducts": st.lists(st.text(max_size=30), max_size=2),
                    "optimizeFor": st.sampled_from(["latency", "throughput", "cost"]),
                },
            )
        ),
        "serving": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "maxModelLen": st.integers(-10, 10**8),
                    "minConcurrency": st.integers(-1, 10**5),
                    "gpuMemoryUtilization": st.floats(-1, 2, allow_nan=False),
                    "servedModelName": st.text(max_size=40),
                    "extraArgs": st.lists(st.text(max_size=20), max_size=4),
                    "startupTimeoutSeconds": st.integers(-5, 10**6),
                },
            )
        ),
        "replicas": maybe(st.integers(-3, 1)),
        "autoscaling": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "minReplicas": st.integers(-1, 2),
                    "maxReplicas": st.integers(-1, 2),
                    "metric": st.sampled_from(
                        ["queueLength", "runningRequests", "kvCacheUsage", "cpu", "bogus"]
                    ),
                    "target": st.floats(-1, 100, allow_nan=False),
                    "backend": st.sampled_from(["auto", "hpa", "keda", "x"]),
                },
            )
        ),
        "image": maybe(st.text(max_size=40)),
        "unknownField": junk,
    },
)
cache_spec = st.fixed_dictionaries(
    {"source": maybe(st.fixed_dictionaries({"uri": maybe(st.sampled_from([
        "hf://org/model@main", "s3://bucket/prefix", "https://127.0.0.1:1/x/", "pvc://claim/dir", "ftp://x", "hf://",
    ]) | st.text(max_size=30))}, optional={"credentialsSecret": st.fixed_dictionaries({"name": st.just("creds")})}))},
    optional={
        "storage": maybe(st.fixed_dictionaries({}, optional={
            "size": st.sampled_from(["1Gi", "0", "-1Gi", "lots", "10Ti"]), "pvcName": st.text(max_size=20),
            "reclaimPolicy": st.sampled_from(["Retain", "Delete", "Recycle"])})),
        "ownership": maybe(st.fixed_dictionaries({}, optional={
            "runAsUser": st.integers(-1, 2**32), "runAsGroup": st.integers(-1, 2**32), "fixOwnership": junk})),
        "prefetch": maybe(st.fixed_dictionaries({}, optional={
            "parallelDownloads": st.integers(-1, 100), "backoffLimit": st.integers(-1, 200)})),
    },
)
# fmt: on


def test_random_specs_are_rejected_with_a_message_or_end_in_a_condition(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    token = "sk-" + secrets.token_hex(16)
    cluster.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": namespace},
                    "stringData": {"HF_TOKEN": token, "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
                                   "AWS_SECRET_ACCESS_KEY": token}}])  # fmt: skip
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    api = kubernetes.client.CustomObjectsApi(
        kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    )
    accepted: list[tuple[str, str]] = []
    rejected: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(kind=st.sampled_from(["inferenceservices", "modelcaches"]), service=service_spec, cache=cache_spec)
    def send(kind: str, service: dict[str, Any], cache: dict[str, Any]) -> None:
        obj_name = f"h{len(accepted) + len(rejected):03d}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService" if kind == "inferenceservices"
                else "ModelCache", "metadata": {"name": obj_name},
                "spec": service if kind == "inferenceservices" else cache}  # fmt: skip
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, kind, body)
        except ApiException as exc:
            assert exc.status in (400, 422), (exc.status, exc.body)
            message = json.loads(exc.body).get("message", "")
            assert "spec" in message, message  # names the field it refuses
            rejected.append(message)
            return
        accepted.append((kind, obj_name))

    send()
    assert accepted and rejected, (len(accepted), len(rejected))

    def conditioned(kind: str, obj_name: str) -> bool:
        obj = kubectl_json(f"{kind}/{obj_name}", "-n", namespace)
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        return status.get("observedGeneration") == obj["metadata"]["generation"] and bool(
            ready.get("message")
        )

    for kind, obj_name in accepted:
        wait_for(lambda k=kind, n=obj_name: conditioned(k, n), timeout_s=120,
                 what=f"{kind}/{obj_name} with a Ready condition and a message")  # fmt: skip

    # No hot loop: once every object has its condition, writes to them stop.
    names = {n for _, n in accepted}

    def to_generated(event: dict[str, Any]) -> bool:
        return (event.get("objectRef") or {}).get("name") in names

    wait_until_quiet(cluster, to_generated, timeout_s=150)
    assert operator.proc.poll() is None, "the operator is still running"
    log = operator.log()
    assert "Traceback" not in log, log[-4000:]
    everything = log + json.dumps(kubectl_json("infsvc,mcache,events", "-n", namespace))
    assert token not in everything, "a secret value leaked into a log, an event or a status"
    print(f"{len(accepted)} accepted, {len(rejected)} rejected by the API server")
