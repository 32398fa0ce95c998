"""InferenceGateway: render the gateway's objects, and say in status what it exposes.

Gateways are few, so kopf's change handlers suit them (unlike InferenceServices, see
inferenceservice.py). The models a gateway exposes are not rendered anywhere: its pods watch
the services themselves. The operator only reports them in status, from its own watches of
services and of the gateways' Deployments, writing only when something changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from kubernetes.client import ApiException
from pydantic import ValidationError

from inferator.api import API_GROUP, API_VERSION
from inferator.api.common import CONDITION_STATUS
from inferator.api.conditions import set_condition
from inferator.api.inferencegateway import InferenceGatewaySpec, InferenceGatewayStatus
from inferator.controllers import informers, kube
from inferator.controllers.modelcache import validation_message
from inferator.controllers.redaction import scrub
from inferator.controllers.status import changed_fields, now_rfc3339
from inferator.gateway.discovery import requires_own_key, served_model
from inferator.render import inferencegateway as render
from inferator.settings import OperatorSettings

log = logging.getLogger("inferator.gateway.controller")
PLURAL = "inferencegateways"
KIND = "InferenceGateway"


@kopf.index(API_GROUP, API_VERSION, PLURAL)
async def inferator_gateways(body: kopf.Body, **_: Any) -> dict[str, str]:
    """Gateways by namespace: whom a service's change concerns."""
    return {body["metadata"].get("namespace") or "": json.dumps(informers.compact(body))}


@kopf.index("apps", "v1", "deployments", labels={render.GATEWAY_LABEL: kopf.PRESENT})
async def inferator_gateway_deployments(
    body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], str]:
    return {
        (body["metadata"].get("namespace") or "", labels[render.GATEWAY_LABEL]): json.dumps(
            dict(body.get("status") or {})
        )
    }


def selects(spec: Mapping[str, Any], service: Mapping[str, Any]) -> bool:
    wanted = ((spec.get("selector") or {}).get("matchLabels")) or {}
    labels = (service.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")


def httproute_served() -> bool:
    return kube.crd_installed(*HTTPROUTE)


def desired_status(
    gateway: Mapping[str, Any],
    services: Iterable[Mapping[str, Any]],
    deployment_status: Mapping[str, Any] | None,
    route_served: bool = False,
) -> dict[str, Any]:
    """The status a gateway should have: pure, from what the watches hold."""
    meta = gateway["metadata"]
    generation = int(meta.get("generation") or 0)
    current = InferenceGatewayStatus.model_validate(gateway.get("status") or {})
    out: dict[str, Any] = {"observedGeneration": generation}
    now = now_rfc3339()
    try:
        spec = InferenceGatewaySpec.model_validate(gateway.get("spec") or {})
    except ValidationError as exc:
        conditions = set_condition(current.conditions, "Ready", "False", "InvalidSpec", validation_message(exc),
                                   now=now, generation=generation)  # fmt: skip
        return out | {"conditions": [c.to_k8s() for c in conditions]}
    models, skipped = [], []
    for service in services:
        if not selects(gateway.get("spec") or {}, service):
            continue
        name = service["metadata"]["name"]
        if requires_own_key(service):
            skipped.append(name)
            continue
        model = served_model(service)
        if model is None:
            continue  # no profile selected yet: nothing to name
        ready = int((service.get("status") or {}).get("readyReplicas") or 0) > 0
        models.append({"model": model, "service": name, "ready": ready})
    models.sort(key=lambda m: (m["model"], m["service"]))
    dep = deployment_status or {}
    ready_replicas = int(dep.get("readyReplicas") or 0)
    out |= {
        "endpoint": render.endpoint(meta["name"], meta.get("namespace") or "", spec.port),
        "models": models,
        "replicas": int(dep.get("replicas") or 0),
        "readyReplicas": ready_replicas,
    }
    exposing = f"exposes {len(models)} model(s)" + (
        f": {', '.join(m['model'] for m in models)}" if models else ""
    )
    note = (
        f"; not exposed (they require their own API key, which the gateway does not hold): {', '.join(skipped)}"
        if skipped
        else ""
    )
    cond: tuple[CONDITION_STATUS, str, str]
    if ready_replicas >= 1:
        cond = ("True", "Ready", f"{ready_replicas}/{spec.replicas} gateway replicas ready; {exposing}{note}")
    else:
        cond = ("False", "Deploying", f"0/{spec.replicas} gateway replicas ready; {exposing}{note}")
    conditions = set_condition(current.conditions, "Ready", *cond, now=now, generation=generation)
    if spec.http_route is not None:
        parents = ", ".join(
            f"{p.namespace or meta.get('namespace')}/{p.name}"
            + (f"/{p.section_name}" if p.section_name else "")
            for p in spec.http_route.parent_refs
        )
        routed: tuple[CONDITION_STATUS, str, str] = (
            ("True", "HTTPRouteApplied", f"HTTPRoute {render.child_name(meta['name'])} attaches /v1 to {parents}")
            if route_served
            else ("False", "GatewayAPINotInstalled",
                  "spec.httpRoute is set but the cluster serves no gateway.networking.k8s.io/v1 HTTPRoute: "
                  "install the Gateway API CRDs (and an implementation); the gateway's Service works without it")
        )  # fmt: skip
        conditions = set_condition(conditions, "Routed", *routed, now=now, generation=generation)
    out["conditions"] = [c.to_k8s() for c in conditions]
    return out


def _deployment_status(kwargs: Mapping[str, Any], namespace: str, name: str) -> dict[str, Any] | None:
    text = next(iter(list(kwargs["inferator_gateway_deployments"].get((namespace, name), ()))), None)
    return json.loads(text) if text else None


def refresh(gateway: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
    """Write the gateway's status when it differs from what the watches say."""
    meta = gateway["metadata"]
    namespace, name = meta.get("namespace") or "", meta["name"]
    routed = bool((gateway.get("spec") or {}).get("httpRoute")) and httproute_served()
    desired = desired_status(
        gateway,
        informers.View.of(kwargs).services_in(namespace),
        _deployment_status(kwargs, namespace, name),
        route_served=routed,
    )
    changes = changed_fields(dict(gateway.get("status") or {}), desired)
    if changes:
        kube.patch_status(f"{API_GROUP}/{API_VERSION}", KIND, name, namespace, changes)


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def gateway_changed(body: kopf.Body, **kwargs: Any) -> None:
    """Apply every object of the gateway (server-side apply: unchanged ones cost no change)."""
    apply_gateway(dict(body), kwargs)


def apply_gateway(gateway: dict[str, Any], kwargs: Mapping[str, Any]) -> None:
    name, namespace = gateway["metadata"]["name"], gateway["metadata"].get("namespace") or ""
    try:
        spec = InferenceGatewaySpec.model_validate(gateway.get("spec") or {})
    except ValidationError:
        refresh(gateway, kwargs)  # the condition says what is wrong; nothing to render
        return
    inputs = render.GatewayInputs(name=name, namespace=namespace, spec=spec,
                                  image=OperatorSettings.from_env().gateway_image,
                                  httproute_served=spec.http_route is not None and httproute_served(),
                                  servicemonitor_served=kube.crd_installed("monitoring.coreos.com/v1", "ServiceMonitor"))  # fmt: skip
    owner = kube.owner_reference(gateway)
    try:
        for obj in render.render(inputs):
            obj["metadata"]["ownerReferences"] = [owner]
            kube.apply(obj)
    except ApiException as exc:
        message = scrub(f"applying the gateway's objects failed: {exc.status} {exc.reason}: {exc.body}")[
            :2000
        ]
        raise kopf.TemporaryError(message, delay=30) from exc
    refresh(gateway, kwargs)


@kopf.on.event("apps", "v1", "deployments", labels={render.GATEWAY_LABEL: kopf.PRESENT})
def gateway_deployment_changed(
    type: str | None, labels: kopf.Labels, namespace: str | None, **kwargs: Any
) -> None:
    """The gateway's pods came up or went away: Ready follows; a deleted Deployment comes back."""
    if type is None:
        return
    for text in list(kwargs["inferator_gateways"].get(namespace or "", ())):
        gateway = json.loads(text)
        if gateway["metadata"]["name"] != labels[render.GATEWAY_LABEL]:
            continue
        if type == "DELETED":
            apply_gateway(gateway, kwargs)
        else:
            refresh(gateway, kwargs)


HTTPROUTE_CRD = "httproutes.gateway.networking.k8s.io"


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               when=lambda name, **_: name == HTTPROUTE_CRD)  # fmt: skip
def gateway_api_changed(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    """The Gateway API was installed (or removed): gateways that ask for an HTTPRoute get one now."""
    if type is None:
        return  # the initial listing: the gateways' own resume renders them
    conditions = (body.get("status") or {}).get("conditions") or []
    established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
    # Discovery lists a CRD's kind a moment after it is Established: wait for it (a rare event).
    for _ in range(40 if established and type != "DELETED" else 1):
        kube.forget_served_kinds(HTTPROUTE[0])
        if httproute_served():
            break
        time.sleep(0.5)
    log.info("Gateway API HTTPRoute %s: re-applying gateways that ask for a route",
             "served" if httproute_served() else "not served")  # fmt: skip
    for texts in list(kwargs["inferator_gateways"].values()):
        for text in list(texts):
            gateway = json.loads(text)
            if (gateway.get("spec") or {}).get("httpRoute"):
                apply_gateway(gateway, kwargs)


@kopf.on.event(API_GROUP, API_VERSION, "inferenceservices", id="gateway_services")
def gateway_service_changed(type: str | None, namespace: str | None, **kwargs: Any) -> None:
    """A service came, went, was selected or got its first ready replica: gateways report it."""
    if type is None:
        return
    for text in list(kwargs["inferator_gateways"].get(namespace or "", ())):
        refresh(json.loads(text), kwargs)
