"""The gateway's configuration file: what the operator renders into a ConfigMap, parsed once.

Key material never appears here: each key names a file (a mounted Secret key) the gateway
reads itself, so the ConfigMap, the operator's logs and the InferenceGateway's status only
ever carry key ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RoutingPolicy = Literal["prefix", "least-loaded"]


class KeyPolicy(BaseModel):
    """One API key: who it is (`id`, what the audit log and metrics name) and what it may do."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=63)
    file: str = Field(description="Path of the file holding the key (a mounted Secret key).")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Served model names; '*' is all.")
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class StaticRoute(BaseModel):
    """A model served at fixed addresses: for the benchmark and tests without a cluster."""

    model_config = ConfigDict(extra="forbid")

    upstreams: list[str] = Field(min_length=1)
    service: str = ""


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "gateway"
    namespace: str = ""
    selector: dict[str, str] = Field(
        default_factory=dict, description="matchLabels over InferenceServices in `namespace`."
    )
    keys: list[KeyPolicy] = Field(default_factory=list)
    hold_seconds: float = Field(default=120.0, ge=0)
    routing: RoutingPolicy = "prefix"
    replicas: int = Field(
        default=1, ge=1, description="Gateway replicas: each enforces its share of a quota."
    )
    static_routes: dict[str, StaticRoute] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)


def load(path: Path) -> GatewayConfig:
    return GatewayConfig.model_validate(json.loads(path.read_text()))
