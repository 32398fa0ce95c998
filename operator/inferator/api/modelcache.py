"""ModelCache: model weights fetched once onto a PVC, owned by the right UID, verified."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inferator.api.common import ApiModel, Condition, Quantity, ResourceRequirements, SecretRef, Toleration

SOURCE_URI_PATTERN = r"^(hf://[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|https?://[^\s]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?)$"

ModelCachePhase = Literal["Pending", "Downloading", "Ready", "Failed"]


class ModelSource(ApiModel):
    """Where the weights come from."""

    uri: str = Field(
        max_length=2048,
        pattern=SOURCE_URI_PATTERN,
        description=(
            "hf://org/name[@revision], s3://bucket/prefix, https://host/path (a file list, one URL a line, "
            "or a directory listing), or pvc://claim/path for weights already on a volume (verified only)."
        ),
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Hugging Face mirror (HF_ENDPOINT) or S3-compatible endpoint URL.",
    )
    region: str | None = Field(default=None, max_length=64, description="S3 region.")
    credentials_secret: SecretRef | None = Field(
        default=None,
        description=(
            "Secret with HF_TOKEN, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; its values are passed to the "
            "prefetch Job as environment variables and never logged."
        ),
    )
    include: list[str] = Field(default_factory=list, max_length=64, description="Glob patterns to fetch.")
    exclude: list[str] = Field(default_factory=list, max_length=64, description="Glob patterns to skip.")


AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]


def _default_access_modes() -> list[AccessMode]:
    return ["ReadWriteOnce"]


class Storage(ApiModel):
    """The PVC the cache lives on."""

    pvc_name: str | None = Field(
        default=None,
        max_length=253,
        description="Adopt this existing claim instead of creating one.",
    )
    size: Quantity | None = Field(
        default=None,
        description="Claim size; when omitted it is the source's total size plus headroom.",
    )
    storage_class_name: str | None = Field(default=None, max_length=253)
    access_modes: list[AccessMode] = Field(default_factory=_default_access_modes, min_length=1, max_length=4)
    reclaim_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What happens to a claim the operator created when the ModelCache is deleted.",
    )


class Ownership(ApiModel):
    """Who owns the files: the prefetch Job writes, and serving pods read, as this UID/GID."""

    run_as_user: int = Field(default=1000, ge=1, le=2147483647)
    run_as_group: int = Field(default=1000, ge=0, le=2147483647)
    fs_group: int = Field(default=1000, ge=0, le=2147483647)
    fix_ownership: bool = Field(
        default=False,
        description=(
            "Run a root init step that chowns the cache directory, for volumes that ignore fsGroup "
            "(NFS with root squash cannot be fixed this way; the condition then names the UID and path)."
        ),
    )


class PrefetchJob(ApiModel):
    """How the prefetch Job runs."""

    parallel_downloads: int = Field(default=8, ge=1, le=64)
    stall_timeout_seconds: int = Field(default=120, ge=5, le=3600)
    backoff_limit: int = Field(default=6, ge=0, le=100)
    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(default=None, max_length=64)
    image: str | None = Field(default=None, max_length=1024, description="Override the prefetch image.")


class ModelCacheSpec(ApiModel):
    source: ModelSource
    storage: Storage = Field(default_factory=Storage, json_schema_extra={"default": {}})
    ownership: Ownership = Field(default_factory=Ownership, json_schema_extra={"default": {}})
    prefetch: PrefetchJob = Field(default_factory=PrefetchJob, json_schema_extra={"default": {}})


class Quantization(ApiModel):
    """Pre-quantisation declared by the checkpoint itself (config.json's quantization_config)."""

    method: str = Field(max_length=64, description="fp8, awq, gptq, compressed-tensors, bitsandbytes, ...")
    bits: int | None = Field(default=None, ge=1, le=32)


class ModelFacts(ApiModel):
    """What the prefetch Job measured: config.json plus the safetensors headers (not the tensors)."""

    architecture: str = Field(max_length=256)
    model_type: str | None = Field(default=None, max_length=128)
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    intermediate_size: int | None = Field(default=None, ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    max_position_embeddings: int | None = Field(default=None, ge=1)
    vocab_size: int | None = Field(default=None, ge=1)
    num_experts: int | None = Field(default=None, ge=1)
    num_experts_per_token: int | None = Field(default=None, ge=1)
    dtype: str = Field(default="bfloat16", max_length=32, description="Native dtype of the weights.")
    quantization: Quantization | None = None
    parameter_count: int = Field(ge=0, description="Exact, from safetensors headers.")
    weight_bytes: int = Field(ge=0, description="Exact bytes of all tensors, from safetensors headers.")


class Progress(ApiModel):
    bytes_done: int = Field(default=0, ge=0)
    bytes_total: int = Field(default=0, ge=0)
    files_done: int = Field(default=0, ge=0)
    files_total: int = Field(default=0, ge=0)
    bytes_per_second: int = Field(default=0, ge=0)


class ModelCacheStatus(ApiModel):
    phase: ModelCachePhase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    pvc_name: str | None = None
    job_name: str | None = None
    content_hash: str | None = Field(
        default=None,
        description="Hash of the spec fields that sizeBytes, resolvedRevision and model describe.",
    )
    resolved_revision: str | None = None
    size_bytes: int | None = None
    progress: Progress | None = None
    model: ModelFacts | None = None
    message: str | None = None
