"""Pre-quantised checkpoints: what `quantization_config` says about the stored bytes of each weight.

A pre-quantised checkpoint fixes the profile's precision to its own format, named as the engines
name it (vLLM's `--quantization` values and TensorRT-LLM's ModelOpt algorithms): fp8, mxfp4,
nvfp4, awq, gptq, int4/int8 (compressed-tensors integer schemes, bitsandbytes). Its weights
take fewer bytes than the native dtype, plus scales (and zero points) per group or block, and
some modules stay unquantised (embeddings, LM head, routers, often the vision tower):
`bytes_per_weight` and `unquantized_modules` let the shape accounting in model_facts.py price
every component.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from inferator.api.modelcache import Quantization

# Methods config.json may name that no engine profile here can serve (no kernels in the engines
# we launch, or formats that are not safetensors checkpoints).
UNSUPPORTED_METHODS = frozenset(
    {
        "gguf",
        "hqq",
        "eetq",
        "aqlm",
        "vptq",
        "spqr",
        "higgs",
        "quanto",
        "torchao",
        "quark",
        "bitnet",
        "auto-round",
    }
)


class UnsupportedQuantization(ValueError):
    """A quantization_config no profile can serve; the message names the method and field."""


def _group_overhead(group_size: int | None, scale_bytes: float, zero_bits: float = 0.0) -> float:
    """Scale (and zero point) bytes per weight for `group_size` weights per scale; per channel ~ 0."""
    if not group_size or group_size <= 0:
        return 0.0
    return (scale_bytes + zero_bits / 8) / group_size


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _as_list(value: Any) -> list[str]:
    """Module patterns, with per-layer repeats folded into one `layers.*` pattern (order kept).

    Some checkpoints list every layer's modules (Llama 4's FP8 `ignore` names 449); the
    folded form matches the same modules and fits in a status.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        return []
    folded: dict[str, None] = {}
    for item in value:
        text = str(item)
        if not text.startswith("re:"):
            text = _LAYER_NUMBER.sub(r"\1*\2", text)
        folded.setdefault(text, None)
    return list(folded)


_LAYER_NUMBER = re.compile(r"(layers\.|blocks\.|h\.)\d+(\.|$)")


def _compressed_tensors(q: Mapping[str, Any]) -> Quantization:
    """compressed-tensors (llm-compressor): the first config group's weight scheme decides."""
    groups = q.get("config_groups") or {}
    weights: Mapping[str, Any] = {}
    for group in groups.values() if isinstance(groups, Mapping) else []:
        if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping):
            weights = group["weights"]
            break
    if not weights:
        raise UnsupportedQuantization(
            "quantization_config (compressed-tensors) has no config_groups[*].weights: cannot tell the weight format"
        )
    bits = _int(weights.get("num_bits")) or 8
    kind = str(weights.get("type") or "int").lower()
    strategy = str(weights.get("strategy") or "tensor").lower()
    group_size = _int(weights.get("group_size"))
    fmt = str(q.get("format") or "").lower()
    ignore = _as_list(q.get("ignore"))
    if kind == "float" and bits == 8:
        block = weights.get("block_structure")
        if strategy == "block" and isinstance(block, list) and len(block) == 2:
            overhead = 4 / (int(block[0]) * int(block[1]))  # one fp32 scale per block
        else:
            overhead = _group_overhead(group_size if strategy == "group" else None, 2)
        return Quantization(
            method="compressed-tensors",
            bits=8,
            scheme="fp8",
            group_size=group_size,
            bytes_per_weight=1 + overhead,
            unquantized_modules=ignore,
        )
    if kind == "float" and bits == 4:
        # NVFP4: an fp8 scale per 16 weights; MXFP4: an e8m0 scale per 32.
        mx = "mxfp4" in fmt or group_size == 32
        size = group_size or (32 if mx else 16)
        return Quantization(
            method="compressed-tensors",
            bits=4,
            scheme="mxfp4" if mx else "nvfp4",
            group_size=size,
            bytes_per_weight=0.5 + 1 / size,
            unquantized_modules=ignore,
        )
    if kind == "int" and bits in (4, 8):
        symmetric = weights.get("symmetric", True)
        per_group = group_size if strategy == "group" else None
        overhead = _group_overhead(per_group, 2, 0 if symmetric else bits)
        return Quantization(
            method="compressed-tensors",
            bits=bits,
            scheme=f"int{bits}",
            group_size=group_size,
            bytes_per_weight=bits / 8 + overhead,
            unquantized_modules=ignore,
        )
    raise UnsupportedQuantization(
        f"quantization_config (compressed-tensors): weights of type {kind!r} with {bits} bits "
        "(config_groups[*].weights) are not a scheme any engine profile serves"
    )


def _modelopt(q: Mapping[str, Any]) -> Quantization:
    """NVIDIA ModelOpt (TensorRT Model Optimizer) checkpoints: quant_algo names the scheme."""
    algo = str(q.get("quant_algo") or "").upper()
    exclude = _as_list(q.get("exclude_modules") or q.get("ignore"))
    group = _int(q.get("group_size"))
    if algo in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_BLOCK_SCALES"):
        return Quantization(
            method="modelopt", bits=8, scheme="fp8", bytes_per_weight=1.0, unquantized_modules=exclude
        )
    if algo == "NVFP4":
        size = group or 16
        return Quantization(
            method="modelopt_fp4",
            bits=4,
            scheme="nvfp4",
            group_size=size,
            bytes_per_weight=0.5 + 1 / size,
            unquantized_modules=exclude,
        )
    if "MXFP4" in algo:
        return Quantization(
            method="modelopt", bits=4, scheme="mxfp4", group_size=32, bytes_per_weight=0.5 + 1 / 32,
            unquantized_modules=exclude,
        )  # fmt: skip
    if algo in ("W4A16_AWQ", "W4A8_AWQ"):
        size = group or 128
        return Quantization(
            method="modelopt", bits=4, scheme="awq", group_size=size, bytes_per_weight=0.5 + 2 / size,
            unquantized_modules=exclude,
        )  # fmt: skip
    raise UnsupportedQuantization(
        f"quantization_config.quant_algo {algo or '(missing)'!r} (ModelOpt) is not a scheme any engine profile serves"
    )


def quantization_from_config(config: Mapping[str, Any]) -> Quantization | None:
    """The checkpoint's own quantisation (config.json `quantization_config`), or None when unquantised.

    Raises UnsupportedQuantization for a declared method no engine profile serves, so the caller
    refuses with that reason instead of pricing the weights at the native dtype.
    """
    q = config.get("quantization_config")
    if not isinstance(q, Mapping):
        return None
    method = str(q.get("quant_method") or q.get("quantization_method") or "").lower()
    if not method and q.get("quant_algo"):
        method = "modelopt"  # hf_quant_config.json's "quantization" block has no quant_method
    if method in UNSUPPORTED_METHODS:
        raise UnsupportedQuantization(
            f"quantization_config.quant_method {method!r} is not served by vLLM, SGLang or TensorRT-LLM profiles"
        )
    not_converted = _as_list(q.get("modules_to_not_convert"))
    if method in ("fp8", "fbgemm_fp8"):
        block = q.get("weight_block_size")
        overhead = 4 / (int(block[0]) * int(block[1])) if isinstance(block, list) and len(block) == 2 else 0.0
        return Quantization(
            method=method,
            bits=8,
            scheme="fp8",
            group_size=int(block[0]) * int(block[1]) if isinstance(block, list) and len(block) == 2 else None,
            bytes_per_weight=1 + overhead,
            unquantized_modules=not_converted,
        )
    if method == "mxfp4":
        return Quantization(
            method="mxfp4",
            bits=4,
            scheme="mxfp4",
            group_size=32,
            bytes_per_weight=0.5 + 1 / 32,  # 4-bit values + one e8m0 scale byte per 32 (OCP MX spec)
            unquantized_modules=not_converted,
        )
    if method in ("awq", "awq_marlin", "gptq", "gptq_marlin"):
        bits = _int(q.get("bits") or q.get("w_bit")) or 4
        group = _int(q.get("group_size") or q.get("q_group_size")) or 128
        # AWQ stores zero points only with zero_point; GPTQ's layout stores packed qzeros even
        # when sym is true (the kernels read a constant zero from them), so they always count.
        zero = bool(q.get("zero_point", True)) if method.startswith("awq") else True
        # fp16 scale + packed zero point per group (AutoAWQ/AutoGPTQ layouts); g_idx is per row, negligible.
        overhead = _group_overhead(group, 2, bits if zero else 0)
        scheme = "awq" if method.startswith("awq") else "gptq"
        return Quantization(
            method=scheme,
            bits=bits,
            scheme=scheme,
            group_size=group,
            bytes_per_weight=bits / 8 + overhead,
            unquantized_modules=not_converted,
        )
    if method == "compressed-tensors":
        return _compressed_tensors(q)
    if method in ("modelopt", "modelopt_fp4"):
        return _modelopt(q)
    if method == "bitsandbytes":
        four = bool(q.get("load_in_4bit")) or str(q.get("_load_in_4bit")).lower() == "true"
        skip = _as_list(q.get("llm_int8_skip_modules"))
        if four:
            double = bool(q.get("bnb_4bit_use_double_quant"))
            # one absmax per 64 weights: fp32, or int8 + a second-level fp32 per 256 with double quant
            overhead = (1 + 4 / 256) / 64 if double else 4 / 64
            return Quantization(method="bitsandbytes", bits=4, scheme="int4", group_size=64,
                                bytes_per_weight=0.5 + overhead, unquantized_modules=skip)  # fmt: skip
        return Quantization(
            method="bitsandbytes", bits=8, scheme="int8", bytes_per_weight=1.0, unquantized_modules=skip
        )
    declared = _int(q.get("bits") or q.get("weight_bits"))
    raise UnsupportedQuantization(
        f"quantization_config.quant_method {method or '(missing)'!r}"
        + (f" with {declared} bits" if declared else "")
        + " is not a format this planner can price; known: fp8, mxfp4, awq, gptq, compressed-tensors, modelopt, bitsandbytes"
    )


# Modules no weight-only or FP8 scheme quantises unless its config says so: the token embeddings,
# the LM head, norms and MoE routers (vLLM's quantised linear methods skip them; checkpoints store
# them in the native dtype).
ALWAYS_NATIVE = frozenset({"embed_tokens", "lm_head", "router", "norm"})


def module_is_quantized(quant: Quantization, module_path: str, component: str) -> bool:
    """Whether the checkpoint stores `module_path` (e.g. `model.layers.0.self_attn.q_proj`) quantised.

    `component` is the accounting's own name (embed_tokens, lm_head, router, attention, mlp,
    experts, shared_experts, state, vision). Patterns follow the configs: exact names, globs,
    prefixes (`model.layers.*.self_attn`), bare names (`lm_head`, `gate`) and `re:` regexes.
    """
    if component in ALWAYS_NATIVE or (component == "vision" and not _targets_vision(quant)):
        return False
    parts = module_path.split(".")
    for pattern in quant.unquantized_modules:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], module_path):
                return False
            continue
        if fnmatch.fnmatchcase(module_path, pattern) or fnmatch.fnmatchcase(module_path, pattern + ".*"):
            return False
        if "." not in pattern and "*" not in pattern and pattern in parts:
            return False
        if module_path.endswith("." + pattern) or f".{pattern}." in f".{module_path}.":
            return False
    return True


def _targets_vision(quant: Quantization) -> bool:
    """Vision towers stay native unless the scheme quantises them (llm-compressor FP8-dynamic does,
    and then lists what it ignores)."""
    return quant.method == "compressed-tensors" and not any(
        "vis" in p or "vit" in p for p in quant.unquantized_modules
    )
