"""What an InferenceGateway becomes: its config, RBAC, Deployment, Service and NetworkPolicy.

Pure: the same spec renders the same objects. Which models it exposes is not rendered: the
gateway's pods watch the InferenceServices they select (their RBAC allows exactly that), so a
service coming or going changes no object and restarts no pod.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from inferator.api.inferencegateway import InferenceGatewaySpec
from inferator.gateway.config import GatewayConfig, KeyPolicy
from inferator.render.inferenceservice import GATEWAY_LABEL as GATEWAY_LABEL
from inferator.render.templating import render_manifest, render_manifests

CONFIG_DIR = "/etc/inferator-gateway/config"
CONFIG_PATH = f"{CONFIG_DIR}/config.json"
KEYS_DIR = "/etc/inferator-gateway/keys"
RUN_AS = 65532  # the image's non-root user, as for the operator


@dataclass(frozen=True)
class GatewayInputs:
    name: str
    namespace: str
    spec: InferenceGatewaySpec
    image: str
    httproute_served: bool = False  # the cluster serves gateway.networking.k8s.io/v1 HTTPRoute
    servicemonitor_served: bool = False  # the Prometheus Operator's ServiceMonitor CRD is served


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "inferator-gateway",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "inferator",
        GATEWAY_LABEL: name,
    }


def child_name(name: str) -> str:
    return f"{name}-gateway"


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"http://{child_name(name)}.{namespace}.svc:{port}/v1"


def secret_volume(secret: str) -> str:
    """A volume name for a Secret (DNS label, at most 63): a stable digest, never the key."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def config(inputs: GatewayInputs) -> GatewayConfig:
    spec = inputs.spec
    keys = [
        KeyPolicy(
            id=k.id,
            file=f"{KEYS_DIR}/{secret_volume(k.secret_ref.name)}/{k.secret_ref.key}",
            models=list(k.models),
            tokens_per_minute=k.tokens_per_minute,
            tokens_per_day=k.tokens_per_day,
        )
        for k in spec.keys
    ]
    return GatewayConfig(
        name=inputs.name,
        namespace=inputs.namespace,
        selector=dict(spec.selector.match_labels),
        keys=keys,
        hold_seconds=float(spec.hold_seconds),
        routing=spec.routing,
        replicas=spec.replicas,
    )


def render(inputs: GatewayInputs) -> list[dict[str, Any]]:
    """Every object of the gateway, in apply order (RBAC and config before the pods that use them)."""
    config_json = json.dumps(config(inputs).model_dump(mode="json"), indent=2, sort_keys=True)
    secrets = sorted({k.secret_ref.name for k in inputs.spec.keys})
    context = {
        "name": child_name(inputs.name),
        "owner": inputs.name,
        "namespace": inputs.namespace,
        "labels": labels(inputs.name),
        "selector": {GATEWAY_LABEL: inputs.name},
        "spec": inputs.spec,
        "image": inputs.image,
        "config_json": config_json,
        # The pods restart when the config changes (keys added, quotas changed): kubelet would
        # update the mounted file, but the process reads it once.
        "config_hash": hashlib.sha256(config_json.encode()).hexdigest()[:16],
        "config_path": CONFIG_PATH,
        "config_dir": CONFIG_DIR,
        "keys_dir": KEYS_DIR,
        "secrets": [{"name": s, "volume": secret_volume(s)} for s in secrets],
        "run_as": RUN_AS,
        "resources": inputs.spec.resources.to_k8s() if inputs.spec.resources else None,
        "scheduling": inputs.spec.scheduling.to_k8s() if inputs.spec.scheduling else {},
    }
    objects = [
        *render_manifests("gateway-rbac.yaml.j2", **context),
        render_manifest("gateway-configmap.yaml.j2", **context),
        render_manifest("gateway-deployment.yaml.j2", **context),
        render_manifest("gateway-service.yaml.j2", **context),
    ]
    if inputs.servicemonitor_served:
        objects.append(render_manifest("gateway-servicemonitor.yaml.j2", **context))
    route = inputs.spec.http_route
    if route is not None and inputs.httproute_served:
        objects.append(render_manifest("gateway-httproute.yaml.j2", **context, route=route.to_k8s()))
    return objects
