"""InferenceGateway: one OpenAI-compatible endpoint, with API keys and quotas, for many services.

Policy (which services, which keys may use which models, how many tokens) lives in the spec,
where GitOps reviews it; key material lives in Secrets the gateway's pods mount, so neither the
spec, the status nor the operator ever holds a key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from inferator.api.common import ApiModel, Condition, ResourceRequirements
from inferator.api.inferenceservice import Scheduling, SecretKeySelector

KEY_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ServiceSelector(ApiModel):
    """InferenceServices in the gateway's namespace, by label (a LabelSelector's matchLabels)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels the InferenceServices carry; empty selects every one."
    )


class GatewayKey(ApiModel):
    """One API key: an id the audit log and metrics name, the Secret holding it, what it may do."""

    id: str = Field(min_length=1, max_length=63, pattern=KEY_ID_PATTERN)
    secret_ref: SecretKeySelector = Field(
        description="The Secret key holding the API key (its value is the key)."
    )
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=256,
        description="Served model names this key may use; '*' is every model the gateway exposes.",
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Prompt + completion tokens per minute."
    )
    tokens_per_day: int | None = Field(
        default=None, ge=1, description="Prompt + completion tokens per UTC day."
    )


class ParentRef(ApiModel):
    """A Gateway (Gateway API) the route attaches to, in its own words."""

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(
        default=None, max_length=63, description="Defaults to the gateway's namespace."
    )
    section_name: str | None = Field(default=None, max_length=253, description="A listener of that Gateway.")
    port: int | None = Field(default=None, ge=1, le=65535)


class HttpRoute(ApiModel):
    """Expose the gateway through the cluster's Gateway API implementation (an HTTPRoute)."""

    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)


class InferenceGatewaySpec(ApiModel):
    selector: ServiceSelector = Field(default_factory=ServiceSelector)
    keys: list[GatewayKey] = Field(
        min_length=1,
        max_length=256,
        description="Accepted API keys. At least one: a gateway never serves without authentication.",
    )
    hold_seconds: int = Field(
        default=120,
        ge=0,
        le=1800,
        description="How long a request waits for a ready replica (a service scaling from zero) before 503.",
    )
    routing: Literal["prefix", "least-loaded"] = Field(
        default="prefix",
        description="prefix: requests sharing a prompt prefix go to the same replica (its KV cache), bounded by load.",
    )
    replicas: int = Field(
        default=1, ge=1, le=32, description="Gateway pods; each enforces an equal share of a quota."
    )
    port: int = Field(default=8080, ge=1024, le=65535)
    resources: ResourceRequirements | None = None
    scheduling: Scheduling | None = Field(
        default=None, description="Where the gateway's pods run (no GPU needed)."
    )
    http_route: HttpRoute | None = Field(
        default=None,
        description="Also render an HTTPRoute to the gateway's Service (needs the Gateway API CRDs).",
    )

    @field_validator("keys")
    @classmethod
    def _unique_ids(cls, keys: list[GatewayKey]) -> list[GatewayKey]:
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("key ids must be unique: the audit log and quotas tell keys apart by id")
        return keys


class ExposedModel(ApiModel):
    model: str
    service: str
    ready: bool = Field(description="A replica is ready; when false, requests are held while it scales up.")


class InferenceGatewayStatus(ApiModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    endpoint: str | None = None
    models: list[ExposedModel] = Field(default_factory=list)
    replicas: int | None = None
    ready_replicas: int | None = None
    message: str | None = None
