"""Memory math: how many bytes a model needs on each GPU for weights, KV cache and the engine.

The formula (per GPU, under tensor parallelism `tp`):

    required = ceil(weight_bytes(precision) / tp)
             + kv_bytes_per_sequence_per_gpu(tp, max_model_len) x min_concurrency
             + activation_bytes(tp) + CUDA_GRAPH_BYTES + ENGINE_RESERVE_BYTES
    available = gpu memory x gpu_memory_utilization

`required <= available` is the feasibility test; what is left after weights and overheads is
the KV cache the engine will allocate, which gives the token capacity and concurrency.

A sequence's cache follows the layer groups of `ModelFacts.attention`, as vLLM's hybrid KV
cache manager allocates it (vllm/v1/kv_cache_interface.py, `max_memory_usage_bytes` of each
spec): full-attention layers keep every token (K and V per KV head, sharded over TP and
replicated when TP exceeds the KV heads); MLA layers keep one latent of kv_lora_rank +
qk_rope_head_dim per token, the same on every TP rank; sliding-window and chunked layers keep
their window plus one scheduler step of prefill (`KVPaging`), so a window saves memory only at
contexts longer than window + max_num_batched_tokens; all of it in whole blocks; Mamba and linear-attention layers keep a fixed state per sequence
(`ModelFacts.state`), sharded by heads over TP; encoder-only layers keep nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inferator.api.inferenceservice import Precision
from inferator.api.modelcache import AttentionGroup, ModelFacts

GIB = 2**30
MIB = 2**20

BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
    # Pre-quantised formats, scales included (see profiles/quantization.py); only used when a
    # checkpoint's exact bytes are unknown.
    "awq": 0.52,
    "gptq": 0.52,
    "mxfp4": 0.53125,
    "nvfp4": 0.5625,
}

# Hugging Face `torch_dtype` spellings -> our precision names.
DTYPE_PRECISION: dict[str, Precision] = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
}

# The engine's own memory outside weights and KV cache, per GPU. vLLM measures these at start
# (profile run + graph capture) and subtracts them from gpu_memory_utilization x total; we
# budget the same things so a profile that fits here does not fail there.
# CUDA context, cuBLAS/NCCL workspaces and allocator slack; vLLM's startup log reports this as
# "non-torch memory", typically 0.5-1.5 GiB on a data-centre GPU.
ENGINE_RESERVE_BYTES = 1 * GIB
# CUDA graph capture; vLLM's log line "Graph capturing finished ... took N GiB" is typically
# 0.2-1.0 GiB for dense models up to 70B. Not captured on CPU.
CUDA_GRAPH_BYTES = GIB // 2
# Tokens in one profiling forward pass: vLLM's default max_num_batched_tokens for the
# OpenAI server with chunked prefill (vllm/engine/arg_utils.py, UsageContext.OPENAI_API_SERVER).
ACTIVATION_TOKENS = 8192
# Live tensors per token in that pass, as multiples of hidden (residual, normed input, attention
# output, q/k/v) and of the per-GPU MLP width (gate and up projections): an upper bound on
# what the profile run allocates at its peak.
ACTIVATION_HIDDEN_MULTIPLE = 6
ACTIVATION_MLP_MULTIPLE = 2
# Logits of one batch of sequences in fp32 (the sampler upcasts): vLLM's default max_num_seqs.
LOGITS_SEQUENCES = 256
# The CPU engine: Python, torch and the tokenizer in the server process.
CPU_ENGINE_RESERVE_BYTES = 2 * GIB


def precision_of_dtype(dtype: str) -> Precision:
    """Our precision name for a checkpoint's `torch_dtype`; unknown spellings count as bf16."""
    return DTYPE_PRECISION.get(dtype.lower().removeprefix("torch."), "bf16")


def quantized_precision(facts: ModelFacts) -> tuple[Precision | None, str]:
    """The precision a pre-quantised checkpoint is fixed to (its own format), or (None, reason)."""
    q = facts.quantization
    if q is None:
        return None, ""
    scheme = (q.scheme or "").lower()
    if scheme in ("fp8", "mxfp4", "nvfp4", "awq", "gptq", "int4", "int8"):
        return scheme, ""  # type: ignore[return-value]
    # Facts recorded before `scheme` existed: infer it from the method as then recorded.
    method = q.method.lower()
    if method in ("mxfp4",):
        return "mxfp4", ""
    if "fp4" in method:
        return "nvfp4", ""
    if "fp8" in method or (method == "modelopt" and q.bits in (None, 8)):
        return "fp8", ""
    if method.startswith("awq"):
        return "awq", ""
    if method.startswith("gptq"):
        return "gptq", ""
    if q.bits == 4:
        return "int4", ""
    if q.bits == 8:
        return "int8", ""
    return None, f"quantization method {q.method!r} with {q.bits} bits is not supported by any engine profile"


def embedding_parameters(facts: ModelFacts) -> int:
    """Input embedding plus LM head parameters (both vocab x hidden); online FP8 leaves them unquantised."""
    if facts.vocab_size is None:
        return 0
    return min(facts.parameter_count, 2 * facts.vocab_size * facts.hidden_size)


def weight_bytes(facts: ModelFacts, precision: Precision) -> int:
    """Bytes of weights the engine holds for the whole model at `precision` (before sharding).

    The checkpoint's own precision (native or pre-quantised) is exact: `facts.weight_bytes`
    from the safetensors headers, which covers MoE experts and every other tensor. Casting
    fp32 -> bf16/fp16 halves it. Online quantisation to fp8 (vLLM `--quantization fp8`)
    quantises the linear layers only: embeddings and LM head stay in the native dtype.
    """
    native: Precision = precision_of_dtype(facts.dtype)
    pre_quantised, _ = quantized_precision(facts)
    if pre_quantised is not None or precision == native:
        return facts.weight_bytes
    native_bytes = BYTES_PER_PARAM[native]
    target_bytes = BYTES_PER_PARAM[precision]
    if target_bytes >= native_bytes:
        # A cast up (bf16 checkpoint served as fp32) or sideways (bf16 -> fp16).
        return math.ceil(facts.weight_bytes * target_bytes / native_bytes)
    embed = embedding_parameters(facts)
    # Bytes per parameter from the checkpoint itself (covers tensors outside parameter_count).
    params = max(facts.parameter_count, 1)
    kept_dtype_bytes = min(native_bytes, 2)  # a cast down from fp32 keeps embeddings in bf16
    linear_params = max(params - embed, 0)
    return math.ceil(linear_params * target_bytes + embed * kept_dtype_bytes)


def kv_heads_per_gpu(facts: ModelFacts, tensor_parallel_size: int) -> int:
    """vLLM shards KV heads across TP ranks and replicates them when TP exceeds their number."""
    return max(1, facts.num_key_value_heads // tensor_parallel_size)


def attention_groups(facts: ModelFacts) -> list[AttentionGroup]:
    """The KV layout; facts recorded before it existed describe a uniform full-attention stack."""
    if facts.attention:
        return list(facts.attention)
    return [
        AttentionGroup(
            kind="full",
            layers=facts.num_layers,
            kv_heads=facts.num_key_value_heads,
            head_dim=facts.head_dim,
            v_head_dim=facts.head_dim,
        )
    ]


def _token_bytes_per_layer(group: AttentionGroup, tensor_parallel_size: int, kv_dtype_bytes: int) -> int:
    if group.kind == "encoder":
        return 0
    if group.kind == "mla":
        return group.head_dim * kv_dtype_bytes  # one latent per token, replicated on every rank
    heads = max(1, group.kv_heads // tensor_parallel_size)
    return heads * (group.head_dim + group.v_head_dim) * kv_dtype_bytes


def kv_bytes_per_token(facts: ModelFacts, kv_dtype_bytes: int = 2) -> int:
    """KV of one more token for the whole model, windows full: the layers that keep every token."""
    return kv_bytes_per_token_per_gpu(facts, 1, kv_dtype_bytes)


def kv_bytes_per_token_per_gpu(facts: ModelFacts, tensor_parallel_size: int, kv_dtype_bytes: int = 2) -> int:
    """KV of one more token on each GPU once sliding windows are full (full and MLA layers only)."""
    return sum(
        g.layers * _token_bytes_per_layer(g, tensor_parallel_size, kv_dtype_bytes)
        for g in attention_groups(facts)
        if g.window is None
    )


@dataclass(frozen=True, slots=True)
class KVPaging:
    """How an engine pages KV: tokens per block, and tokens in flight in one scheduler step.

    A sliding-window layer cannot free what the step still reads, so it holds its window plus one
    step of prefill (vLLM: SlidingWindowSpec.max_admission_blocks_per_request), plus a block for a
    window that starts mid-block; a chunked-local layer holds one chunk plus the step.
    """

    block_size: int
    in_flight_tokens: int


# vLLM's defaults for the OpenAI server: 16-token blocks and 8192 batched tokens on CUDA
# (vllm/engine/arg_utils.py), 128-token blocks and 2048 batched tokens on CPU (platforms/cpu.py).
GPU_PAGING = KVPaging(block_size=16, in_flight_tokens=ACTIVATION_TOKENS)
CPU_PAGING = KVPaging(block_size=128, in_flight_tokens=2048)


def _tokens_kept(group: AttentionGroup, length: int, paging: KVPaging) -> int:
    """Token slots one sequence of `length` tokens holds in a layer of this group, in whole blocks."""
    block = paging.block_size
    if group.window is None:
        return math.ceil(length / block) * block
    if group.kind == "chunked":
        return math.ceil(min(group.window + paging.in_flight_tokens, length) / block) * block
    return (math.ceil(min(group.window - 1 + paging.in_flight_tokens, length) / block) + 1) * block


def _layers_per_kv_group(groups: list[AttentionGroup]) -> int:
    """vLLM's hybrid allocator splits each layer kind into groups of one size and pads short ones.

    The size is the smallest kind's layer count, or the largest when the kinds are within 1.5x
    of each other (vllm/v1/core/kv_cache_utils.py, _get_kv_cache_groups_uniform_page_size).
    """
    counts = [g.layers for g in groups if g.layers > 0 and g.kind != "encoder"]
    if len(counts) <= 1:
        return 1
    smallest, largest = min(counts), max(counts)
    return largest if largest < smallest * 1.5 else smallest


def kv_bytes_per_sequence_per_gpu(
    facts: ModelFacts,
    tensor_parallel_size: int,
    length: int,
    kv_dtype_bytes: int = 2,
    paging: KVPaging = GPU_PAGING,
) -> int:
    """Cache of one sequence of `length` tokens on each GPU: KV by layer group plus recurrent state.

    This is what the engine reserves per admitted sequence, so it is also what its "maximum
    concurrency" divides the pool by: whole blocks, a window's in-flight margin, and the padding
    layers of a hybrid stack whose kinds do not divide into equal groups.
    """
    groups = attention_groups(facts)
    group_size = _layers_per_kv_group(groups)
    total = 0
    for g in groups:
        layers = g.layers if group_size == 1 else math.ceil(g.layers / group_size) * group_size
        per_token = _token_bytes_per_layer(g, tensor_parallel_size, kv_dtype_bytes)
        total += layers * per_token * _tokens_kept(g, length, paging)
    for st in facts.state:
        total += st.layers * math.ceil(st.state_bytes_per_layer / tensor_parallel_size)
    return total


def activation_bytes(facts: ModelFacts, tensor_parallel_size: int, dtype_bytes: int = 2) -> int:
    """Peak activation memory of the engine's profiling pass on each GPU (see the constants above)."""
    intermediate = facts.moe_intermediate_size or facts.intermediate_size or 4 * facts.hidden_size
    mlp_width = math.ceil(intermediate / tensor_parallel_size)
    if facts.num_experts_per_token:
        mlp_width *= facts.num_experts_per_token
    per_token = ACTIVATION_HIDDEN_MULTIPLE * facts.hidden_size + ACTIVATION_MLP_MULTIPLE * mlp_width
    logits = LOGITS_SEQUENCES * (facts.vocab_size or 0) * 4
    return ACTIVATION_TOKENS * per_token * dtype_bytes + logits


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Bytes per device (GPU, or the node for CPU profiles) for one candidate at one context length.

    kv_bytes_per_token_per_gpu: what one more token costs once sliding windows are full;
    kv_bytes_per_sequence_per_gpu: one whole sequence of the planned context (windows, state).
    """

    weight_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    kv_required_bytes_per_gpu: int
    overhead_bytes_per_gpu: int
    available_bytes_per_gpu: int
    kv_bytes_per_sequence_per_gpu: int = 0
    context_tokens: int = 0

    @property
    def required_bytes_per_gpu(self) -> int:
        return self.weight_bytes_per_gpu + self.kv_required_bytes_per_gpu + self.overhead_bytes_per_gpu

    @property
    def fits(self) -> bool:
        return self.required_bytes_per_gpu <= self.available_bytes_per_gpu

    @property
    def kv_cache_bytes_per_gpu(self) -> int:
        """What the engine will allocate for KV: all the budget left after weights and overheads."""
        return max(0, self.available_bytes_per_gpu - self.weight_bytes_per_gpu - self.overhead_bytes_per_gpu)

    def tokens_in(self, kv_bytes: int) -> int:
        """Tokens of planned-length sequences `kv_bytes` of cache holds: vLLM's "KV cache size".

        The engine reports its maximum concurrency times max_model_len, so windows, state and
        block rounding count as the sequence's cache spread over its tokens; 0 for models that
        keep no KV.
        """
        if self.kv_bytes_per_sequence_per_gpu and self.context_tokens:
            return kv_bytes * self.context_tokens // self.kv_bytes_per_sequence_per_gpu
        if self.kv_bytes_per_token_per_gpu:
            return kv_bytes // self.kv_bytes_per_token_per_gpu
        return 0

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens of planned-length sequences the KV cache the engine allocates holds."""
        return self.tokens_in(self.kv_cache_bytes_per_gpu)

    def max_sequences(self) -> int | None:
        """Sequences of the planned context that fit at once (vLLM's "maximum concurrency")."""
        if not self.kv_bytes_per_sequence_per_gpu:
            return None
        return self.kv_cache_bytes_per_gpu // self.kv_bytes_per_sequence_per_gpu

    def max_model_len_that_fits(self, min_concurrency: int) -> int:
        """An estimate of the longest context for which `min_concurrency` sequences fit in the KV budget."""
        if not self.kv_bytes_per_token_per_gpu:
            return self.context_tokens
        fixed = max(
            0, self.kv_bytes_per_sequence_per_gpu - self.kv_bytes_per_token_per_gpu * self.context_tokens
        )
        budget = self.kv_cache_bytes_per_gpu // max(1, min_concurrency) - fixed
        return max(0, budget // self.kv_bytes_per_token_per_gpu)


def _sequences_held(facts: ModelFacts, min_concurrency: int) -> int:
    """Sequences of the planned length the KV cache must hold.

    Pooling models (embed, rerank, classify) answer in one forward pass and keep nothing
    between requests, so concurrency costs no KV; a decoder-attention pooler (a causal LM
    served as an embedder) still needs one sequence's worth, or vLLM refuses to start.
    Encoder layers cache nothing (their per-sequence bytes are 0).
    """
    return min_concurrency if facts.task == "generate" else 1


def plan_gpu_memory(
    facts: ModelFacts,
    precision: Precision,
    tensor_parallel_size: int,
    max_model_len: int,
    min_concurrency: int,
    gpu_memory_bytes: int,
    gpu_memory_utilization: float,
    extra_reserve_bytes: int = 0,
    pipeline_parallel_size: int = 1,
) -> MemoryPlan:
    """The memory plan of one GPU of a `tensor_parallel_size` x `pipeline_parallel_size` profile.

    Pipeline stages split the layers (and so weights and KV) evenly; the estimate rounds up.
    """
    kv_dtype_bytes = 2  # KV cache in the activation dtype (vLLM --kv-cache-dtype auto), also with fp8 weights
    pp = max(1, pipeline_parallel_size)
    per_token = math.ceil(kv_bytes_per_token_per_gpu(facts, tensor_parallel_size, kv_dtype_bytes) / pp)
    per_sequence = math.ceil(
        kv_bytes_per_sequence_per_gpu(facts, tensor_parallel_size, max_model_len, kv_dtype_bytes) / pp
    )
    overhead = (
        activation_bytes(facts, tensor_parallel_size)
        + CUDA_GRAPH_BYTES
        + ENGINE_RESERVE_BYTES
        + extra_reserve_bytes
    )
    required_kv = per_sequence * _sequences_held(facts, min_concurrency)
    return MemoryPlan(
        weight_bytes_per_gpu=math.ceil(weight_bytes(facts, precision) / (tensor_parallel_size * pp)),
        kv_bytes_per_token_per_gpu=per_token,
        kv_required_bytes_per_gpu=required_kv,
        overhead_bytes_per_gpu=overhead,
        available_bytes_per_gpu=int(gpu_memory_bytes * gpu_memory_utilization),
        kv_bytes_per_sequence_per_gpu=per_sequence,
        context_tokens=max_model_len,
    )


def plan_cpu_memory(
    facts: ModelFacts,
    precision: Precision,
    max_model_len: int,
    min_concurrency: int,
    node_memory_bytes: int,
    memory_utilization: float,
    extra_reserve_bytes: int = 0,
) -> MemoryPlan:
    """The memory plan of a vLLM-CPU server: weights and KV cache in the node's allocatable memory.

    vLLM-CPU allocates exactly VLLM_CPU_KVCACHE_SPACE (whole GiB) for KV, so the KV this plan
    requires is rounded up to whole GiB, at least 1: what fits here is what the server gets.
    """
    kv_dtype_bytes = int(BYTES_PER_PARAM[precision]) if precision in ("fp32", "bf16", "fp16") else 2
    per_token = kv_bytes_per_token(facts, kv_dtype_bytes)
    per_sequence = kv_bytes_per_sequence_per_gpu(facts, 1, max_model_len, kv_dtype_bytes, CPU_PAGING)
    needed = per_sequence * _sequences_held(facts, min_concurrency)
    kv_gib = max(1, math.ceil(needed / GIB))
    return MemoryPlan(
        weight_bytes_per_gpu=weight_bytes(facts, precision),
        kv_bytes_per_token_per_gpu=per_token,
        kv_required_bytes_per_gpu=kv_gib * GIB,
        overhead_bytes_per_gpu=CPU_ENGINE_RESERVE_BYTES + extra_reserve_bytes,
        available_bytes_per_gpu=int(node_memory_bytes * memory_utilization),
        kv_bytes_per_sequence_per_gpu=per_sequence,
        context_tokens=max_model_len,
    )


def gib(value_bytes: int) -> str:
    """Bytes as GiB with one decimal, the unit of every reason we print."""
    return f"{value_bytes / GIB:.1f}"
