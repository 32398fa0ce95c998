"""ModelCache: model weights fetched once onto a PVC, owned by the right UID, verified."""

from __future__ import annotations

import posixpath
from typing import Literal

from pydantic import Field, model_validator

from inferator.api.common import (
    ApiModel,
    Condition,
    PodPlacement,
    Quantity,
    ResourceRequirements,
    SecretRef,
    Toleration,
)

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


class PrefetchJob(PodPlacement):
    """How the prefetch Job runs."""

    parallel_downloads: int = Field(default=8, ge=1, le=64)
    stall_timeout_seconds: int = Field(default=120, ge=5, le=3600)
    backoff_limit: int = Field(default=6, ge=0, le=100)
    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(default=None, max_length=64)
    image: str | None = Field(default=None, max_length=1024, description="Override the prefetch image.")


class CredentialsCheck(ApiModel):
    """A cheap authenticated listing of the source on a schedule, independent of any download:
    a revoked or expired token shows up as a condition before the next revision needs it."""

    enabled: bool = True
    schedule: str = Field(
        default="17 */6 * * *",
        max_length=128,
        pattern=r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$",
        description="When to check, as a CronJob schedule (default: every 6 hours).",
    )


def parse_pvc_uri(uri: str) -> tuple[str, str]:
    """'pvc://claim/some/dir' -> ('claim', 'some/dir'); '' for the volume root."""
    rest = uri.removeprefix("pvc://")
    claim, _, sub = rest.partition("/")
    return claim, posixpath.normpath(sub).strip("/") if sub.strip("/") else ""


class ModelCacheSpec(ApiModel):
    source: ModelSource
    storage: Storage = Field(default_factory=Storage, json_schema_extra={"default": {}})
    ownership: Ownership = Field(default_factory=Ownership, json_schema_extra={"default": {}})
    prefetch: PrefetchJob = Field(default_factory=PrefetchJob, json_schema_extra={"default": {}})
    credentials_check: CredentialsCheck = Field(
        default_factory=CredentialsCheck,
        json_schema_extra={"default": {}},
        description="With source.credentialsSecret: re-check the credentials on a schedule (a CronJob).",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!self.source.uri.startsWith('pvc://') || !has(self.storage.pvcName) || "
                        "self.source.uri.substring(6).split('/')[0] == self.storage.pvcName"
                    ),
                    "message": "a pvc:// source names its claim: spec.storage.pvcName, when set, must be that claim",
                    "fieldPath": ".storage.pvcName",
                }
            ]
        }
    }

    @model_validator(mode="after")
    def _pvc_claim_agrees(self) -> ModelCacheSpec:
        claim = self.source_claim
        if claim is not None and self.storage.pvc_name and claim != self.storage.pvc_name:
            raise ValueError(
                f"a pvc:// source names its claim ({claim!r}): spec.storage.pvcName, when set, must be that claim"
            )
        return self

    @property
    def in_place(self) -> bool:
        """pvc://: the weights are verified where they are, never copied."""
        return self.source.uri.startswith("pvc://")

    @property
    def source_claim(self) -> str | None:
        """pvc://claim/...: the claim the weights are verified and served on; None otherwise."""
        return parse_pvc_uri(self.source.uri)[0] if self.in_place else None

    @property
    def model_subpath(self) -> str:
        """The model directory inside the claim ('' for its root); pvc:// only."""
        return parse_pvc_uri(self.source.uri)[1] if self.in_place else ""


ModelTask = Literal["generate", "embed", "rerank", "classify"]
AttentionKind = Literal["full", "sliding", "chunked", "mla", "encoder"]
StateKind = Literal["mamba", "mamba2", "linear_attention", "short_conv"]


class Quantization(ApiModel):
    """Pre-quantisation declared by the checkpoint itself (config.json's quantization_config)."""

    method: str = Field(
        max_length=64,
        description="The engines' name of the checkpoint format: fp8, mxfp4, nvfp4, awq, gptq, compressed-tensors, bitsandbytes, ...",
    )
    bits: int | None = Field(default=None, ge=1, le=32)
    scheme: str | None = Field(
        default=None,
        max_length=64,
        description="The precision the profile names: fp8, mxfp4, nvfp4, awq, gptq, int4, int8.",
    )
    group_size: int | None = Field(default=None, ge=-1, description="Weights per scale (-1: per channel).")
    bytes_per_weight: float | None = Field(
        default=None, ge=0, description="Stored bytes per quantised weight, scales and zero points included."
    )
    unquantized_modules: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Module patterns the checkpoint keeps in the native dtype (modules_to_not_convert, ignore).",
    )


class AttentionGroup(ApiModel):
    """Layers that share one KV-cache layout (what the engines' hybrid KV allocators group by)."""

    kind: AttentionKind
    layers: int = Field(ge=0)
    kv_heads: int = Field(ge=0, description="KV heads (1 for MLA's shared latent).")
    head_dim: int = Field(
        ge=0, description="Bytes-per-element multiplier of K per head (MLA: latent rank + rope dims)."
    )
    v_head_dim: int = Field(ge=0, description="Width of V per head (0 for MLA, whose latent serves both).")
    window: int | None = Field(
        default=None,
        ge=1,
        description="Tokens a sliding-window or chunked layer keeps; None for full attention.",
    )


class StateGroup(ApiModel):
    """Layers with a fixed-size recurrent state per sequence instead of a KV cache (Mamba, linear attention)."""

    kind: StateKind
    layers: int = Field(ge=0)
    state_bytes_per_layer: int = Field(
        ge=0, description="Per sequence, for the whole layer, before TP sharding."
    )


class ModelFacts(ApiModel):
    """What the prefetch Job measured: config.json (resolved as its architecture does) plus the safetensors headers."""

    architecture: str = Field(max_length=256)
    model_type: str | None = Field(default=None, max_length=128)
    task: ModelTask = Field(
        default="generate", description="generate, or a pooling task: embed, rerank, classify."
    )
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
    moe_intermediate_size: int | None = Field(default=None, ge=1, description="Width of one routed expert.")
    num_shared_experts: int | None = Field(default=None, ge=0)
    moe_layers: int | None = Field(default=None, ge=0, description="Decoder layers with routed experts.")
    attention: list[AttentionGroup] = Field(
        default_factory=list,
        max_length=16,
        description="KV-cache layout by layer group; empty on caches measured before it was recorded.",
    )
    state: list[StateGroup] = Field(default_factory=list, max_length=16)
    mtp_layers: int = Field(
        default=0, ge=0, description="Multi-token-prediction layers (not loaded without speculation)."
    )
    dtype: str = Field(default="bfloat16", max_length=32, description="Native dtype of the weights.")
    quantization: Quantization | None = None
    parameter_count: int = Field(
        ge=0, description="Parameters the engine loads (vision tower in, MTP layers out)."
    )
    active_parameter_count: int | None = Field(
        default=None, ge=0, description="Parameters used per token (MoE)."
    )
    vision_parameter_count: int = Field(default=0, ge=0)
    weight_bytes: int = Field(
        ge=0, description="Bytes of weights the engine loads, as stored in the checkpoint."
    )
    checkpoint_bytes: int | None = Field(
        default=None, ge=0, description="Bytes of all tensors in the checkpoint (MTP layers included)."
    )
    exact_bytes: bool = Field(
        default=False, description="Bytes come from safetensors headers or index, not the shape."
    )


class Progress(ApiModel):
    bytes_done: int = Field(default=0, ge=0)
    bytes_total: int = Field(default=0, ge=0)
    files_done: int = Field(default=0, ge=0)
    files_total: int = Field(default=0, ge=0)
    bytes_per_second: int = Field(default=0, ge=0)


class CredentialsStatus(ApiModel):
    """The last scheduled credentials check, written by its Job (condition CredentialsValid says it)."""

    valid: bool | None = Field(default=None, description="None: the source could not be reached to tell.")
    checked_at: str | None = None
    message: str | None = Field(default=None, max_length=4096)


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
    credentials: CredentialsStatus | None = None
    model_error: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "Why the model's facts could not be read (an architecture or quantisation the planner "
            "cannot price). The weights are cached and Ready; InferenceServices on it report "
            "UnsupportedModel instead of selecting a profile."
        ),
    )
    message: str | None = None
