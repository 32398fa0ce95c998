"""Model facts from a checkpoint: config.json (resolved by its architecture) plus safetensors headers.

Used by `inferator plan` and by the prefetch Job (which records the facts in the cache
manifest). The accounting is per component and per layer, because current models are not
uniform stacks: MoE layers with routed and shared experts beside dense leading layers, MLA
attention whose KV is a shared latent, sliding-window and chunked layers whose KV is bounded,
Mamba and linear-attention layers with a fixed recurrent state instead of KV, multi-token-
prediction layers the engine skips, vision towers, and pre-quantised checkpoints whose bytes
per weight depend on the module. An architecture whose shape cannot be read is refused with
`UnsupportedModel` naming the field, never guessed.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming
every tensor's dtype, shape and byte range, so exact weight bytes cost one small read per file;
`model.safetensors.index.json` states the total without any shard.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferator.api.modelcache import (
    AttentionGroup,
    ModelFacts,
    ModelTask,
    Quantization,
    StateGroup,
)
from inferator.profiles.model_config import (
    ResolvedConfig,
    UnsupportedModel,
    first,
    require_int,
    resolve_config,
)
from inferator.profiles.quantization import (
    UnsupportedQuantization,
    module_is_quantized,
    quantization_from_config,
)
from inferator.profiles.tasks import causal_lm

__all__ = [
    "UnsupportedModel",
    "UnsupportedQuantization",
    "facts_from_config",
    "facts_from_directory",
    "quantization_from_config",
    "read_safetensors_header",
]

# A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1000 * 1000
# safetensors dtype -> torch_dtype spelling, to name the native dtype when config.json does not.
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
# Context when config.json states none (the engines fall back to 2048-4096 as well).
DEFAULT_CONTEXT_TOKENS = 4096
# Activations whose MLP has no gate (two matrices, not three).
_NON_GATED_ACTIVATIONS = ("relu2", "gelu_new", "gelu_pytorch_tanh_nongated")
# Encoder-only families: bidirectional attention, no KV cache, biases everywhere, no gate.
_ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet", "camembert"}
)
# Decoder families whose dense MLP has no gate (fc1/fc2).
_NON_GATED_TYPES = frozenset({"gpt2", "gpt_neox", "gpt_bigcode", "starcoder2", "phi", "opt", "falcon", "mpt"})
# Families whose q/k/v projections carry biases without saying so in the config.
_QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "qwen2_audio"})


@dataclass(frozen=True, slots=True)
class SafetensorsSummary:
    """Totals over the tensors of one or more safetensors files."""

    parameter_count: int
    weight_bytes: int
    dtype_bytes: dict[str, int]  # safetensors dtype ("BF16") -> bytes
    mtp_bytes: int = 0  # tensors of multi-token-prediction layers (named model.layers.<n >= layers>)

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


def _layer_index(name: str) -> int | None:
    marker = "layers."
    at = name.find(marker)
    if at < 0:
        return None
    digits = name[at + len(marker) :].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


def summarise_safetensors_headers(
    headers: Iterable[Mapping[str, Any]], num_layers: int | None = None
) -> SafetensorsSummary:
    """Parameter count (elements) and bytes of every tensor; `__metadata__` is skipped.

    num_layers: the decoder's layer count; tensors of layers at or past it are MTP layers
    (DeepSeek-V3 stores its MTP module as `model.layers.61`), counted apart.
    """
    params = 0
    total = 0
    mtp = 0
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
            index = _layer_index(name) if num_layers is not None else None
            if index is not None and num_layers is not None and index >= num_layers and "visual" not in name:
                mtp += size
    return SafetensorsSummary(params, total, by_dtype, mtp)


# --- the shape of the language model, layer by layer -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layer:
    """One decoder layer: its token mixer(s) and its feed-forward kind."""

    mixers: tuple[
        str, ...
    ]  # "full", "sliding", "chunked", "mla", "linear_attention", "mamba", "mamba2", "short_conv", "encoder"
    ffn: str  # "dense", "moe", "none"


@dataclass
class _Ledger:
    """Parameters per module: (component, representative module path, parameters)."""

    entries: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, component: str, path: str, params: int) -> None:
        if params > 0:
            self.entries.append((component, path, int(params)))

    def total(self, *, exclude: tuple[str, ...] = ()) -> int:
        return sum(p for c, _, p in self.entries if c not in exclude)


def _mixer_of(value: str) -> str:
    v = value.lower()
    if v in ("full_attention", "attention", "global", "global_attention", "full", "*"):
        return "full"
    if v in ("sliding_attention", "sliding", "local", "local_attention", "sliding_window"):
        return "sliding"
    if v in ("chunked_attention", "chunked"):
        return "chunked"
    if v in ("linear_attention", "linear", "lightning", "gated_deltanet", "kda"):
        return "linear_attention"
    if v in ("mamba", "mamba2", "m", "ssm"):
        return "mamba"
    if v in ("conv", "short_conv"):
        return "short_conv"
    if v in ("mlp", "-", "moe", "e"):
        return "none"
    return "?" + value


def _moe_layer_set(text: Mapping[str, Any], n_layers: int, n_experts: int) -> set[int]:
    if n_experts <= 1:
        return set()
    explicit = text.get("moe_layers")
    if isinstance(explicit, list) and explicit and all(isinstance(i, int) for i in explicit):
        return {int(i) for i in explicit}
    layers = set(range(n_layers))
    if text.get("first_k_dense_replace") is not None or text.get("moe_layer_freq") is not None:
        k = int(text.get("first_k_dense_replace") or 0)
        freq = int(text.get("moe_layer_freq") or 1)
        return {i for i in layers if i >= k and i % freq == 0}
    if text.get("expert_layer_period") is not None:
        period = int(text.get("expert_layer_period") or 1)
        offset = int(text.get("expert_layer_offset") or 0)
        return {i for i in layers if i % period == offset}
    if text.get("interleave_moe_layer_step") is not None:
        step = int(text.get("interleave_moe_layer_step") or 1)
        return {i for i in layers if (i + 1) % step == 0}
    only = set(text.get("mlp_only_layers") or [])
    step = int(text.get("decoder_sparse_step") or 1)
    return {i for i in layers if i not in only and (i + 1) % step == 0}


def _layers(text: Mapping[str, Any], arch: str, n_layers: int, n_experts: int, encoder: bool) -> list[_Layer]:
    model_type = str(text.get("model_type") or "")
    if encoder:
        return [_Layer(("encoder",), "dense")] * n_layers
    pattern = text.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        out = []
        for ch in pattern[:n_layers]:
            if ch == "M":
                out.append(_Layer(("mamba",), "none"))
            elif ch == "*":
                out.append(_Layer(("full",), "none"))
            elif ch == "-":
                out.append(_Layer((), "dense"))
            elif ch == "E":
                out.append(_Layer((), "moe"))
            else:
                raise UnsupportedModel(f"{arch}: hybrid_override_pattern has an unknown layer kind {ch!r}")
        return out
    moe = _moe_layer_set(text, n_layers, n_experts)
    ffn = ["moe" if i in moe else "dense" for i in range(n_layers)]
    if text.get("kv_lora_rank"):
        return [_Layer(("mla",), ffn[i]) for i in range(n_layers)]
    if model_type == "falcon_h1":
        return [_Layer(("full", "mamba"), ffn[i]) for i in range(n_layers)]
    kinds: list[str] | None = None
    types = first(text, "layer_types", "layers_block_type")
    if isinstance(types, list) and types:
        names = [str(t).lower() for t in types[:n_layers]]
        if any(t in ("moe", "mlp") for t in names):
            # One function per layer (Nemotron-H): a mixer without MLP, or an MLP/MoE alone. Its
            # transformers config calls the Mamba-2 mixers "linear_attention".
            mamba_named_linear = model_type == "nemotron_h"
            out = []
            for t in names:
                if t in ("moe", "mlp"):
                    out.append(_Layer((), "moe" if t == "moe" else "dense"))
                else:
                    kind = "mamba" if mamba_named_linear and t == "linear_attention" else _mixer_of(t)
                    if kind.startswith("?"):
                        raise UnsupportedModel(f"{arch}: layer type {t!r} is not known to this planner")
                    out.append(_Layer((kind,), "none"))
            return out
        kinds = [_mixer_of(t) for t in names]
    elif isinstance(text.get("attn_type_list"), list):  # MiniMax: 1 softmax, 0 lightning (linear)
        kinds = ["full" if int(t) else "linear_attention" for t in text["attn_type_list"][:n_layers]]
    elif text.get("attn_layer_period") is not None:  # Jamba
        period = int(text["attn_layer_period"])
        offset = int(text.get("attn_layer_offset") or 0)
        kinds = ["full" if i % period == offset else "mamba" for i in range(n_layers)]
    elif text.get("attention_chunk_size") and isinstance(text.get("no_rope_layers"), list):
        # Llama 4: layers with RoPE attend within chunks; the NoPE layers are global.
        kinds = ["chunked" if flag else "full" for flag in text["no_rope_layers"][:n_layers]]
    if kinds is None:
        window = text.get("sliding_window")
        uses_window = text.get("use_sliding_window", True) is not False
        kinds = ["sliding" if window and uses_window else "full"] * n_layers
    if len(kinds) < n_layers:
        raise UnsupportedModel(
            f"{arch}: layer_types lists {len(kinds)} layers, num_hidden_layers is {n_layers}"
        )
    unknown = sorted({k[1:] for k in kinds if k.startswith("?")})
    if unknown:
        raise UnsupportedModel(
            f"{arch}: layer type {', '.join(unknown)!s} (layer_types) is not known to this planner"
        )
    return [_Layer((k,) if k != "none" else (), ffn[i]) for i, k in enumerate(kinds)]


def _gated(text: Mapping[str, Any], act_keys: tuple[str, ...] = ("hidden_act", "hidden_activation")) -> bool:
    model_type = str(text.get("model_type") or "")
    if model_type in _NON_GATED_TYPES or model_type in _ENCODER_TYPES:
        return False
    act = str(first(text, "mlp_hidden_act", *act_keys) or "silu").lower()
    return act not in _NON_GATED_ACTIVATIONS


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the accounting reads from the resolved text config."""

    arch: str
    model_type: str
    hidden: int
    n_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    intermediate: int | None
    vocab: int
    n_experts: int
    expert_width: int
    shared_width: int
    dense_width: int


def _layer_count(text: Mapping[str, Any], arch: str) -> int:
    """num_hidden_layers, or the length of the per-layer list that replaces it (Nemotron-H)."""
    if first(text, "num_hidden_layers", "n_layer", "num_layers", "n_layers") is None:
        per_layer = first(text, "layers_block_type", "layer_types", "hybrid_override_pattern")
        if isinstance(per_layer, list | str) and per_layer:
            return len(per_layer)
    return require_int(text, arch, "num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _shape(text: Mapping[str, Any], arch: str) -> _Shape:
    hidden = require_int(text, arch, "hidden_size", "d_model", "n_embd", "dim")
    n_layers = _layer_count(text, arch)
    heads = require_int(text, arch, "num_attention_heads", "n_head", "n_heads", "num_heads")
    kv_heads = int(first(text, "num_key_value_heads", "n_kv_heads", "num_kv_heads") or heads)
    if text.get("multi_query") is True:
        kv_heads = 1
    head_dim = int(first(text, "head_dim", "attention_head_dim") or hidden // heads)
    v_head_dim = int(text.get("v_head_dim") or head_dim)
    intermediate = first(text, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")
    n_experts = int(
        first(text, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts") or 0
    )
    model_type = str(text.get("model_type") or "")
    if model_type.startswith("llama4"):
        expert_width = int(text.get("intermediate_size") or 0)
        dense_width = int(text.get("intermediate_size_mlp") or expert_width)
        shared_width = expert_width  # one shared expert per MoE layer, as wide as a routed one
    else:
        expert_width = int(
            first(text, "moe_intermediate_size", "expert_intermediate_size", "intermediate_size") or 0
        )
        dense_width = int(intermediate or 4 * hidden)
        n_shared = int(first(text, "n_shared_experts", "num_shared_experts") or 0)
        shared_width = int(
            first(
                text,
                "shared_expert_intermediate_size",
                "moe_shared_expert_intermediate_size",
                "shared_intermediate_size",
            )
            or n_shared * expert_width
        )
        if text.get("moe_shared_expert_intermediate_size") and n_shared:
            shared_width = n_shared * int(text["moe_shared_expert_intermediate_size"])
    if n_experts > 1 and not expert_width:
        raise UnsupportedModel(
            f"{arch}: {n_experts} experts but no moe_intermediate_size / intermediate_size"
        )
    return _Shape(
        arch=arch,
        model_type=model_type,
        hidden=hidden,
        n_layers=n_layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=v_head_dim,
        intermediate=int(intermediate) if intermediate else None,
        vocab=int(first(text, "vocab_size", "padded_vocab_size") or 0),
        n_experts=n_experts,
        expert_width=expert_width,
        shared_width=shared_width,
        dense_width=dense_width,
    )


def _attention_params(s: _Shape, text: Mapping[str, Any]) -> int:
    q = s.heads * s.head_dim
    kv = s.kv_heads * s.head_dim
    gate = 2 if s.model_type in ("qwen3_next", "qwen3_5", "qwen3_5_moe") else 1  # gated attention output
    params = (
        s.hidden * q * gate
        + s.hidden * kv
        + s.hidden * s.kv_heads * s.v_head_dim
        + s.heads * s.v_head_dim * s.hidden
    )
    if text.get("attention_bias") or text.get("qkv_bias") or s.model_type in _QKV_BIAS_TYPES:
        params += q + kv + s.kv_heads * s.v_head_dim
    if text.get("attention_bias") and s.model_type in ("gpt_oss",):
        params += s.hidden + s.heads  # o_proj bias and the attention sinks
    return params


def _mla_params(s: _Shape, text: Mapping[str, Any]) -> int:
    rank = int(text["kv_lora_rank"])
    rope = int(text.get("qk_rope_head_dim") or 64)
    nope = int(text.get("qk_nope_head_dim") or 128)
    v_dim = int(text.get("v_head_dim") or 128)
    q_rank = text.get("q_lora_rank")
    q_head = nope + rope
    if q_rank:
        q = s.hidden * int(q_rank) + int(q_rank) + int(q_rank) * s.heads * q_head
    else:
        q = s.hidden * s.heads * q_head
    kv = s.hidden * (rank + rope) + rank + rank * s.heads * (nope + v_dim)
    return q + kv + s.heads * v_dim * s.hidden


def _mamba_dims(text: Mapping[str, Any], hidden: int) -> tuple[int, int, int, int, int]:
    """(d_inner, heads, head_dim, groups, d_state) of a Mamba-2 mixer (groups 0 = Mamba-1)."""
    expand = float(first(text, "mamba_expand", "expand") or 2)
    heads = first(text, "mamba_n_heads", "mamba_num_heads")
    head_dim = first(text, "mamba_d_head", "mamba_head_dim")
    d_state = int(first(text, "mamba_d_state", "ssm_state_size", "state_size") or 16)
    groups = first(text, "mamba_n_groups", "n_groups")
    d_inner = int(first(text, "mamba_d_ssm") or 0) or (
        int(heads) * int(head_dim) if heads and head_dim else int(expand * hidden)
    )
    if heads is None:
        return d_inner, 0, 0, 0, d_state
    return d_inner, int(heads), int(head_dim or d_inner // int(heads)), int(groups or 1), d_state


def _mamba(text: Mapping[str, Any], hidden: int, state_bytes: int) -> tuple[int, int, str]:
    """(parameters, recurrent state bytes per sequence, kind) of one Mamba layer."""
    d_inner, heads, head_dim, groups, d_state = _mamba_dims(text, hidden)
    conv = int(first(text, "mamba_d_conv", "conv_kernel", "d_conv") or 4)
    if heads:  # Mamba-2: in_proj -> (z, x, B, C, dt), conv over (x, B, C)
        conv_dim = d_inner + 2 * groups * d_state
        params = hidden * (2 * d_inner + 2 * groups * d_state + heads) + conv_dim * conv + 3 * heads + d_inner
        params += d_inner * hidden
        state = (conv - 1) * conv_dim * 2 + heads * head_dim * d_state * state_bytes
        return params, state, "mamba2"
    dt_rank = int(first(text, "mamba_dt_rank", "time_step_rank") or math.ceil(hidden / 16))
    params = hidden * 2 * d_inner + d_inner * conv + d_inner * (dt_rank + 2 * d_state)
    params += dt_rank * d_inner + d_inner + d_inner * d_state + d_inner + d_inner * hidden
    state = (conv - 1) * d_inner * 2 + d_inner * d_state * state_bytes
    return params, state, "mamba"


def _linear_attention(text: Mapping[str, Any], s: _Shape) -> tuple[int, int]:
    """(parameters, state bytes per sequence) of a gated-DeltaNet layer (Qwen3-Next and successors)."""
    if text.get("linear_num_value_heads") is None:
        raise UnsupportedModel(
            f"{s.arch}: linear-attention layers without linear_num_value_heads / linear_key_head_dim; "
            "this planner cannot size their recurrent state"
        )
    nk = int(text.get("linear_num_key_heads") or text["linear_num_value_heads"])
    nv = int(text["linear_num_value_heads"])
    dk = int(text.get("linear_key_head_dim") or 128)
    dv = int(text.get("linear_value_head_dim") or 128)
    conv = int(text.get("linear_conv_kernel_dim") or 4)
    key_dim, value_dim = nk * dk, nv * dv
    conv_dim = 2 * key_dim + value_dim
    params = s.hidden * (2 * key_dim + 2 * value_dim) + s.hidden * 2 * nv + conv_dim * conv + 2 * nv + dv
    params += value_dim * s.hidden
    state = (conv - 1) * conv_dim * 2 + nv * dk * dv * 4  # the recurrent state is kept in fp32
    return params, state


def _vision_params(vision: Mapping[str, Any] | None, text_hidden: int) -> int:
    """A ViT tower and its projector, from the vision config (resolved with its defaults)."""
    if not vision:
        return 0
    hidden = int(first(vision, "hidden_size", "embed_dim", "width", "n_embed") or 0)
    layers = int(first(vision, "num_hidden_layers", "depth", "layers", "num_layers") or 0)
    if not hidden or not layers:
        return 0
    inter = int(first(vision, "intermediate_size") or 0) or int(float(vision.get("mlp_ratio") or 4) * hidden)
    act = str(first(vision, "hidden_act", "hidden_activation") or "gelu").lower()
    mats = 3 if "silu" in act or "swiglu" in act else 2
    per_layer = 4 * hidden * hidden + 4 * hidden + mats * hidden * inter + inter + hidden + 4 * hidden
    patch = int(vision.get("patch_size") or 14)
    channels = int(first(vision, "num_channels", "in_channels", "in_chans") or 3)
    temporal = int(vision.get("temporal_patch_size") or 1)
    embed = channels * patch * patch * temporal * hidden
    image = vision.get("image_size")
    if isinstance(image, int) and image:
        embed += (image // patch) ** 2 * hidden
    merge = int(first(vision, "spatial_merge_size", "merge_size") or 1)
    merged = hidden * merge * merge
    out = int(first(vision, "out_hidden_size", "projector_output_dim", "output_dim") or text_hidden)
    projector = (
        merged * merged + merged * out if merge > 1 else hidden * text_hidden + text_hidden * text_hidden
    )
    return layers * per_layer + embed + projector


def _account(
    text: Mapping[str, Any],
    vision: Mapping[str, Any] | None,
    arch: str,
    encoder: bool,
    state_dtype_bytes: int,
) -> tuple[_Shape, list[_Layer], _Ledger, int, list[StateGroup], int]:
    """(shape, layers, parameter ledger, MTP parameters, recurrent state groups, active parameters)."""
    s = _shape(text, arch)
    layers = _layers(text, arch, s.n_layers, s.n_experts, encoder)
    ledger = _Ledger()
    gated = _gated(text)
    mats = 3 if gated else 2
    expert_mats = 3 if _gated(text, ("moe_hidden_act", "hidden_act")) or s.model_type == "gpt_oss" else 2
    top_k = int(first(text, "num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k") or 1)
    state: dict[str, list[int]] = {}
    routed_total = 0
    for i, layer in enumerate(layers):
        base = f"model.layers.{i}"
        for mixer in layer.mixers:
            if mixer in ("full", "sliding", "chunked", "encoder"):
                ledger.add("attention", f"{base}.self_attn.q_proj", _attention_params(s, text))
            elif mixer == "mla":
                ledger.add("attention", f"{base}.self_attn.q_a_proj", _mla_params(s, text))
            elif mixer == "mamba":
                params, per_seq, kind = _mamba(text, s.hidden, state_dtype_bytes)
                ledger.add("state", f"{base}.mamba.in_proj", params)
                state.setdefault(kind, []).append(per_seq)
            elif mixer == "linear_attention":
                params, per_seq = _linear_attention(text, s)
                ledger.add("state", f"{base}.linear_attn.in_proj_qkvz", params)
                state.setdefault("linear_attention", []).append(per_seq)
            elif mixer == "short_conv":
                conv = int(text.get("conv_L_cache") or 3)
                ledger.add(
                    "state",
                    f"{base}.conv.in_proj",
                    3 * s.hidden * s.hidden + s.hidden * conv + s.hidden * s.hidden,
                )
                state.setdefault("short_conv", []).append(conv * s.hidden * 2)
        if layer.ffn == "moe":
            routed = s.n_experts * expert_mats * s.hidden * s.expert_width
            if s.model_type == "gpt_oss":
                routed += s.n_experts * (2 * s.expert_width + s.hidden)  # expert biases
            routed_total += routed
            ledger.add("experts", f"{base}.mlp.experts.0.gate_proj", routed)
            ledger.add(
                "shared_experts",
                f"{base}.mlp.shared_experts.gate_proj",
                expert_mats * s.hidden * s.shared_width,
            )
            ledger.add("router", f"{base}.mlp.gate", s.hidden * s.n_experts + s.n_experts)
        elif layer.ffn == "dense":
            width = s.dense_width
            ledger.add(
                "mlp", f"{base}.mlp.gate_proj", mats * s.hidden * width + (width + s.hidden if encoder else 0)
            )
        ledger.add("norm", f"{base}.input_layernorm", (4 if encoder else 2) * s.hidden)
    embed = s.vocab * s.hidden
    ledger.add("embed_tokens", "model.embed_tokens", embed)
    if encoder:
        positions = int(text.get("max_position_embeddings") or 512)
        ledger.add("embed_tokens", "embeddings.position_embeddings", positions * s.hidden)
        ledger.add(
            "embed_tokens",
            "embeddings.token_type_embeddings",
            int(text.get("type_vocab_size") or 0) * s.hidden,
        )
        ledger.add("mlp", "pooler.dense", s.hidden * s.hidden + s.hidden)
    else:
        tied = text.get("tie_word_embeddings")
        if not tied:
            ledger.add("lm_head", "lm_head", embed)
    ledger.add("norm", "model.norm", s.hidden)
    ledger.add("vision", "visual.blocks.0.attn.qkv", _vision_params(vision, s.hidden))
    mtp_layers = int(first(text, "num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_layers") or 0)
    # An MTP layer is one more decoder layer (the last one's kind) plus its input projection.
    last_layer = sum(p for _, path, p in ledger.entries if path.startswith(f"model.layers.{s.n_layers - 1}."))
    mtp = mtp_layers * (last_layer + 2 * s.hidden * s.hidden + 3 * s.hidden)
    groups = [
        StateGroup(kind=kind, layers=len(sizes), state_bytes_per_layer=max(sizes))
        for kind, sizes in sorted(state.items())
    ]
    active = ledger.total(exclude=("vision",))
    if s.n_experts > 1:
        active -= routed_total - routed_total * min(top_k, s.n_experts) // s.n_experts
    return s, layers, ledger, mtp, groups, active


def _attention_groups(text: Mapping[str, Any], s: _Shape, layers: list[_Layer]) -> list[AttentionGroup]:
    counts: Counter[str] = Counter(m for layer in layers for m in layer.mixers)
    window = first(text, "sliding_window", "sliding_window_size")
    chunk = text.get("attention_chunk_size")
    shared_kv = int(text.get("num_kv_shared_layers") or 0)  # Gemma 3n: the last layers reuse earlier KV
    groups = []
    for kind in ("full", "sliding", "chunked", "mla", "encoder"):
        n = counts.get(kind, 0)
        if not n:
            continue
        if kind == "mla":
            rank = int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim") or 64)
            groups.append(AttentionGroup(kind="mla", layers=n, kv_heads=1, head_dim=rank, v_head_dim=0))
            continue
        if kind == "encoder":  # bidirectional, recomputed per request: nothing cached
            groups.append(AttentionGroup(kind="encoder", layers=n, kv_heads=0, head_dim=0, v_head_dim=0))
            continue
        win = (
            int(window)
            if kind == "sliding" and window
            else int(chunk)
            if kind == "chunked" and chunk
            else None
        )
        if kind == "sliding" and win is None:
            kind = "full"
        groups.append(
            AttentionGroup(
                kind=kind,
                layers=n,
                kv_heads=s.kv_heads,
                head_dim=s.head_dim,
                v_head_dim=s.v_head_dim,
                window=win,
            )
        )
    if shared_kv and groups:
        first_group = groups[0]
        groups[0] = first_group.model_copy(update={"layers": max(0, first_group.layers - shared_kv)})
    return groups


def _task(config: Mapping[str, Any], arch: str, files: Mapping[str, Any]) -> ModelTask:
    """generate, embed, rerank or classify, from the architecture and the sentence-transformers files."""
    st = files.get("config_sentence_transformers.json")
    if isinstance(st, Mapping) and str(st.get("model_type", "")).lower() == "crossencoder":
        return "rerank"
    if "ForSequenceClassification" in arch or "ForTokenClassification" in arch:
        labels = config.get("id2label")
        num_labels = config.get("num_labels") or (len(labels) if isinstance(labels, Mapping) else 2)
        return "rerank" if int(num_labels) == 1 and "Sequence" in arch else "classify"
    if "modules.json" in files or st is not None or "1_Pooling/config.json" in files:
        return "embed"
    if causal_lm(arch):
        return "generate"
    if arch.endswith(("Model", "ForMaskedLM", "ForEmbedding")) or "Embedding" in arch:
        return "embed"
    return "generate"


def _context_length(text: Mapping[str, Any], files: Mapping[str, Any]) -> int | None:
    """The longest context the engine serves by default, as vLLM derives it from the config.

    max_position_embeddings (or its older names), scaled by a RoPE factor for the scaling types
    that extend it (YaRN, linear, dynamic; not llama3/longrope, whose configs already state the
    extended length); capped by sentence-transformers' max_seq_length for embedding models.
    """
    base = first(
        text,
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
        "model_max_length",
    )
    if base is None:
        return None
    length = int(base)
    rope = first(text, "rope_scaling", "rope_parameters")
    if isinstance(rope, Mapping) and not any(isinstance(v, Mapping) for v in rope.values()):
        kind = str(rope.get("rope_type") or rope.get("type") or "default")
        factor = rope.get("factor")
        if factor and kind not in ("default", "llama3", "longrope", "su", "mrope"):
            original = rope.get("original_max_position_embeddings") if kind == "yarn" else None
            length = max(length, int((int(original) if original else length) * float(factor)))
    sbert = files.get("sentence_bert_config.json")
    if isinstance(sbert, Mapping) and sbert.get("max_seq_length"):
        length = min(length, int(sbert["max_seq_length"]))
    return length


def _bytes(ledger: _Ledger, quant: Quantization | None, native_bytes: int) -> int:
    total = 0.0
    for component, path, params in ledger.entries:
        if quant is not None and quant.bytes_per_weight and module_is_quantized(quant, path, component):
            total += params * quant.bytes_per_weight
        else:
            total += params * native_bytes
    return math.ceil(total)


def _native_dtype(text: Mapping[str, Any], top: Mapping[str, Any]) -> str:
    value = first(text, "torch_dtype", "dtype") or first(top, "torch_dtype", "dtype") or "bfloat16"
    return str(value).removeprefix("torch.")


def facts_from_config(
    config: Mapping[str, Any],
    weight_bytes: int | None = None,
    parameter_count: int | None = None,
    *,
    files: Mapping[str, Any] | None = None,
    checkpoint_bytes: int | None = None,
    mtp_bytes: int | None = None,
    resolved: ResolvedConfig | None = None,
) -> ModelFacts:
    """ModelFacts from a config.json dict; weights from the shape unless measured.

    weight_bytes / parameter_count: exact values from the safetensors headers when known
    (weight_bytes then counts every tensor; MTP tensors are taken out with `mtp_bytes`).
    checkpoint_bytes: the index's `total_size` when only the index is at hand.
    files: other JSON files of the checkpoint by name (modules.json, hf_quant_config.json,
    config_sentence_transformers.json, sentence_bert_config.json, 1_Pooling/config.json).
    Raises UnsupportedModel (a ValueError) naming what it cannot account for.
    """
    files = files or {}
    resolved = resolved or resolve_config(config)  # the caller's, when it resolved this config already
    text, arch = resolved.text, resolved.architecture
    raw_q = dict(config)
    hf_quant = files.get("hf_quant_config.json")
    if not isinstance(raw_q.get("quantization_config"), Mapping) and isinstance(hf_quant, Mapping):
        block = hf_quant.get("quantization") or hf_quant
        raw_q["quantization_config"] = {"quant_method": "modelopt", **block}
    try:
        quant = quantization_from_config(raw_q)
    except UnsupportedQuantization as exc:
        raise UnsupportedModel(f"{arch}: {exc}") from exc
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    encoder = model_type in _ENCODER_TYPES or bool(text.get("is_encoder_decoder") is False and "Bert" in arch)
    if text.get("is_encoder_decoder"):
        raise UnsupportedModel(
            f"{arch}: encoder-decoder models (is_encoder_decoder) are not served by these profiles"
        )
    dtype = _native_dtype(text, resolved.top)
    native_bytes = _DTYPE_BYTES.get(dtype, 2)
    state_dtype = str(text.get("mamba_ssm_cache_dtype") or dtype).removeprefix("torch.")
    s, layers, ledger, mtp_params, state, active = _account(
        text, resolved.vision, arch, encoder, _DTYPE_BYTES.get(state_dtype, native_bytes)
    )
    params = ledger.total()
    estimated_bytes = _bytes(ledger, quant, native_bytes)
    mtp_estimate = math.ceil(
        mtp_params * (quant.bytes_per_weight if quant and quant.bytes_per_weight else native_bytes)
    )
    exact = weight_bytes is not None or checkpoint_bytes is not None
    if weight_bytes is not None:
        checkpoint = weight_bytes
        loaded = weight_bytes - (mtp_bytes if mtp_bytes is not None else mtp_estimate if mtp_params else 0)
    elif checkpoint_bytes is not None:
        checkpoint = checkpoint_bytes
        loaded = checkpoint_bytes - (mtp_estimate if mtp_params else 0)
    else:
        checkpoint = estimated_bytes + mtp_estimate
        loaded = estimated_bytes
    if parameter_count is not None and quant is None:
        params = parameter_count - (mtp_params if mtp_bytes else 0)
    vision = sum(p for c, _, p in ledger.entries if c == "vision")
    task = _task(config, arch, files)
    return ModelFacts(
        architecture=arch,
        model_type=model_type or None,
        task=task,
        num_layers=s.n_layers,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate or None,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
        max_position_embeddings=_context_length(text, files),
        vocab_size=s.vocab or None,
        num_experts=s.n_experts if s.n_experts > 1 else None,
        num_experts_per_token=first(text, "num_experts_per_tok", "num_experts_per_token")
        if s.n_experts > 1
        else None,
        moe_intermediate_size=s.expert_width if s.n_experts > 1 else None,
        num_shared_experts=first(text, "n_shared_experts", "num_shared_experts") if s.n_experts > 1 else None,
        moe_layers=sum(1 for layer in layers if layer.ffn == "moe") if s.n_experts > 1 else None,
        attention=_attention_groups(text, s, layers),
        state=state,
        mtp_layers=int(
            first(text, "num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_layers") or 0
        ),
        dtype=dtype,
        quantization=quant,
        parameter_count=max(0, params),
        active_parameter_count=active if s.n_experts > 1 else None,
        vision_parameter_count=vision,
        weight_bytes=max(0, loaded),
        checkpoint_bytes=checkpoint,
        exact_bytes=exact,
    )


# Files beside config.json that change the facts (task, quantisation, context).
SIDE_FILES = (
    "hf_quant_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)


def read_side_files(root: Path) -> dict[str, Any]:
    """The JSON side files present in a checkpoint directory, by name."""
    out: dict[str, Any] = {}
    for name in SIDE_FILES:
        path = root / name
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except ValueError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return out


def _index_total(root: Path) -> int | None:
    path = root / "model.safetensors.index.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return int(data["metadata"]["total_size"])
    except (ValueError, KeyError, TypeError):
        return None


def facts_from_directory(path: str | Path) -> ModelFacts:
    """ModelFacts for a checkpoint directory: config.json and side files, plus safetensors headers when present.

    With safetensors, weight bytes are exact (MTP layers' tensors set apart); the parameter
    count is exact for unquantised checkpoints (quantised ones pack several weights per stored
    element, so the shape count is used). With only the index, its `total_size` is the
    checkpoint's bytes. Without either, both come from the shape.
    """
    root = Path(path)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{root}: no config.json (is this a Hugging Face model directory?)")
    config = json.loads(config_path.read_text())
    files = read_side_files(root)
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        return facts_from_config(config, files=files, checkpoint_bytes=_index_total(root))
    resolved = resolve_config(config)
    layers = first(resolved.text, "num_hidden_layers", "n_layer", "num_layers")
    summary = summarise_safetensors_headers(
        (read_safetensors_header(f) for f in shards), int(layers) if layers is not None else None
    )
    quantised = isinstance(config.get("quantization_config"), Mapping) or "hf_quant_config.json" in files
    if not any(k in resolved.text for k in ("torch_dtype", "dtype")) or not first(
        resolved.text, "torch_dtype", "dtype"
    ):
        dominant = summary.dominant_dtype
        if dominant in _SAFETENSORS_DTYPES:
            config = {**config, "torch_dtype": _SAFETENSORS_DTYPES[dominant]}
            resolved = resolve_config(config)  # the dtype from the headers flows into the text part
    return facts_from_config(
        config,
        weight_bytes=summary.weight_bytes,
        parameter_count=None if quantised else summary.parameter_count,
        files=files,
        mtp_bytes=summary.mtp_bytes,
        resolved=resolved,
    )


def estimate_parameter_count(config: Mapping[str, Any]) -> int:
    """Parameters the engine loads, from the shape alone (no safetensors at hand)."""
    return facts_from_config(config).parameter_count
