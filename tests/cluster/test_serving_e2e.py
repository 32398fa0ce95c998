"""Serving end to end on the runner node: a real vLLM-CPU server from a real ModelCache.

The chain under test is the product's: a ModelCache whose prefetch Job downloads a generated
tiny Llama from nginx, an InferenceService whose profile the operator selects against the
runner node, the rendered Deployment's pod run by the runner with the operator's default
vLLM-CPU engine image (mapped to `.venv-vllm`, see conftest), its probes, and the readiness
gate the operator opens only after the server listed the model and answered one token.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from inferator.api.cache_manifest import MANIFEST_PATH
from inferator.dev.cluster import LocalCluster, free_port
from inferator.render.inferenceservice import READINESS_GATE
from tests.cluster.conftest import OperatorProcess, served_root, wait_for
from tests.cluster.test_inferenceservice_controller import condition
from tests.cluster.test_modelcache_e2e import ON_RUNNER
from tests.prefetch_servers import nginx_server
from tests.runtime.tiny_model import vllm_python, write_tiny_llama

pytestmark = pytest.mark.cluster
SERVED = "tiny-llama"
# vLLM-CPU starts in 80-150 s here (torch.compile of the model on a cold cache); the prefetch,
# scheduling and warm-up add little. Generous: CI machines are shared.
READY_BUDGET_S = 600


def post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def test_vllm_cpu_serves_from_the_cache_and_the_gate_opens_after_a_real_completion(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    python = vllm_python()  # fails with the install hint when .venv-vllm is missing
    www = served_root(tmp_path_factory, "www")
    model_dir = write_tiny_llama(www / "tiny-llama", python=python)
    shutil.rmtree(model_dir / Path(MANIFEST_PATH).parent)  # the source is a checkpoint, not a cache
    port = free_port()  # every runner pod shares loopback: the server takes a free port
    started = time.monotonic()
    with nginx_server(www) as source:
        cluster.apply([
            {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache",
             "metadata": {"name": "tiny", "namespace": namespace},
             "spec": {"source": {"uri": f"{source.url}/tiny-llama/"}, "storage": {"size": "1Gi"},
                      "prefetch": ON_RUNNER}},
            {"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceService",
             "metadata": {"name": "chat", "namespace": namespace},
             "spec": {"modelCacheRef": {"name": "tiny"}, "scheduling": ON_RUNNER,
                      "selector": {"engines": ["vllm-cpu"]},
                      "serving": {"maxModelLen": 1024, "servedModelName": SERVED,
                                  "extraArgs": ["--port", str(port)]}}},
        ])  # fmt: skip

        def ready() -> dict[str, Any] | None:
            svc: dict[str, Any] = kubectl_json("infsvc/chat", "-n", namespace)
            if condition(svc, "Ready").get("status") == "True":
                return svc
            assert svc.get("status", {}).get("phase") not in ("Failed", "NoCompatibleProfile"), svc["status"]
            return None

        svc = wait_for(ready, timeout_s=READY_BUDGET_S, interval_s=2, what="InferenceService Ready")
    ready_s = time.monotonic() - started
    status = svc["status"]
    assert status["profile"].startswith("vllm-cpu-"), status["profile"]
    assert condition(svc, "Available")["status"] == "True"
    assert status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://chat.{namespace}.svc:{port}/v1"

    pods = kubectl_json("pods", "-n", namespace, "-l", "inferator.dev/inference-service=chat")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == "runner-0"
    gate = next(c for c in pod["status"]["conditions"] if c["type"] == READINESS_GATE)
    assert gate["status"] == "True"
    assert SERVED in gate["message"] and "one-token completion" in gate["message"], gate
    # The server's own access log shows the warm-up completion, and the gate opened after it.
    log = next((cluster.state_dir / "runner" / "pods").glob(f"{namespace}_chat-*/server.log")).read_text(
        errors="replace"
    )
    assert "POST /v1/completions" in log, log[-3000:]

    # A chat completion through the pod, as a client of the Service would send it.
    answer = post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"model": SERVED, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
    )
    assert answer["model"] == SERVED
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] >= 1
    print(f"serving e2e: apply to Ready in {ready_s:.0f} s (prefetch, selection, vLLM-CPU start, warm-up)")
