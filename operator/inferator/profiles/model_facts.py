"""Model facts from a checkpoint directory: config.json plus the safetensors headers (never the tensors).

Used by `inferator plan` and by the prefetch Job (which records the facts in the cache
manifest). A safetensors file starts with an 8-byte little-endian header length and a JSON
header naming every tensor's dtype, shape and byte range, so exact parameter counts and
weight bytes cost one small read per file.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferator.api.modelcache import ModelFacts, Quantization

# A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1000 * 1000
# safetensors dtype -> torch_dtype spelling, to name the native dtype when config.json does not.
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass(frozen=True, slots=True)
class SafetensorsSummary:
    """Totals over the tensors of one or more safetensors files."""

    parameter_count: int
    weight_bytes: int
    dtype_bytes: dict[str, int]  # safetensors dtype ("BF16") -> bytes

    @property
    def dominant_dtype(self) -> str | None:
        if not self.dtype_bytes:
            return None
        return Counter(self.dtype_bytes).most_common(1)[0][0]


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; reads 8 + header-length bytes only."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header length {length} bytes is not plausible for safetensors")
        raw = handle.read(length)
    if len(raw) != length:
        raise ValueError(f"{path}: truncated safetensors header ({len(raw)} of {length} bytes)")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return header


def summarise_safetensors_headers(headers: Iterable[Mapping[str, Any]]) -> SafetensorsSummary:
    """Parameter count (elements) and bytes of every tensor; `__metadata__` is skipped."""
    params = 0
    total = 0
    by_dtype: dict[str, int] = {}
    for header in headers:
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, Mapping):
                continue
            begin, end = tensor["data_offsets"]
            size = int(end) - int(begin)
            params += math.prod(int(d) for d in tensor.get("shape", []))
            total += size
            dtype = str(tensor.get("dtype", "?"))
            by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    return SafetensorsSummary(params, total, by_dtype)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs nest the language model's shape under text_config (Llama 4, Qwen-VL, Gemma 3)."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" in text:
        return {**config, **text}
    return config


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return None


def quantization_from_config(config: Mapping[str, Any]) -> Quantization | None:
    """The checkpoint's own quantisation (config.json `quantization_config`), or None."""
    q = config.get("quantization_config")
    if not isinstance(q, Mapping):
        return None
    method = str(q.get("quant_method") or q.get("quantization_method") or "unknown").lower()
    bits = q.get("bits") or q.get("w_bit") or q.get("weight_bits")
    if method == "compressed-tensors":
        for group in (q.get("config_groups") or {}).values():
            weights = (group or {}).get("weights") or {}
            bits = weights.get("num_bits", bits)
            if str(weights.get("type", "")).lower() == "float":
                method = "compressed-tensors-fp8" if bits == 8 else "compressed-tensors-fp4"
            break
    if method == "modelopt":
        algo = str(q.get("quant_algo") or "").lower()
        if "fp4" in algo:
            method, bits = "modelopt_fp4", 4
        elif "fp8" in algo:
            method, bits = "fp8", 8
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else bits
    if method in ("fp8", "fbgemm_fp8") and bits is None:
        bits = 8
    return Quantization(method=method, bits=int(bits) if bits is not None else None)


def estimate_parameter_count(config: Mapping[str, Any]) -> int:
    """Parameters of a decoder-only transformer from its shape (used when no safetensors are at hand).

    embeddings (+ LM head unless tied) + per layer: Q, K, V, O projections (+ biases when the
    config says so), the MLP (x experts for MoE, plus the router) and two norms; + final norm.
    Matches the published counts of Llama/Mistral/Qwen/Mixtral within a fraction of a percent.
    """
    c = _text_config(config)
    hidden = int(c["hidden_size"])
    layers = int(_first(c, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_first(c, "num_attention_heads", "n_head"))
    kv_heads = int(_first(c, "num_key_value_heads", "num_attention_heads", "n_head"))
    head_dim = int(c.get("head_dim") or hidden // heads)
    intermediate = int(_first(c, "intermediate_size", "ffn_dim") or 4 * hidden)
    vocab = int(c.get("vocab_size") or 0)
    experts = int(_first(c, "num_local_experts", "num_experts", "n_routed_experts") or 1)
    q_dim = heads * head_dim
    kv_dim = kv_heads * head_dim
    attention = hidden * q_dim + 2 * hidden * kv_dim + q_dim * hidden
    if c.get("attention_bias") or c.get("model_type") in ("qwen2", "qwen2_moe"):
        attention += q_dim + 2 * kv_dim
    mlp = 3 * hidden * intermediate * experts + (hidden * experts if experts > 1 else 0)
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden


def facts_from_config(
    config: Mapping[str, Any], weight_bytes: int | None = None, parameter_count: int | None = None
) -> ModelFacts:
    """ModelFacts from a config.json dict; weights estimated from the shape when not measured.

    weight_bytes / parameter_count: exact values from the safetensors headers when known.
    Without them, the count comes from `estimate_parameter_count` and the bytes from the
    native dtype (2 bytes for bf16/fp16), which is exact for unquantised dense checkpoints.
    """
    c = _text_config(config)
    hidden = int(c["hidden_size"])
    heads = int(_first(c, "num_attention_heads", "n_head"))
    dtype = str(_first(c, "torch_dtype", "dtype") or "bfloat16").removeprefix("torch.")
    architectures = config.get("architectures") or [c.get("model_type") or "unknown"]
    params = parameter_count if parameter_count is not None else estimate_parameter_count(config)
    if weight_bytes is None:
        bytes_per_param = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 2)
        weight_bytes = params * bytes_per_param
    experts = _first(c, "num_local_experts", "num_experts", "n_routed_experts")
    return ModelFacts(
        architecture=str(architectures[0]),
        model_type=c.get("model_type"),
        num_layers=int(_first(c, "num_hidden_layers", "n_layer", "num_layers")),
        hidden_size=hidden,
        intermediate_size=_first(c, "intermediate_size", "ffn_dim"),
        num_attention_heads=heads,
        num_key_value_heads=int(_first(c, "num_key_value_heads", "num_attention_heads", "n_head")),
        head_dim=int(c.get("head_dim") or hidden // heads),
        max_position_embeddings=_first(c, "max_position_embeddings", "n_positions", "max_sequence_length"),
        vocab_size=c.get("vocab_size"),
        num_experts=int(experts) if experts else None,
        num_experts_per_token=_first(c, "num_experts_per_tok", "num_experts_per_token"),
        dtype=dtype,
        quantization=quantization_from_config(config),
        parameter_count=params,
        weight_bytes=weight_bytes,
    )


def facts_from_directory(path: str | Path) -> ModelFacts:
    """ModelFacts for a checkpoint directory: config.json, plus every *.safetensors header when present.

    With safetensors, weight bytes are exact; the parameter count is exact for unquantised
    checkpoints (quantised ones pack several weights per stored element, so the shape
    estimate is used instead). Without safetensors, both come from the shape.
    """
    root = Path(path)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{root}: no config.json (is this a Hugging Face model directory?)")
    config = json.loads(config_path.read_text())
    files = sorted(root.glob("*.safetensors"))
    if not files:
        return facts_from_config(config)
    summary = summarise_safetensors_headers(read_safetensors_header(f) for f in files)
    quantised = isinstance(config.get("quantization_config"), Mapping)
    params = estimate_parameter_count(config) if quantised else summary.parameter_count
    if not any(k in _text_config(config) for k in ("torch_dtype", "dtype")):
        dominant = summary.dominant_dtype
        if dominant in _SAFETENSORS_DTYPES:
            config = {**config, "torch_dtype": _SAFETENSORS_DTYPES[dominant]}
    return facts_from_config(config, weight_bytes=summary.weight_bytes, parameter_count=params)
