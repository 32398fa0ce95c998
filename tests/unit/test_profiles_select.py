"""Profile selection on real published model shapes: the profile an expert would pick, or why nothing fits."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.profiles import facts_from_config, pools_for_spec, select_profile
from inferator.profiles.select import parse_profile_name, profile_name
from inferator.profiles.settings import SelectionSettings


def _llama(hidden: int, inter: int, heads: int, kv: int, layers: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": layers,
        "max_position_embeddings": 131072,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }


# config.json shapes as published on the Hugging Face hub; parameter counts as published (model cards,
# safetensors index metadata); weight bytes = parameters x 2 (bf16 checkpoints).
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "llama-3.1-8b": (_llama(4096, 14336, 32, 8, 32), 8_030_261_248),
    "llama-3.1-70b": (_llama(8192, 28672, 64, 8, 80), 70_553_706_496),
    "llama-3.1-405b": (_llama(16384, 53248, 128, 8, 126), 405_853_388_800),
    "mistral-7b": (
        {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_hidden_layers": 32,
            "max_position_embeddings": 32768,
            "vocab_size": 32000,
            "torch_dtype": "bfloat16",
        },
        7_241_732_096,
    ),
    "mixtral-8x7b": (
        {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_hidden_layers": 32,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "max_position_embeddings": 32768,
            "vocab_size": 32000,
            "torch_dtype": "bfloat16",
        },
        46_702_792_704,
    ),
    "qwen2.5-7b": (
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "num_hidden_layers": 28,
            "max_position_embeddings": 32768,
            "vocab_size": 152064,
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": False,
        },
        7_615_616_512,
    ),
    "qwen2.5-72b": (
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": 8192,
            "intermediate_size": 29568,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "num_hidden_layers": 80,
            "max_position_embeddings": 32768,
            "vocab_size": 152064,
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": False,
        },
        72_706_203_648,
    ),
}

GPUS: dict[str, tuple[str, int, int, int]] = {
    # product label, gpu.memory MiB, compute major, minor (as GFD reports them)
    "h100": ("NVIDIA-H100-80GB-HBM3", 81559, 9, 0),
    "h200": ("NVIDIA-H200", 143771, 9, 0),
    "a100-40gb": ("NVIDIA-A100-SXM4-40GB", 40960, 8, 0),
    "a100-80gb": ("NVIDIA-A100-SXM4-80GB", 81920, 8, 0),
    "l4": ("NVIDIA-L4", 23034, 8, 9),
    "a10g": ("NVIDIA-A10G", 23028, 8, 6),
    "l40s": ("NVIDIA-L40S", 46068, 8, 9),
}


def facts(model: str, **overrides: Any) -> Any:
    config, params = CONFIGS[model]
    return facts_from_config({**config, **overrides}, weight_bytes=params * 2, parameter_count=params)


def gpu_node(name: str, gpu: str, count: int) -> dict[str, Any]:
    product, memory, major, minor = GPUS[gpu]
    return {
        "metadata": {
            "name": name,
            "labels": {
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": str(memory),
                "nvidia.com/gpu.compute.major": str(major),
                "nvidia.com/gpu.compute.minor": str(minor),
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": str(count), "memory": "512Gi", "cpu": "64"}},
    }


def cpu_node(name: str, memory: str = "64Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}},
        "status": {"allocatable": {"memory": memory, "cpu": "16"}},
    }


def spec(**fields: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "model"}, **fields})


@pytest.mark.parametrize(
    ("model", "nodes", "fields", "expected"),
    [
        # A single L4 (24 GB): only FP8 leaves room for a useful context.
        ("llama-3.1-8b", [gpu_node("l4", "l4", 1)], {}, "vllm-l4-fp8-tp1-latency"),
        # Eight H100s: FP8 natively; FP8 70B fits two with its full context, so latency uses twice
        # that (four), not the eight the node has. An 8B model fits one GPU: latency takes two.
        ("llama-3.1-70b", [gpu_node("h", "h100", 8)], {}, "vllm-h100-fp8-tp4-latency"),
        ("llama-3.1-8b", [gpu_node("h", "h100", 8)], {}, "vllm-h100-fp8-tp2-latency"),
        # Qwen2.5-7B has 28 attention heads: TP 2 divides them (and TP 8 never would).
        ("qwen2.5-7b", [gpu_node("h", "h100", 8)], {}, "vllm-h100-fp8-tp2-latency"),
        # Ampere has no FP8 tensor cores: BF16 first, TensorRT-LLM first among engines.
        ("mixtral-8x7b", [gpu_node("a", "a100-40gb", 4)], {}, "trtllm-a100-40gb-bf16-tp4-latency"),
        ("mistral-7b", [gpu_node("a", "a10g", 1)], {}, "trtllm-a10g-bf16-tp1-latency"),
        # 405B in BF16 cannot fit 8 x A100-80GB, FP8 weight-only kernels (vLLM on Ampere) can.
        ("llama-3.1-405b", [gpu_node("a", "a100-80gb", 8)], {}, "vllm-a100-80gb-fp8-tp8-latency"),
        (
            "qwen2.5-72b",
            [gpu_node("h", "h200", 8), gpu_node("h2", "h200", 8)],
            {},
            "vllm-h200-fp8-tp2-latency",
        ),
        # The user's throughput preference: fewest GPUs that fit (FP8 70B needs two H100s), more replicas.
        (
            "llama-3.1-70b",
            [gpu_node("h", "h100", 8)],
            {"selector": {"optimizeFor": "throughput"}},
            "vllm-h100-fp8-tp2-throughput",
        ),
        (
            "llama-3.1-8b",
            [gpu_node("h", "h100", 8)],
            {"selector": {"engines": ["sglang"]}},
            "sglang-h100-fp8-tp2-latency",
        ),
        # GPU pools beat the CPU node; a CPU-only cluster gets vllm-cpu.
        ("llama-3.1-8b", [cpu_node("c"), gpu_node("l4", "l4", 1)], {}, "vllm-l4-fp8-tp1-latency"),
        (
            "llama-3.1-8b",
            [cpu_node("c")],
            {"serving": {"maxModelLen": 8192}},
            "vllm-cpu-cpu-fp32-tp1-latency",
        ),
    ],
)
def test_expert_pick(model: str, nodes: list[dict[str, Any]], fields: dict[str, Any], expected: str) -> None:
    selection = select_profile(facts(model), nodes, spec(**fields))
    assert selection.ok, selection.failure
    assert selection.profile is not None
    assert selection.profile.name == expected
    assert selection.candidates[0].feasible


@pytest.mark.parametrize(
    ("model", "nodes", "fields", "expected_reason"),
    [
        ("llama-3.1-70b", [gpu_node("a", "a100-40gb", 1)], {}, "tp1: needs"),
        (
            "llama-3.1-405b",
            [gpu_node("a", "a100-80gb", 8)],
            {"selector": {"precisions": ["bf16"]}},
            "tp8: needs",
        ),
    ],
)
def test_nothing_fits_gives_reasons_in_numbers(
    model: str, nodes: list[dict[str, Any]], fields: dict[str, Any], expected_reason: str
) -> None:
    selection = select_profile(facts(model), nodes, spec(**fields))
    assert not selection.ok
    assert selection.profile is None
    assert selection.failure is not None
    assert any(expected_reason in reason and "GiB per GPU" in reason for reason in selection.failure.reasons)
    assert all(not c.feasible for c in selection.candidates)
    # Every candidate says why it was rejected.
    assert all(c.reason for c in selection.candidates)


def test_70b_on_one_a100_40gb_names_the_memory_gap() -> None:
    selection = select_profile(facts("llama-3.1-70b"), [gpu_node("a", "a100-40gb", 1)], spec())
    assert selection.failure is not None
    bf16 = next(c for c in selection.candidates if c.name == "vllm-a100-40gb-bf16-tp1-latency")
    # 70.55e9 params x 2 bytes = 131.4 GiB of weights; 40960 MiB x 0.9 = 36.0 GiB offered.
    assert "weights 131.4" in bf16.reason
    assert "NVIDIA-A100-SXM4-40GB offers 36.0" in bf16.reason
    assert "closest" in selection.failure.message


def test_design_example_reason_format() -> None:
    selection = select_profile(
        facts("llama-3.1-70b"), [gpu_node("h", "h100", 1)], spec(selector={"precisions": ["bf16"]})
    )
    assert selection.failure is not None
    reason = next(c.reason for c in selection.candidates if c.name == "vllm-h100-bf16-tp1-latency")
    assert reason.startswith("tp1: needs ")
    assert "NVIDIA-H100-80GB-HBM3 offers 71.7" in reason


def test_qwen_7b_never_gets_tp8_and_says_why() -> None:
    selection = select_profile(facts("qwen2.5-7b"), [gpu_node("h", "h100", 8)], spec())
    tp8 = [c for c in selection.candidates if c.tensor_parallel_size == 8]
    assert tp8
    assert all(not c.feasible for c in tp8)
    assert all("28 attention heads are not divisible by 8" in c.reason for c in tp8)


def test_pinned_feasible_profile_is_used_even_when_ranked_lower() -> None:
    pinned = "sglang-h100-bf16-tp2-throughput"
    selection = select_profile(facts("llama-3.1-8b"), [gpu_node("h", "h100", 8)], spec(profile=pinned))
    assert selection.profile is not None
    assert selection.profile.name == pinned
    assert selection.candidates[0].name == pinned


def test_pinned_infeasible_profile_fails_with_its_reason() -> None:
    pinned = "vllm-a100-40gb-bf16-tp1-latency"
    selection = select_profile(facts("llama-3.1-70b"), [gpu_node("a", "a100-40gb", 4)], spec(profile=pinned))
    assert selection.failure is not None
    assert pinned in selection.failure.message
    assert "needs" in selection.failure.message
    # Another profile would have fitted, but a pin is never re-ranked.
    assert any(c.feasible for c in selection.candidates)


@pytest.mark.parametrize(
    ("pinned", "expected"),
    [
        ("vllm-h100-fp8-tp1-latency", "no schedulable pool has GPU 'h100'"),
        ("vllm-l4-fp8-tp2-latency", "needs 2 GPUs on one node"),
        ("not-a-profile", "does not follow"),
    ],
)
def test_pinned_profile_missing_from_the_cluster_is_explained(pinned: str, expected: str) -> None:
    selection = select_profile(facts("llama-3.1-8b"), [gpu_node("l", "l4", 1)], spec(profile=pinned))
    assert selection.failure is not None
    assert expected in selection.failure.message


def test_max_model_len_over_model_maximum_is_refused() -> None:
    selection = select_profile(
        facts("mistral-7b"), [gpu_node("h", "h100", 8)], spec(serving={"maxModelLen": 65536})
    )
    assert selection.failure is not None
    assert "exceeds the model's maximum context of 32768" in selection.failure.message


def test_context_shrinks_to_fit_when_not_pinned_and_is_passed_to_the_engine() -> None:
    selection = select_profile(facts("llama-3.1-8b"), [gpu_node("l", "l4", 1)], spec())
    assert selection.max_model_len is not None
    assert 4096 <= selection.max_model_len < 131072
    assert selection.max_model_len % 256 == 0
    assert selection.profile is not None
    command = selection.profile.command
    assert command[command.index("--max-model-len") + 1] == str(selection.max_model_len)
    assert "context shrunk" in selection.candidates[0].reason


def test_pinned_context_is_not_shrunk() -> None:
    selection = select_profile(
        facts("llama-3.1-8b"), [gpu_node("l", "l4", 1)], spec(serving={"maxModelLen": 131072})
    )
    assert selection.failure is not None


def test_pre_quantised_fp8_checkpoint_goes_to_trtllm() -> None:
    fp8 = facts("llama-3.1-8b", quantization_config={"quant_method": "fp8"})
    fp8 = fp8.model_copy(update={"weight_bytes": 9_000_000_000})
    selection = select_profile(fp8, [gpu_node("h", "h100", 2)], spec())
    assert selection.profile is not None
    assert selection.profile.name == "trtllm-h100-fp8-tp2-latency"
    command = selection.profile.command
    assert command[:3] == ["trtllm-serve", "serve", "/models"]
    assert "--kv_cache_free_gpu_memory_fraction" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert selection.estimates is not None
    # Exact bytes of the checkpoint, sharded over two GPUs.
    assert selection.estimates.weight_bytes_per_gpu == 4_500_000_000


def test_awq_checkpoint_is_served_as_awq_and_not_offered_to_trtllm() -> None:
    awq = facts("llama-3.1-70b", quantization_config={"quant_method": "awq", "bits": 4})
    awq = awq.model_copy(update={"weight_bytes": 39_800_000_000})
    selection = select_profile(awq, [gpu_node("l", "l40s", 2)], spec())
    assert selection.profile is not None
    assert selection.profile.precision == "awq"
    assert selection.profile.engine == "vllm"
    assert "--quantization" not in selection.profile.command  # vLLM reads it from config.json
    trt = [c for c in selection.candidates if c.engine == "trtllm"]
    assert trt
    assert all(not c.feasible for c in trt)


def test_selection_carries_what_the_deployment_needs() -> None:
    selection = select_profile(
        facts("llama-3.1-70b"), [gpu_node("h0", "h100", 8), gpu_node("h1", "h100", 8)], spec()
    )
    assert selection.profile is not None
    # FP8 70B fits two H100s with its full context: latency doubles that, not the node's eight.
    assert selection.gpu_request == 4 == selection.profile.gpu_count
    assert selection.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert selection.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert selection.tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
    )
    assert selection.shm_size_bytes >= 16 * 2**30  # TP > 1
    assert selection.env["HF_HUB_OFFLINE"] == "1"
    assert selection.env["VLLM_NO_USAGE_STATS"] == "1"
    assert selection.pool is not None
    assert selection.pool.key == "h100-x8"
    assert selection.pool.node_names == ("h0", "h1")
    est = selection.estimates
    assert est is not None
    assert est.required_bytes_per_gpu is not None
    assert est.available_bytes_per_gpu is not None
    assert est.required_bytes_per_gpu <= est.available_bytes_per_gpu
    assert est.kv_cache_tokens and est.max_concurrent_sequences
    assert est.max_concurrent_sequences >= 1
    assert selection.profile.required_gpu_memory_bytes >= est.required_bytes_per_gpu
    status = selection.status_candidates(5)
    assert status[0].name == selection.profile.name
    assert status[0].reason.startswith("h100-x8: fits")


def test_served_model_name_falls_back_to_the_cache_name() -> None:
    nodes = [gpu_node("h", "h100", 1)]
    assert select_profile(facts("llama-3.1-8b"), nodes, spec()).profile.served_model_name == "model"  # type: ignore[union-attr]
    named = select_profile(facts("llama-3.1-8b"), nodes, spec(), served_model_name="meta-llama/Llama-3.1-8B")
    assert named.profile is not None
    assert named.profile.served_model_name == "meta-llama/Llama-3.1-8B"
    explicit = select_profile(facts("llama-3.1-8b"), nodes, spec(serving={"servedModelName": "chat"}))
    assert explicit.profile is not None
    assert explicit.profile.served_model_name == "chat"


def test_extra_args_come_last_so_they_win() -> None:
    selection = select_profile(
        facts("llama-3.1-8b"), [gpu_node("h", "h100", 1)], spec(serving={"extraArgs": ["--enforce-eager"]})
    )
    assert selection.profile is not None
    assert selection.profile.command[-1] == "--enforce-eager"


@pytest.mark.parametrize("args", [["--port", "9001"], ["--port=9001"], ["--port", "8500", "--port", "9001"]])
def test_a_port_in_extra_args_moves_probes_and_service_with_it(args: list[str]) -> None:
    selection = select_profile(
        facts("llama-3.1-8b"), [gpu_node("h", "h100", 1)], spec(serving={"extraArgs": args})
    )
    assert selection.profile is not None
    assert selection.profile.port == 9001


def test_disabled_engines_are_not_candidates_and_order_is_configurable() -> None:
    settings = SelectionSettings(engines=["vllm", "sglang"], engine_order=["sglang", "vllm"])
    selection = select_profile(facts("llama-3.1-8b"), [gpu_node("h", "h100", 8)], spec(), settings)
    assert selection.profile is not None
    assert selection.profile.engine == "sglang"
    assert {c.engine for c in selection.candidates} == {"vllm", "sglang"}


def test_ranking_keys_are_configurable() -> None:
    # Engine before precision: TensorRT-LLM BF16 beats vLLM FP8.
    settings = SelectionSettings(ranking=["device", "target", "engine", "precision", "tensor_parallel"])
    selection = select_profile(facts("llama-3.1-8b"), [gpu_node("h", "h100", 8)], spec(), settings)
    assert selection.profile is not None
    assert selection.profile.name == "trtllm-h100-bf16-tp2-latency"


def test_no_nodes_is_a_failure_not_an_exception() -> None:
    selection = select_profile(facts("llama-3.1-8b"), [], spec())
    assert selection.failure is not None
    assert selection.failure.reasons


def test_profile_names_round_trip() -> None:
    name = profile_name("vllm-cpu", "cpu", "fp32", 1, "latency")
    assert name == "vllm-cpu-cpu-fp32-tp1-latency"
    assert parse_profile_name(name) == {
        "engine": "vllm-cpu",
        "gpu": "cpu",
        "precision": "fp32",
        "tp": "1",
        "pp": "1",
        "target": "latency",
    }
    assert parse_profile_name("vllm-a100-40gb-fp8-tp4-throughput") == {
        "engine": "vllm",
        "gpu": "a100-40gb",
        "precision": "fp8",
        "tp": "4",
        "pp": "1",
        "target": "throughput",
    }
    two_nodes = profile_name("vllm", "h100", "fp8", 8, "throughput", pp=2)
    assert two_nodes == "vllm-h100-fp8-tp8-pp2-throughput"
    assert parse_profile_name(two_nodes) == {
        "engine": "vllm",
        "gpu": "h100",
        "precision": "fp8",
        "tp": "8",
        "pp": "2",
        "target": "throughput",
    }


def test_a_reused_pool_scan_gives_the_same_answer_as_the_node_list() -> None:
    nodes = [gpu_node("h", "h100", 8), gpu_node("l", "l4", 1), cpu_node("c")]
    the_spec = spec(scheduling={"nodeSelector": {}})
    scan = pools_for_spec(nodes, the_spec)
    for model in CONFIGS:
        assert select_profile(facts(model), scan, the_spec) == select_profile(facts(model), nodes, the_spec)


def test_the_spec_node_selector_and_tolerations_shape_the_pools() -> None:
    tainted = gpu_node("h", "h100", 8)
    tainted["spec"]["taints"].append({"key": "team", "value": "research", "effect": "NoSchedule"})
    nodes = [tainted, gpu_node("l", "l4", 1)]
    plain = select_profile(facts("llama-3.1-8b"), nodes, spec())
    assert plain.profile is not None
    assert plain.profile.gpu_short_name == "l4"
    assert any(e.name == "h" and "team=research" in e.reason for e in plain.excluded_nodes)
    tolerated = select_profile(
        facts("llama-3.1-8b"),
        nodes,
        spec(scheduling={"tolerations": [{"key": "team", "operator": "Equal", "value": "research"}]}),
    )
    assert tolerated.profile is not None
    assert tolerated.profile.gpu_short_name == "h100"


def test_cpu_profile_sizes_kv_space_to_the_need_not_the_node() -> None:
    selection = select_profile(
        facts("llama-3.1-8b"), [cpu_node("c", "256Gi")], spec(serving={"maxModelLen": 8192})
    )
    assert selection.profile is not None
    assert selection.profile.gpu_count == 0 == selection.gpu_request
    command = selection.profile.command
    assert "--tensor-parallel-size" not in command
    # 8192 tokens x 128 KiB (fp32 KV: 256 KiB) = 2 GiB, not the node's 200 GiB budget.
    assert selection.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert selection.estimates is not None
    assert selection.estimates.kv_cache_bytes_per_gpu == 2 * 2**30
    # fp32 weights (32 GB) + 2 GiB KV + reserve.
    assert selection.memory_request_bytes == selection.estimates.required_bytes_per_gpu
    assert selection.memory_request_bytes > 32 * 10**9
