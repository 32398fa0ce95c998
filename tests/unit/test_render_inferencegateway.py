"""An InferenceGateway's rendered objects and its status, as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from inferator.api.inferencegateway import InferenceGatewaySpec
from inferator.controllers.inferencegateway import desired_status, selects
from inferator.gateway.config import GatewayConfig
from inferator.render import inferencegateway as render

SPEC = {
    "selector": {"matchLabels": {"team": "a"}},
    "keys": [
        {"id": "app", "secretRef": {"name": "app-key"}, "models": ["chat"], "tokensPerMinute": 1000},
        {"id": "batch", "secretRef": {"name": "shared", "key": "batch"}, "tokensPerDay": 10_000},
        {"id": "ops", "secretRef": {"name": "shared", "key": "ops"}},
    ],
}


def objects(spec: dict[str, Any] = SPEC) -> dict[str, dict[str, Any]]:
    inputs = render.GatewayInputs(
        "gw", "ns", InferenceGatewaySpec.model_validate(spec), "registry/inferator:1"
    )
    return {o["kind"]: o for o in render.render(inputs)}


def test_the_config_holds_policy_and_mount_paths_never_a_key() -> None:
    rendered = objects()
    config = GatewayConfig.model_validate(json.loads(rendered["ConfigMap"]["data"]["config.json"]))
    assert config.selector == {"team": "a"} and config.namespace == "ns" and config.hold_seconds == 120
    by_id = {k.id: k for k in config.keys}
    assert by_id["app"].models == ["chat"] and by_id["app"].tokens_per_minute == 1000
    assert by_id["ops"].models == ["*"] and by_id["batch"].tokens_per_day == 10_000
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["secret"]["secretName"]: v["name"] for v in pod["volumes"] if "secret" in v}
    assert set(secrets) == {"app-key", "shared"}  # one volume per Secret, however many keys
    assert by_id["batch"].file == f"{mounts[secrets['shared']]}/batch"
    assert by_id["app"].file == f"{mounts[secrets['app-key']]}/api-key"


def test_the_pod_is_restricted_and_reads_only_what_it_needs() -> None:
    rendered = objects()
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert container["command"][:2] == ["inferator", "gateway"]
    assert all(m["readOnly"] for m in container["volumeMounts"])
    rules = rendered["Role"]["rules"]
    assert {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in rules} == {
        ("inferator.dev", "inferenceservices"): ["get", "list", "watch"],
        ("", "pods"): ["get", "list", "watch"],
        ("apps", "deployments/scale"): ["get", "patch"],
        ("inferator.dev", "inferenceservices/scale"): ["get", "patch"],
    }
    assert rendered["Service"]["spec"]["selector"] == {render.GATEWAY_LABEL: "gw"}


def test_a_policy_change_rolls_the_pods_and_an_unchanged_spec_renders_the_same() -> None:
    def stamp(spec: dict[str, Any]) -> str:
        annotations = objects(spec)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["inferator.dev/gateway-config"])

    changed = {**SPEC, "keys": [{**SPEC["keys"][0], "tokensPerMinute": 5}, *SPEC["keys"][1:]]}  # type: ignore[index]
    assert stamp(SPEC) == stamp(dict(SPEC)) != stamp(changed)


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"keys": []}, "at least 1"),
        ({"keys": [{"id": "Bad_Id", "secretRef": {"name": "s"}}]}, "pattern"),
        (
            {"keys": [{"id": "a", "secretRef": {"name": "s"}}, {"id": "a", "secretRef": {"name": "t"}}]},
            "unique",
        ),
    ],
)
def test_a_gateway_without_keys_or_with_ambiguous_ones_is_refused(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        InferenceGatewaySpec.model_validate(spec)


def _service(
    name: str, model: str | None, ready: int, labels: dict[str, str], **serving: Any
) -> dict[str, Any]:
    status: dict[str, Any] = {"readyReplicas": ready}
    if model:
        status["servedModelName"] = model
    return {"metadata": {"name": name, "labels": labels}, "spec": {"serving": serving}, "status": status}


def test_status_lists_the_selected_models_and_readiness() -> None:
    gateway = {"metadata": {"name": "gw", "namespace": "ns", "generation": 2}, "spec": SPEC, "status": {}}
    services = [
        _service("chat", "org/chat-8b", 1, {"team": "a"}),
        _service("embed", "org/embed", 0, {"team": "a"}),
        _service("other", "org/other", 1, {"team": "b"}),
        _service("pending", None, 0, {"team": "a"}),
        _service("locked", "org/locked", 1, {"team": "a"}, apiKeySecret={"name": "k"}),
    ]
    status = desired_status(gateway, services, {"replicas": 1, "readyReplicas": 1})
    assert status["models"] == [
        {"model": "org/chat-8b", "service": "chat", "ready": True},
        {"model": "org/embed", "service": "embed", "ready": False},
    ]
    assert status["endpoint"] == "http://gw-gateway.ns.svc:8080/v1"
    ready = status["conditions"][0]
    assert (
        ready["status"] == "True"
        and "exposes 2 model(s)" in ready["message"]
        and "locked" in ready["message"]
    )
    again = desired_status({**gateway, "status": status}, services, {"replicas": 1, "readyReplicas": 1})
    assert again == status  # nothing changed: nothing to write
    down = desired_status({**gateway, "status": status}, services, None)
    assert down["conditions"][0]["status"] == "False" and down["conditions"][0]["reason"] == "Deploying"
    assert selects({}, services[2])  # no selector: every service in the namespace


ROUTE = {
    "parentRefs": [{"name": "shared", "namespace": "infra", "sectionName": "https"}],
    "hostnames": ["llm.corp"],
}


def test_an_httproute_sends_v1_to_the_gateway_service_only_where_the_gateway_api_is_served() -> None:
    spec = InferenceGatewaySpec.model_validate({**SPEC, "httpRoute": ROUTE})
    served = render.render(render.GatewayInputs("gw", "ns", spec, "img", httproute_served=True))
    route = next(o for o in served if o["kind"] == "HTTPRoute")
    assert route["spec"]["parentRefs"] == ROUTE["parentRefs"] and route["spec"]["hostnames"] == ["llm.corp"]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["backendRefs"] == [{"name": "gw-gateway", "port": 8080}]
    absent = render.render(render.GatewayInputs("gw", "ns", spec, "img", httproute_served=False))
    assert "HTTPRoute" not in {o["kind"] for o in absent}
    gateway = {
        "metadata": {"name": "gw", "namespace": "ns", "generation": 1},
        "spec": {**SPEC, "httpRoute": ROUTE},
    }
    missing = {c["type"]: c for c in desired_status(gateway, [], None, route_served=False)["conditions"]}
    assert missing["Routed"]["reason"] == "GatewayAPINotInstalled"
    routed = {c["type"]: c for c in desired_status(gateway, [], None, route_served=True)["conditions"]}
    assert routed["Routed"]["status"] == "True" and "infra/shared/https" in routed["Routed"]["message"]


def test_a_servicemonitor_scrapes_the_gateway_where_the_prometheus_operator_is_installed() -> None:
    spec = InferenceGatewaySpec.model_validate(SPEC)
    kinds = {
        o["kind"]: o
        for o in render.render(render.GatewayInputs("gw", "ns", spec, "img", servicemonitor_served=True))
    }
    monitor = kinds["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"] == kinds["Service"]["spec"]["selector"]
    assert monitor["endpoints"][0]["port"] == kinds["Service"]["spec"]["ports"][0]["name"]
    assert "ServiceMonitor" not in {
        o["kind"] for o in render.render(render.GatewayInputs("gw", "ns", spec, "img"))
    }
