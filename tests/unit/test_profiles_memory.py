"""Memory math, model facts from config.json and safetensors headers, engine command lines."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from inferator.api.modelcache import ModelFacts
from inferator.profiles import engines
from inferator.profiles.memory import (
    GIB,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    kv_heads_per_gpu,
    plan_gpu_memory,
    quantized_precision,
    weight_bytes,
)
from inferator.profiles.model_facts import (
    UnsupportedModel,
    estimate_parameter_count,
    facts_from_config,
    facts_from_directory,
    quantization_from_config,
    read_safetensors_header,
)

LLAMA_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "max_position_embeddings": 131072,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}
LLAMA_70B = LLAMA_8B | {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}
MIXTRAL = LLAMA_8B | {
    "model_type": "mixtral",
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
}
QWEN_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "num_hidden_layers": 28,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize(
    ("config", "published"),
    [
        (LLAMA_8B, 8_030_261_248),
        (LLAMA_70B, 70_553_706_496),
        (MIXTRAL, 46_702_792_704),
        (QWEN_7B, 7_615_616_512),
    ],
)
def test_parameter_estimate_matches_published_counts(config: dict[str, Any], published: int) -> None:
    assert abs(estimate_parameter_count(config) - published) / published < 0.001


@pytest.mark.parametrize(
    ("config", "kib_per_token"),
    # DESIGN.md: Llama-3.1-8B 128 KiB/token in BF16, Llama-3.1-70B 320 KiB/token.
    [(LLAMA_8B, 128), (LLAMA_70B, 320), (QWEN_7B, 56)],
)
def test_kv_bytes_per_token(config: dict[str, Any], kib_per_token: int) -> None:
    assert kv_bytes_per_token(facts_from_config(config)) == kib_per_token * 1024


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    qwen = facts_from_config(QWEN_7B)
    assert [kv_heads_per_gpu(qwen, tp) for tp in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert kv_bytes_per_token_per_gpu(qwen, 8) == kv_bytes_per_token_per_gpu(qwen, 4)


def test_online_fp8_keeps_embeddings_in_bf16() -> None:
    facts = facts_from_config(LLAMA_8B)
    embed = 2 * 128256 * 4096
    assert weight_bytes(facts, "bf16") == facts.weight_bytes
    assert weight_bytes(facts, "fp8") == (facts.parameter_count - embed) + 2 * embed


def test_mixture_of_experts_weights_count_every_expert() -> None:
    mixtral = facts_from_config(MIXTRAL)
    # All 8 experts are resident even though 2 run per token.
    assert weight_bytes(mixtral, "bf16") == 2 * mixtral.parameter_count
    assert weight_bytes(mixtral, "bf16") > 90 * 10**9


def test_pre_quantised_checkpoints_use_their_exact_bytes() -> None:
    facts = facts_from_config(
        LLAMA_70B | {"quantization_config": {"quant_method": "awq", "bits": 4}}, 39_000_000_000
    )
    assert quantized_precision(facts) == ("awq", "")
    assert weight_bytes(facts, "awq") == 39_000_000_000


@pytest.mark.parametrize(
    ("config", "method", "bits", "precision", "bytes_per_weight"),
    [
        ({"quant_method": "fp8"}, "fp8", 8, "fp8", 1.0),
        # DeepSeek-V3's block scales: one fp32 per 128 x 128 weights.
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8", 8, "fp8", 1 + 4 / 16384),
        # AutoGPTQ int4, group 128: packed weights, an fp16 scale and a packed zero per group.
        ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq", 4, "gptq", 0.5 + (2 + 0.5) / 128),
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "gptq", 8, "gptq", 1 + 3 / 128),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, "awq", 4, "awq", 0.5 + 2.5 / 128),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
            },
            "compressed-tensors",
            8,
            "fp8",
            1.0,
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "g": {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}
                },
            },
            "compressed-tensors",
            4,
            "int4",
            0.5 + 2 / 128,
        ),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "modelopt_fp4", 4, "nvfp4", 0.5 + 1 / 16),
        # OCP MX: 4-bit values and one e8m0 scale byte per 32 (gpt-oss keeps attention in bf16).
        ({"quant_method": "mxfp4"}, "mxfp4", 4, "mxfp4", 0.5 + 1 / 32),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes", 4, "int4", 0.5 + 4 / 64),
    ],
)
def test_quantisation_configs(
    config: dict[str, Any], method: str, bits: int, precision: str, bytes_per_weight: float
) -> None:
    q = quantization_from_config({"quantization_config": config})
    assert q is not None
    assert (q.method, q.bits, q.scheme) == (method, bits, precision)
    assert q.bytes_per_weight == pytest.approx(bytes_per_weight)
    facts = facts_from_config(LLAMA_8B | {"quantization_config": config})
    assert quantized_precision(facts)[0] == precision
    # Linear layers at the scheme's bytes, embeddings and LM head (2 x 128256 x 4096) in bf16.
    embed = 2 * 128256 * 4096
    expected = (facts.parameter_count - embed) * bytes_per_weight + embed * 2
    assert facts.weight_bytes == pytest.approx(expected, rel=1e-3)


def test_unsupported_quantisation_is_refused_naming_the_method() -> None:
    with pytest.raises(UnsupportedModel, match="hqq"):
        facts_from_config(LLAMA_8B | {"quantization_config": {"quant_method": "hqq", "bits": 3}})


def test_memory_plan_adds_up() -> None:
    facts = facts_from_config(LLAMA_8B)
    plan = plan_gpu_memory(facts, "bf16", 2, 8192, 4, 81559 * 2**20, 0.9)
    assert plan.weight_bytes_per_gpu == facts.weight_bytes // 2
    assert plan.kv_required_bytes_per_gpu == 2 * 32 * 4 * 128 * 2 * 8192 * 4
    assert plan.required_bytes_per_gpu == (
        plan.weight_bytes_per_gpu + plan.kv_required_bytes_per_gpu + plan.overhead_bytes_per_gpu
    )
    assert plan.fits
    assert plan.kv_cache_tokens * plan.kv_bytes_per_token_per_gpu <= plan.kv_cache_bytes_per_gpu
    assert plan.overhead_bytes_per_gpu > GIB


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_facts_from_directory_reads_only_safetensors_headers(tmp_path: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("BF16", [100, 64], 12800)})
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [64, 128], 16384)})
    assert read_safetensors_header(tmp_path / "model-00001-of-00002.safetensors")["a"]["shape"] == [100, 64]
    facts = facts_from_directory(tmp_path)
    assert isinstance(facts, ModelFacts)
    assert facts.parameter_count == 100 * 64 + 64 * 128
    assert facts.weight_bytes == 12800 + 16384
    assert facts.dtype == "bfloat16"  # from the tensors: config.json named none
    assert facts.head_dim == 16


def test_truncated_safetensors_header_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors_header(bad)


def test_multimodal_configs_use_the_text_config() -> None:
    config = {"architectures": ["Llava"], "text_config": LLAMA_8B | {"architectures": None}}
    facts = facts_from_config(config)
    assert facts.num_layers == 32
    assert facts.architecture == "Llava"


def _inputs(engine: Any, **overrides: Any) -> engines.LaunchInputs:
    base: dict[str, Any] = {
        "engine": engine,
        "model_dir": "/models",
        "served_model_name": "llama",
        "precision": "fp8",
        "online_quantization": True,
        "tensor_parallel_size": 2,
        "target": "latency",
        "max_model_len": 8192,
        "min_concurrency": 1,
        "gpu_memory_utilization": 0.9,
    }
    return engines.LaunchInputs(**(base | overrides))


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_vllm_command() -> None:
    argv = engines.engine_command(_inputs("vllm"))
    assert argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == "/models"
    assert _flag(argv, "--served-model-name") == "llama"
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert _flag(argv, "--max-model-len") == "8192"
    assert _flag(argv, "--gpu-memory-utilization") == "0.90"
    assert _flag(argv, "--quantization") == "fp8"
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("0.0.0.0", "8000")


def test_trtllm_command() -> None:
    argv = engines.engine_command(
        _inputs("trtllm", online_quantization=False, trtllm_kv_cache_free_fraction=0.85)
    )
    assert argv[:3] == ["trtllm-serve", "serve", "/models"]
    assert _flag(argv, "--tp_size") == "2"
    assert _flag(argv, "--backend") == "pytorch"
    assert _flag(argv, "--kv_cache_free_gpu_memory_fraction") == "0.85"
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("0.0.0.0", "8000")


def test_sglang_command() -> None:
    argv = engines.engine_command(_inputs("sglang", precision="bf16", online_quantization=False))
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert _flag(argv, "--model-path") == "/models"
    assert _flag(argv, "--tp") == "2"
    assert _flag(argv, "--context-length") == "8192"
    assert "--mem-fraction-static" in argv
    assert "--enable-metrics" in argv
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("0.0.0.0", "8000")


def test_vllm_cpu_command_has_no_gpu_arguments_and_kv_space_in_env() -> None:
    inputs = _inputs(
        "vllm-cpu",
        precision="fp32",
        online_quantization=False,
        tensor_parallel_size=1,
        cpu_kv_cache_space_gib=3,
    )
    argv = engines.engine_command(inputs)
    assert "--tensor-parallel-size" not in argv
    assert "--gpu-memory-utilization" not in argv
    assert _flag(argv, "--dtype") == "float32"
    env = engines.engine_env(inputs)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_trtllm_fraction_translates_utilisation_to_free_memory_share() -> None:
    total = 80 * GIB
    # 0.9 x 80 = 72 GiB budget; 40 GiB weights + 2 GiB overhead leave 30 GiB of 38 GiB free.
    assert engines.trtllm_kv_cache_free_fraction(total, 0.9, 40 * GIB, 2 * GIB) == 0.78


def test_shared_memory_is_large_for_tensor_parallel() -> None:
    assert engines.shm_size_bytes("vllm", 4) > engines.shm_size_bytes("vllm", 1)
    assert engines.shm_size_bytes("vllm-cpu", 1) == engines.SHM_BYTES_SINGLE


def test_quantised_directory_keeps_exact_bytes_and_estimates_the_count(tmp_path: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 100,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    # AWQ packs eight 4-bit weights per int32: element counts in the header under-count parameters.
    _write_safetensors(tmp_path / "model.safetensors", {"qweight": ("I32", [64, 16], 4096)})
    facts = facts_from_directory(tmp_path)
    assert facts.weight_bytes == 4096
    assert facts.parameter_count == estimate_parameter_count(config)
    assert facts.quantization is not None
    assert (facts.quantization.method, facts.quantization.bits, facts.quantization.scheme) == (
        "awq",
        4,
        "awq",
    )
