"""Properties of selection over random model shapes and node pools (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.api.modelcache import ModelFacts
from inferator.profiles import select_profile
from inferator.profiles.memory import weight_bytes
from inferator.profiles.model_facts import estimate_parameter_count, facts_from_config

PROFILE_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GPU_LABELS: list[tuple[str, int, int, int]] = [
    ("NVIDIA-H100-80GB-HBM3", 81559, 9, 0),
    ("NVIDIA-H200", 143771, 9, 0),
    ("NVIDIA-A100-SXM4-40GB", 40960, 8, 0),
    ("NVIDIA-A100-SXM4-80GB", 81920, 8, 0),
    ("NVIDIA-L4", 23034, 8, 9),
    ("NVIDIA-L40S", 46068, 8, 9),
    ("NVIDIA-A10G", 23028, 8, 6),
    ("Tesla-T4", 15360, 7, 5),
    ("NVIDIA-B200", 183359, 10, 0),
    ("NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", 19968, 8, 0),
]


@st.composite
def model_facts(draw: st.DrawFn) -> ModelFacts:
    kv = draw(st.sampled_from([1, 2, 4, 8, 16]))
    group = draw(st.sampled_from([1, 2, 4, 7, 8]))
    head_dim = draw(st.sampled_from([64, 80, 128, 256]))
    heads = kv * group
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": heads * head_dim,
        "intermediate_size": heads * head_dim * draw(st.integers(2, 4)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": draw(st.integers(1, 128)),
        "max_position_embeddings": draw(st.sampled_from([2048, 4096, 8192, 32768, 131072])),
        "vocab_size": draw(st.integers(1000, 160000)),
        "torch_dtype": draw(st.sampled_from(["bfloat16", "float16", "float32"])),
    }
    if draw(st.booleans()):
        config["num_local_experts"] = draw(st.sampled_from([4, 8, 16]))
        config["num_experts_per_tok"] = 2
    quant = draw(st.sampled_from([None, {"quant_method": "fp8"}, {"quant_method": "awq", "bits": 4}]))
    params = estimate_parameter_count(config)
    bytes_per_param = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0}[config["torch_dtype"]]
    if quant is not None:
        config["quantization_config"] = quant
        bytes_per_param = 1.0 if quant["quant_method"] == "fp8" else 0.55
    return facts_from_config(config, weight_bytes=int(params * bytes_per_param), parameter_count=params)


@st.composite
def cluster_nodes(draw: st.DrawFn) -> list[dict[str, Any]]:
    nodes = []
    for index in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 5)) == 0:
            memory_gi = draw(st.sampled_from([16, 64, 256]))
            nodes.append(
                {
                    "metadata": {"name": f"cpu-{index}"},
                    "status": {"allocatable": {"memory": f"{memory_gi}Gi"}},
                }
            )
            continue
        product, memory, major, minor = draw(st.sampled_from(GPU_LABELS))
        count = 1 if "MIG" in product else draw(st.sampled_from([1, 2, 4, 8]))
        nodes.append(
            {
                "metadata": {
                    "name": f"gpu-{index}",
                    "labels": {
                        "nvidia.com/gpu.product": product,
                        "nvidia.com/gpu.memory": str(memory),
                        "nvidia.com/gpu.compute.major": str(major),
                        "nvidia.com/gpu.compute.minor": str(minor),
                    },
                },
                "status": {"allocatable": {"nvidia.com/gpu": str(count), "memory": "512Gi"}},
            }
        )
    return nodes


@st.composite
def specs(draw: st.DrawFn, facts: ModelFacts) -> InferenceServiceSpec:
    serving: dict[str, Any] = {
        "minConcurrency": draw(st.integers(1, 64)),
        "gpuMemoryUtilization": draw(st.sampled_from([0.5, 0.8, 0.9, 0.95])),
    }
    if draw(st.booleans()):
        serving["maxModelLen"] = draw(st.integers(16, facts.max_position_embeddings or 4096))
    body: dict[str, Any] = {"modelCacheRef": {"name": "m"}, "serving": serving}
    if draw(st.booleans()):
        body["selector"] = {
            "engines": draw(st.lists(st.sampled_from(["trtllm", "vllm", "sglang", "vllm-cpu"]), max_size=2)),
            "optimizeFor": draw(st.sampled_from(["latency", "throughput"])),
        }
    return InferenceServiceSpec.model_validate(body)


def _formula_bytes_per_gpu(
    facts: ModelFacts, precision: Any, tp: int, length: int, conc: int, stages: int = 1
) -> int:
    """The documented formula, written out independently: weights/(TP x PP) + KV for length x
    concurrency, the layers (weights and KV) split evenly over the pipeline stages (nodes)."""
    kv_per_token = 2 * facts.num_layers * max(1, facts.num_key_value_heads // tp) * facts.head_dim * 2
    return math.ceil(weight_bytes(facts, precision) / (tp * stages)) + kv_per_token * length * conc // stages


@PROFILE_SETTINGS
@given(data=st.data(), facts=model_facts(), nodes=cluster_nodes())
def test_a_selection_is_always_feasible(
    data: st.DataObject, facts: ModelFacts, nodes: list[dict[str, Any]]
) -> None:
    spec = data.draw(specs(facts))
    selection = select_profile(facts, nodes, spec)
    if selection.failure is not None:
        assert selection.profile is None
        assert selection.failure.reasons
        assert not any(c.feasible for c in selection.candidates)
        return
    chosen = selection.chosen
    assert chosen is not None and chosen.memory is not None and selection.profile is not None
    assert chosen.feasible
    assert chosen.memory.required_bytes_per_gpu <= chosen.memory.available_bytes_per_gpu
    assert facts.num_attention_heads % chosen.tensor_parallel_size == 0
    assert chosen.tensor_parallel_size <= max(chosen.pool.gpus_per_node, 1)
    assert chosen.nodes <= chosen.pool.largest_domain and chosen.nodes <= facts.num_layers
    if chosen.nodes > 1:  # a replica spans nodes only when no single node holds the model
        assert not any(c.feasible and c.nodes == 1 for c in selection.candidates)
        assert chosen.tensor_parallel_size == chosen.pool.gpus_per_node
    if spec.serving.max_model_len is not None:
        assert chosen.max_model_len == spec.serving.max_model_len
    gpu = chosen.pool.gpu
    if gpu is not None:
        assert chosen.precision != "bf16" or gpu.supports_bf16
        assert chosen.precision != "fp4" or gpu.supports_fp4
        if gpu.mig_slice:
            assert chosen.tensor_parallel_size == 1
    if spec.selector and spec.selector.engines:
        assert chosen.engine in spec.selector.engines
    est = selection.estimates
    assert (
        est is not None and est.required_bytes_per_gpu is not None and est.available_bytes_per_gpu is not None
    )
    assert est.required_bytes_per_gpu <= est.available_bytes_per_gpu


@PROFILE_SETTINGS
@given(data=st.data(), facts=model_facts(), nodes=cluster_nodes())
def test_selection_is_deterministic_and_ignores_node_order(
    data: st.DataObject, facts: ModelFacts, nodes: list[dict[str, Any]]
) -> None:
    spec = data.draw(specs(facts))
    first = select_profile(facts, nodes, spec)
    again = select_profile(facts, nodes, spec)
    shuffled = select_profile(facts, list(reversed(nodes)), spec)
    for other in (again, shuffled):
        assert other.profile == first.profile
        assert other.estimates == first.estimates
        assert [(c.name, c.pool.key, c.feasible, c.reason) for c in other.candidates] == [
            (c.name, c.pool.key, c.feasible, c.reason) for c in first.candidates
        ]


@PROFILE_SETTINGS
@given(facts=model_facts(), nodes=cluster_nodes())
def test_a_pinned_infeasible_profile_fails_with_reasons(
    facts: ModelFacts, nodes: list[dict[str, Any]]
) -> None:
    spec = InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "m"}})
    free = select_profile(facts, nodes, spec)
    feasible_names = {c.name for c in free.candidates if c.feasible}
    infeasible = [
        c for c in free.candidates if not c.feasible and not c.held_back and c.name not in feasible_names
    ]
    if not infeasible:
        return
    pinned = infeasible[0]
    selection = select_profile(facts, nodes, spec.model_copy(update={"profile": pinned.name}))
    assert selection.profile is None
    assert selection.failure is not None
    assert pinned.name in selection.failure.message
    assert any(pinned.reason in reason for reason in selection.failure.reasons)


@PROFILE_SETTINGS
@given(data=st.data(), facts=model_facts(), nodes=cluster_nodes())
def test_estimates_never_under_count_the_documented_formula(
    data: st.DataObject, facts: ModelFacts, nodes: list[dict[str, Any]]
) -> None:
    spec = data.draw(specs(facts))
    selection = select_profile(facts, nodes, spec)
    conc = spec.serving.min_concurrency
    for candidate in selection.candidates:
        if candidate.memory is None or candidate.pool.gpu is None:
            continue
        formula = _formula_bytes_per_gpu(
            facts,
            candidate.precision,
            candidate.tensor_parallel_size,
            candidate.max_model_len,
            conc,
            candidate.nodes,
        )
        assert candidate.memory.required_bytes_per_gpu >= formula
        if candidate.feasible:
            assert formula <= candidate.memory.available_bytes_per_gpu
