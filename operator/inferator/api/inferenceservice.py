"""InferenceService: a profile selected against the cluster's GPUs, served as an OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from inferator.api.common import (
    ApiModel,
    Condition,
    KubeObject,
    LocalObjectRef,
    PodPlacement,
    ResourceRequirements,
    Toleration,
)
from inferator.api.modelcache import ModelTask

Engine = Literal["trtllm", "vllm", "sglang", "vllm-cpu"]
# Named as the engines name them; a pre-quantised checkpoint's own format is its precision.
Precision = Literal["nvfp4", "mxfp4", "fp8", "int8", "awq", "gptq", "int4", "fp16", "bf16", "fp32"]
Target = Literal["latency", "throughput"]
ScalingSignal = Literal["queueLength", "runningRequests", "kvCacheUsage", "cpu"]

PROFILE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"

InferenceServicePhase = Literal[
    "Pending", "WaitingForCache", "NoCompatibleProfile", "Deploying", "Ready", "Degraded", "Failed"
]


class ProfileSelector(ApiModel):
    """Constraints on automatic selection; every list narrows, an empty list allows all."""

    engines: list[Engine] = Field(default_factory=list, max_length=4)
    precisions: list[Precision] = Field(default_factory=list, max_length=10)
    tensor_parallel_sizes: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=list, max_length=8
    )
    nodes: list[Annotated[int, Field(ge=1, le=16)]] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Nodes per replica: 1 is one node; more spans nodes (tensor parallel within a node, "
            "pipeline stages across nodes). By default several nodes are considered only when no "
            "single node holds the model."
        ),
    )
    gpu_products: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="GPU products (nvidia.com/gpu.product, matched by normalised name) or short names (h100).",
    )
    optimize_for: Target | None = Field(
        default=None, description="Prefer latency or throughput profiles; by default latency comes first."
    )
    rank_by: Literal["static", "measured"] = Field(
        default="static",
        description=(
            "measured: profiles with validation numbers for this model and GPU come first, best "
            "measured first (output tokens/s; TTFT p99 with optimizeFor latency); the rest follow "
            "in the static order."
        ),
    )


class SecretKeySelector(ApiModel):
    """One key of a Secret in the resource's namespace; only the names are ever stored."""

    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="api-key", min_length=1, max_length=253)


class Serving(ApiModel):
    """Limits that size the KV cache and the engine."""

    max_model_len: int | None = Field(
        default=None, ge=16, le=10_485_760, description="Context length; defaults to the model's own maximum."
    )
    min_concurrency: int = Field(
        default=1, ge=1, le=4096, description="Sequences of max length the KV cache must hold at once."
    )
    gpu_memory_utilization: float = Field(default=0.9, ge=0.1, le=0.99)
    served_model_name: str | None = Field(
        default=None,
        max_length=256,
        description="Name clients send as `model`; defaults to the cache's model.",
    )
    task: ModelTask | None = Field(
        default=None,
        description=(
            "generate, embed, rerank or classify; defaults to the model's own task (its architecture "
            "and sentence-transformers files). embed or classify on a causal LM converts it (vLLM "
            "--convert); a pooling task runs the engine's pooling runner and is warmed up on its endpoint."
        ),
    )
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    api_key_secret: SecretKeySelector | None = Field(
        default=None,
        description=(
            "Require this API key from clients (vLLM, SGLang). The key stays in the Secret: the "
            "container reads it through a secretKeyRef and warms itself up with it."
        ),
    )

    @field_validator("extra_args")
    @classmethod
    def _no_key_in_args(cls, args: list[str]) -> list[str]:
        if any(a == "--api-key" or a.startswith("--api-key=") for a in args):
            raise ValueError(
                "--api-key in extraArgs would store the key in plain text (and the warm-up could not "
                "use it): put it in a Secret and set serving.apiKeySecret"
            )
        return args

    startup_timeout_seconds: int = Field(
        default=1200, ge=60, le=14400, description="Startup probe budget (NIM's is about 20 minutes)."
    )


class Autoscaling(ApiModel):
    """Autoscaling on engine signals; the operator leaves `replicas` to the autoscaler when enabled.

    One node per replica: the HPA or ScaledObject scales the Deployment. A profile spanning
    nodes: it scales the InferenceService through its scale subresource (`spec.replicas`, one
    group per replica, signals read from the leaders), and the operator adds or removes whole
    groups."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    metric: ScalingSignal = "queueLength"
    target: float = Field(default=4, gt=0, description="Target value of the signal per replica.")
    backend: Literal["auto", "hpa", "keda"] = Field(
        default="auto", description="auto: KEDA when its CRDs exist or minReplicas is 0, else HPA."
    )
    cooldown_seconds: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="KEDA: seconds without activity before scaling to zero (its cooldownPeriod).",
    )


class ServiceLevelObjectives(ApiModel):
    """Targets the validation run is judged against; every one set must hold."""

    concurrency: int | None = Field(
        default=None, ge=1, le=1024,
        description="The load level judged (one of validation.concurrency); defaults to the highest.",
    )  # fmt: skip
    ttft_p99_ms: float | None = Field(default=None, gt=0, description="Time to first token, p99, at most.")
    inter_token_latency_p99_ms: float | None = Field(
        default=None, gt=0, description="Time between output tokens, p99, at most."
    )
    output_tokens_per_second: float | None = Field(
        default=None, gt=0, description="Output tokens per second of one replica, at least."
    )


class Validation(ApiModel):
    """A load test of each new profile once it is Ready (a Job of `vllm bench serve` against one pod).

    It runs again only when what it measured changes: the profile, the image, the cache's
    revision or the load below. The SLOs are judged on the stored numbers, so changing them
    runs nothing."""

    enabled: bool = True
    concurrency: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [1, 4], min_length=1, max_length=8,
        description="Concurrent requests per level; one run per level.",
    )  # fmt: skip
    requests_per_level: int = Field(default=32, ge=1, le=10_000)
    input_tokens: int = Field(default=256, ge=8, le=131_072, description="Prompt length (random tokens).")
    output_tokens: int = Field(default=128, ge=1, le=32_768, description="Tokens generated per request.")
    timeout_seconds: int = Field(default=900, ge=60, le=14_400, description="The Job's deadline.")
    slo: ServiceLevelObjectives | None = None
    on_slo_failure: Literal["Report", "KeepPreviousProfile"] = Field(
        default="Report",
        alias="onSLOFailure",
        description=(
            "Report: condition MeetsSLO False and an Event. KeepPreviousProfile: also go back to "
            "the profile validated before, if it met the SLO, until the spec changes."
        ),
    )
    min_kv_cache_headroom: float = Field(
        default=0.1,
        ge=0,
        le=0.9,
        alias="minKVCacheHeadroom",
        description="Warn when KV-cache use at the load's peak leaves less than this.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU/memory of the load generator."
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.slo) || !has(self.slo.concurrency) || self.slo.concurrency in self.concurrency",
                    "message": "slo.concurrency must be one of validation.concurrency (the levels measured)",
                    "fieldPath": ".slo.concurrency",
                },
            ]
        }
    }

    @field_validator("concurrency")
    @classmethod
    def _distinct_levels(cls, levels: list[int]) -> list[int]:
        return sorted(set(levels))


class Networking(ApiModel):
    """Who may talk to the endpoint; private AI means no egress by default."""

    allowed_namespaces: list[str] = Field(default_factory=list, max_length=64)
    allowed_pod_labels: dict[str, str] | None = None
    allow_egress: bool = False


# What the operator sets in the serving container and a user's env must not replace.
RESERVED_ENV = frozenset({"HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"})


class Scheduling(PodPlacement):
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(default=None, max_length=64)
    priority_class_name: str | None = Field(default=None, max_length=253)
    runtime_class_name: str | None = Field(default=None, max_length=253)


class InferenceServiceSpec(ApiModel):
    model_cache_ref: LocalObjectRef = Field(description="The ModelCache (same namespace) to serve from.")
    profile: str | None = Field(
        default=None,
        max_length=128,
        pattern=PROFILE_NAME_PATTERN,
        description="Pin a profile (e.g. vllm-h100-fp8-tp2-latency); feasibility is still checked.",
    )
    selector: ProfileSelector | None = None
    serving: Serving = Field(default_factory=Serving, json_schema_extra={"default": {}})
    replicas: int = Field(default=1, ge=0, le=1000)
    autoscaling: Autoscaling | None = None
    scheduling: Scheduling | None = None
    resources: ResourceRequirements | None = Field(default=None, description="CPU/memory for the server.")
    networking: Networking = Field(default_factory=Networking, json_schema_extra={"default": {}})
    validation: Validation | None = Field(
        default=None,
        description="Load-test each new profile once Ready, and judge it against SLOs (`validation: {}` for the defaults).",
    )
    image: str | None = Field(default=None, max_length=1024, description="Override the engine's image.")
    env: list[KubeObject] = Field(
        default_factory=list,
        max_length=64,
        description="Extra EnvVars for the server (valueFrom.secretKeyRef for secrets); INFERATOR_* is reserved.",
    )
    env_from: list[KubeObject] = Field(
        default_factory=list,
        max_length=16,
        description="Extra EnvFromSources for the server (secretRef, configMapRef).",
    )

    @field_validator("env")
    @classmethod
    def _no_reserved_env(cls, env: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for var in env:
            name = str(var.get("name") or "")
            if not name:
                raise ValueError("every env entry needs a name")
            if name.startswith("INFERATOR_") or name in RESERVED_ENV:
                raise ValueError(f"env {name!r} is set by the operator (the profile and model paths)")
        return env

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.profile) && has(self.selector))",
                    "message": "profile and selector exclude each other: a pinned profile is not ranked",
                    "fieldPath": ".profile",
                },
                {
                    "rule": "!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas",
                    "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                    "fieldPath": ".autoscaling.minReplicas",
                },
                {
                    "rule": "!has(self.autoscaling) || self.autoscaling.minReplicas > 0 || self.autoscaling.backend != 'hpa'",
                    "message": "scale to zero (autoscaling.minReplicas: 0) needs backend keda or auto; an HPA cannot scale to zero",
                    "fieldPath": ".autoscaling.backend",
                },
            ]
        }
    }


class Estimates(ApiModel):
    """The chosen profile's memory estimates, per GPU."""

    weight_bytes_per_gpu: int | None = None
    kv_cache_bytes_per_gpu: int | None = None
    kv_cache_tokens: int | None = None
    max_concurrent_sequences: int | None = None
    required_bytes_per_gpu: int | None = None
    available_bytes_per_gpu: int | None = None


class Candidate(ApiModel):
    name: str
    feasible: bool
    reason: str = ""


class ValidationLevel(ApiModel):
    """One concurrency level of a validation run."""

    concurrency: int
    requests: int = 0
    failed: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    inter_token_latency_p50_ms: float | None = None
    inter_token_latency_p99_ms: float | None = None
    output_tokens_per_second: float | None = None
    duration_seconds: float | None = None


class ValidationRun(ApiModel):
    """What one profile measured: the numbers and the KV-cache use beside the estimate."""

    profile: str
    key: str = Field(description="Hash of what was measured: profile, image, cache revision, load.")
    state: Literal["Running", "Succeeded", "Failed"]
    job: str | None = None
    generation: int | None = Field(
        default=None,
        description="The service's generation when the run started (a failed run is retried after a spec change).",
    )
    started_at: str | None = None
    completed_at: str | None = None
    levels: list[ValidationLevel] = Field(default_factory=list)
    kv_cache_idle: float | None = Field(default=None, description="KV-cache use before the load (0..1).")
    kv_cache_peak: float | None = Field(default=None, description="KV-cache use at the load's peak (0..1).")
    kv_cache_tokens: int | None = Field(
        default=None, description="Tokens the engine's KV cache holds (measured)."
    )
    estimated_kv_cache_tokens: int | None = Field(
        default=None, description="Tokens the profile was chosen with (status.estimates)."
    )
    meets_slo: bool | None = Field(default=None, alias="meetsSLO")
    message: str | None = None


class ValidationStatus(ValidationRun):
    previous: ValidationRun | None = Field(
        default=None, description="The last run of another profile: what a rollout is compared with."
    )
    rejected_profile: str | None = Field(
        default=None,
        description="A profile that failed the SLO and was left (onSLOFailure: KeepPreviousProfile).",
    )
    rejected_generation: int | None = None


class InferenceServiceStatus(ApiModel):
    phase: InferenceServicePhase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    profile: str | None = None
    task: ModelTask | None = Field(
        default=None, description="The task served (the pin, else the model's): what the endpoint answers."
    )
    profile_generation: int | None = Field(
        default=None,
        description=(
            "Generation the profile was selected for; a running profile is kept until the spec changes "
            "(other than replicas: see specRevision) or it no longer fits."
        ),
    )
    spec_revision: str | None = Field(
        default=None,
        description=(
            "Digest of the spec without replicas when the profile was selected: a scale (kubectl, an "
            "HPA or KEDA on the scale subresource) changes the generation but not what is served."
        ),
    )
    pool: str | None = None
    estimates: Estimates | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = Field(
        default=None, description="Label selector of the pods, for the scale subresource."
    )
    endpoint: str | None = None
    served_model_name: str | None = Field(
        default=None, description="The `model` clients send: what an InferenceGateway routes by."
    )
    validation: ValidationStatus | None = None
    message: str | None = None
