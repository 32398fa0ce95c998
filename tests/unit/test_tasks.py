"""Pooling models (embed, rerank, classify): the task, the engines that serve it, sizing and ranking, warm-up.

Real published configs from tests/data/model_configs where the corpus has one
(all-MiniLM-L6-v2, ms-marco-MiniLM cross-encoder, bge-reranker-v2-m3, Qwen3-8B); nodes as GPU
Feature Discovery labels them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferator.api.inferenceservice import Autoscaling, InferenceServiceSpec
from inferator.api.modelcache import ModelFacts
from inferator.profiles import select_profile
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.settings import SelectionSettings
from inferator.profiles.tasks import ENDPOINTS, engine_refusal, plan_task
from inferator.render.inferenceservice import UnsupportedSignal, signal_metric
from inferator.runtime.warmup import task_answer_problem, task_request
from tests.unit.test_profiles_select import cpu_node, gpu_node

CORPUS = Path(__file__).resolve().parents[1] / "data" / "model_configs"


def corpus(name: str) -> ModelFacts:
    return facts_from_directory(CORPUS / name)


MINILM = "sentence-transformers--all-minilm-l6-v2"
MARCO = "cross-encoder--ms-marco-minilm-l-6-v2"
BGE_RERANKER = "baai--bge-reranker-v2-m3"
QWEN3_8B = "qwen--qwen3-8b"


def spec(**serving: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "m"}, "serving": serving})


def mig_node(name: str) -> dict[str, Any]:
    """An A100 40GB split into 1g.5gb slices (GFD's single strategy: the slice is the GPU)."""
    node = gpu_node(name, "a100-40gb", 7)
    node["metadata"]["labels"]["nvidia.com/gpu.product"] = "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    node["metadata"]["labels"]["nvidia.com/gpu.memory"] = "4864"
    return node


MIXED_CLUSTER = [gpu_node("h100-0", "h100", 8), gpu_node("l4-0", "l4", 1), gpu_node("l40s-0", "l40s", 4)]


# -- the task -----------------------------------------------------------------------------------


def test_the_corpus_models_have_their_published_task() -> None:
    assert corpus(MINILM).task == "embed"
    assert corpus(MARCO).task == "rerank"
    assert corpus(BGE_RERANKER).task == "rerank"
    assert corpus(QWEN3_8B).task == "generate"


@pytest.mark.parametrize(
    ("model", "pin", "task", "convert"),
    [
        (QWEN3_8B, None, "generate", None),
        (QWEN3_8B, "embed", "embed", "embed"),  # a causal LM served as an embedder (last-token pooling)
        (QWEN3_8B, "classify", "classify", "classify"),
        (MINILM, None, "embed", None),
        (MINILM, "rerank", "rerank", None),  # vLLM scores an embedder's pairs by cosine similarity
        (MARCO, "classify", "classify", None),  # a one-label cross-encoder classifies too
    ],
)
def test_a_pin_the_checkpoint_can_serve_is_planned(
    model: str, pin: Any, task: str, convert: str | None
) -> None:
    plan = plan_task(corpus(model), pin)
    assert (plan.task, plan.convert, plan.refusal) == (task, convert, "")


@pytest.mark.parametrize(
    ("model", "pin", "words"),
    [
        (MINILM, "generate", "no language-model head"),
        (MARCO, "generate", "no language-model head"),
        (MINILM, "classify", "no head for classify"),
        (QWEN3_8B, "rerank", "pin task embed or classify"),
    ],
)
def test_a_pin_the_checkpoint_cannot_serve_is_refused_with_the_reason(
    model: str, pin: Any, words: str
) -> None:
    plan = plan_task(corpus(model), pin)
    assert words in plan.refusal
    selection = select_profile(corpus(model), MIXED_CLUSTER, spec(task=pin))
    assert not selection.ok and words in selection.message


def test_a_causal_embedder_is_converted() -> None:
    """Qwen3-Embedding: a Qwen3ForCausalLM checkpoint with sentence-transformers files."""
    qwen_embedding = corpus(QWEN3_8B).model_copy(update={"task": "embed"})
    assert plan_task(qwen_embedding, None).convert == "embed"
    selection = select_profile(qwen_embedding, MIXED_CLUSTER, spec(maxModelLen=8192))
    assert selection.profile is not None
    argv = selection.profile.command
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert argv[argv.index("--convert") + 1] == "embed"


# -- engines ------------------------------------------------------------------------------------


def test_which_engine_serves_which_task() -> None:
    served = {
        (engine, task)
        for engine in ("vllm", "vllm-cpu", "sglang", "trtllm")
        for task in ENDPOINTS
        if not engine_refusal(engine, task)
    }
    assert served == {
        *[(e, t) for e in ("vllm", "vllm-cpu") for t in ("generate", "embed", "rerank", "classify")],
        ("sglang", "generate"),
        ("sglang", "embed"),
        ("sglang", "rerank"),
        ("trtllm", "generate"),
    }
    assert "no pooling runner" in engine_refusal("trtllm", "embed")
    assert "classification route" in engine_refusal("sglang", "classify")


def test_the_engines_refusals_reach_the_candidates() -> None:
    settings = SelectionSettings(engines=["trtllm", "vllm", "sglang"])
    selection = select_profile(corpus(MINILM), MIXED_CLUSTER, spec(), settings)
    reasons = {c.name: c.reason for c in selection.candidates if not c.feasible}
    assert any(
        "trtllm-serve has no pooling runner" in r for n, r in reasons.items() if n.startswith("trtllm")
    )
    assert selection.profile is not None and selection.profile.engine == "vllm"


def test_sglang_serves_a_cross_encoder_as_its_docs_launch_it() -> None:
    settings = SelectionSettings(engines=["sglang"])
    selection = select_profile(corpus(BGE_RERANKER), MIXED_CLUSTER, spec(), settings)
    assert selection.profile is not None
    argv = selection.profile.command
    for flag in ("--is-embedding", "--disable-radix-cache", "--attention-backend"):
        assert flag in argv
    assert argv[argv.index("--attention-backend") + 1] == "triton"
    classify = select_profile(corpus(MARCO), MIXED_CLUSTER, spec(task="classify"), settings)
    assert not classify.ok and "classification route" in classify.message


def test_an_embedder_pinned_rerank_is_scored_by_vllm_not_sglang() -> None:
    """vLLM ranks an embedder's pairs by cosine; SGLang reranks cross-encoders only."""
    settings = SelectionSettings(engines=["sglang", "vllm"], engine_order=["sglang", "vllm"])
    selection = select_profile(corpus(MINILM), MIXED_CLUSTER, spec(task="rerank"), settings)
    assert selection.profile is not None and selection.profile.engine == "vllm"
    assert selection.profile.task == "rerank"
    sglang = [c for c in selection.candidates if c.name.startswith("sglang")]
    assert sglang and not any(c.feasible for c in sglang)
    assert all("cosine" in c.reason for c in sglang if "-tp1-" in c.name)
    # The same engines serve a real cross-encoder on SGLang first, as ordered.
    marco = select_profile(corpus(BGE_RERANKER), MIXED_CLUSTER, spec(), settings)
    assert marco.profile is not None and marco.profile.engine == "sglang"


# -- sizing and ranking -------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["latency", "throughput"])
def test_an_embedder_gets_the_smallest_gpu_and_one_of_it(target: str) -> None:
    """The big GPUs stay for generation: an L4 (or a MIG slice) before an L40S or an H100."""
    s = InferenceServiceSpec.model_validate(
        {"modelCacheRef": {"name": "m"}, "selector": {"optimizeFor": target}}
    )
    selection = select_profile(corpus(MINILM), MIXED_CLUSTER, s)
    assert selection.profile is not None
    assert selection.profile.gpu_short_name == "l4"
    assert selection.profile.tensor_parallel_size == 1
    assert selection.profile.task == "embed"
    with_mig = select_profile(corpus(MINILM), [*MIXED_CLUSTER, mig_node("mig-0")], s)
    assert with_mig.profile is not None and "mig" in (with_mig.profile.gpu_short_name or "")


def test_a_generative_model_still_gets_the_fastest_gpu() -> None:
    selection = select_profile(corpus(QWEN3_8B), MIXED_CLUSTER, spec(maxModelLen=8192))
    assert selection.profile is not None and selection.profile.gpu_short_name == "h100"


def test_concurrency_costs_a_pooling_model_no_kv() -> None:
    """An encoder caches nothing; minConcurrency sizes generation, not one-pass pooling."""
    one = select_profile(corpus(MINILM), [cpu_node("cpu-0", "8Gi")], spec(minConcurrency=1))
    many = select_profile(corpus(MINILM), [cpu_node("cpu-0", "8Gi")], spec(minConcurrency=512))
    assert one.profile is not None and many.profile is not None
    assert one.env == many.env and dict(one.env)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    generate_one = select_profile(corpus(QWEN3_8B), [gpu_node("h", "h100", 8)], spec(maxModelLen=32768))
    generate_many = select_profile(
        corpus(QWEN3_8B), [gpu_node("h", "h100", 8)], spec(maxModelLen=32768, minConcurrency=64)
    )
    assert generate_one.estimates and generate_many.estimates
    assert (generate_many.estimates.required_bytes_per_gpu or 0) > (
        generate_one.estimates.required_bytes_per_gpu or 0
    )


# -- autoscaling and warm-up --------------------------------------------------------------------


def test_pooling_models_scale_on_the_request_gauges_not_on_kv() -> None:
    assert signal_metric("vllm", "queueLength", "embed") == "vllm:num_requests_waiting"
    assert signal_metric("sglang", "runningRequests", "rerank") == "sglang:num_running_reqs"
    with pytest.raises(UnsupportedSignal, match="keep no KV"):
        signal_metric("vllm", "kvCacheUsage", "embed")
    assert Autoscaling.model_validate({"metric": "kvCacheUsage"})  # valid for generation


@pytest.mark.parametrize(
    ("task", "good", "bad"),
    [
        ("generate", {"choices": [{"text": "x"}]}, {"choices": []}),
        ("embed", {"data": [{"embedding": [0.1, 0.2]}]}, {"data": [{"embedding": []}]}),
        ("rerank", {"results": [{"index": 0}, {"index": 1}]}, {"results": [{"index": 0}]}),
        ("rerank", [{"score": 0.9, "index": 0}, {"score": 0.1, "index": 1}], []),  # SGLang's bare list
        ("classify", {"data": [{"probs": [0.2, 0.8]}]}, {"data": []}),
    ],
)
def test_the_warm_up_checks_each_tasks_answer(task: str, good: Any, bad: Any) -> None:
    assert task_answer_problem(task, good) == ""
    assert task_answer_problem(task, bad) != ""
    assert task_request(task, "m")["model"] == "m"
