"""Pieces shared by both kinds: the base model, conditions, references, scheduling."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

API_GROUP = "inferator.dev"
API_VERSION = "v1alpha1"


class ApiModel(BaseModel):
    """Base for CR fields: camelCase on the wire, snake_case in Python, unknown fields refused.

    `extra="forbid"` mirrors what the API server's structural schema does (it prunes unknown
    fields); refusing them here means a spec read back from the cluster is exactly the schema.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False)

    def to_k8s(self) -> dict[str, Any]:
        """The dict to send to the API: aliases, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# A Kubernetes object passed through as it is (an affinity, a topology spread constraint, an
# EnvVar): the API server validates it when the operator applies the pod template, and a refusal
# surfaces as the resource's condition.
KubeObject = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
]

# A Kubernetes resource quantity ("10Gi", "500m", 4). The CRD maps `int | str` to int-or-string.
Quantity = int | str

CONDITION_STATUS = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A metav1.Condition: the shape every kubectl, Argo CD and kstatus user already reads."""

    type: str = Field(max_length=316)
    status: CONDITION_STATUS
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class SecretRef(ApiModel):
    """A Secret in the resource's own namespace. Only its name is ever stored or logged."""

    name: str = Field(min_length=1, max_length=253)


class LocalObjectRef(ApiModel):
    name: str = Field(min_length=1, max_length=253)


class Toleration(ApiModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourceRequirements(ApiModel):
    """Container resources; quantities are passed to Kubernetes unchanged."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class PodPlacement(ApiModel):
    """Where pods may run beyond what Inferator decides, in the pod spec's own words."""

    affinity: KubeObject | None = Field(
        default=None,
        description=(
            "Pod affinity/anti-affinity as given; nodeAffinity's required terms are ANDed with the "
            "selected pool's, its preferred terms added."
        ),
    )
    topology_spread_constraints: list[KubeObject] | None = Field(default=None, max_length=16)
    image_pull_secrets: list[LocalObjectRef] | None = Field(
        default=None, max_length=16, description="Secrets (same namespace) the kubelet pulls the image with."
    )
