"""The operator's selection settings: which engines exist, in what order profiles rank, and margins."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from inferator.api.inferenceservice import Engine, Precision

RankKey = Literal["device", "target", "precision", "engine", "tensor_parallel", "bandwidth", "name"]

DEFAULT_RANKING: list[RankKey] = [
    "device",
    "target",
    "precision",
    "engine",
    "tensor_parallel",
    "bandwidth",
    "name",
]
# NIM's order: TensorRT-LLM > vLLM > SGLang; the CPU engine is for development clusters only.
DEFAULT_ENGINE_ORDER: list[Engine] = ["trtllm", "vllm", "sglang", "vllm-cpu"]
# NIM's order: lower precision first (MXFP4 > FP8 > INT8 > FP16 > BF16). Only precisions the GPU
# runs natively get this order; weight-only ones (FP8 on Ampere, MXFP4 on Hopper) rank after
# every native one. Pre-quantised checkpoints have one precision, their own.
DEFAULT_PRECISION_ORDER: list[Precision] = [
    "nvfp4", "mxfp4", "fp8", "int8", "awq", "gptq", "int4", "bf16", "fp16", "fp32",
]  # fmt: skip


class SelectionSettings(BaseModel):
    """Operator-wide knobs for profile selection (the `selection` part of the operator's settings).

    `ranking` is the sort order of feasible candidates, most significant key first:
    - device: GPU profiles before CPU profiles;
    - target: the spec's `optimizeFor` first, otherwise latency before throughput;
    - precision: `precisionOrder`, natively supported precisions before emulated ones;
    - engine: `engineOrder`;
    - tensor_parallel: latency profiles prefer more GPUs (lower latency), throughput profiles
      fewer (more replicas from the same GPUs), both within `latencyGpuFactor` (see there);
    - bandwidth: faster GPU memory first (decode speed is bandwidth-bound); for pooling models
      (embed, rerank, classify), which decode nothing, the smallest GPU first, and the fewest
      GPUs for every target;
    - name: the profile name, then the pool key, so the order is total.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    engines: list[Engine] = Field(default_factory=lambda: list(DEFAULT_ENGINE_ORDER))
    engine_order: list[Engine] = Field(default_factory=lambda: list(DEFAULT_ENGINE_ORDER))
    precision_order: list[Precision] = Field(default_factory=lambda: list(DEFAULT_PRECISION_ORDER))
    ranking: list[RankKey] = Field(default_factory=lambda: list(DEFAULT_RANKING))
    tensor_parallel_sizes: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16], description="TP sizes considered (each must fit one node)."
    )
    latency_gpu_factor: float = Field(
        default=2.0,
        ge=1,
        le=8,
        description="GPUs per replica. Throughput profiles use the fewest GPUs that hold the weights and the "
        "requested KV (the model's full context unless serving.maxModelLen says less); latency profiles use at "
        "most this many times that (fewer where the heads do not divide), never more because a node has them. "
        "A selector that lists tensorParallelSizes, or a pinned profile, is not capped.",
    )
    min_auto_model_len: int = Field(
        default=4096,
        ge=16,
        description="When serving.maxModelLen is unset and the model's maximum does not fit, the context is "
        "shrunk to what fits, but not below this.",
    )
    extra_reserve_mib: int = Field(
        default=0, ge=0, description="Extra per-GPU memory kept free, on top of ours."
    )
    cpu_memory_utilization: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of a CPU node's allocatable memory a vllm-cpu server may use.",
    )
    tolerated_taint_keys: list[str] = Field(
        default_factory=lambda: ["nvidia.com/gpu"],
        description="Taints serving pods tolerate without the user asking (the renderer adds the tolerations).",
    )
    model_dir: str = "/models"
    status_candidates: int = Field(default=10, ge=1, le=100, description="Candidates kept in status.")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SelectionSettings:
        """Settings from YAML/JSON data; unknown keys are refused so a typo is not silently ignored."""
        return cls.model_validate(data or {})
