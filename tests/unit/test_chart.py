"""The Helm chart: lint-clean, schema-checked values, least-privilege RBAC, CRDs generated from the models."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferator.dev import toolchain

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "inferator"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(toolchain.binary("helm")), *args], capture_output=True, text=True, check=check)


def rendered(*sets: str) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    return [
        d
        for d in yaml.safe_load_all(
            helm("template", "inferator", str(CHART), "-n", "inferator-system", *args).stdout
        )
        if d
    ]


def test_lint_is_clean() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=two", "replicaCount"),
        ("metrics.port=70000", "metrics/port"),
        ("watch.namespaces[0]=Bad_NS", "watch/namespaces/0"),
        ("imagee.tag=x", "additional properties 'imagee' not allowed"),
    ],
)
def test_wrong_values_fail_with_the_schemas_message(value: str, message: str) -> None:
    result = helm("template", "inferator", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_rbac_has_no_wildcards_and_never_touches_secrets() -> None:
    role = next(d for d in rendered() if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert "secrets" not in rule["resources"], "the operator never reads credentials"


def test_operator_runs_restricted_and_with_peering() -> None:
    deploy = next(d for d in rendered("replicaCount=2") if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "--peering=inferator" in container["args"]
    assert deploy["spec"]["replicas"] == 2


def _rules(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in doc["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_a_namespaced_install_grants_writes_only_in_the_watched_namespaces() -> None:
    """With watch.namespaces, no cluster-wide grant can create a Job or a Deployment anywhere."""
    everywhere = rendered()
    docs = rendered("watch.allNamespaces=false", "watch.namespaces={a,b}")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    cluster_wide = {b["roleRef"]["name"] for b in bindings if b["kind"] == "ClusterRoleBinding"}
    granted_everywhere = set().union(*(_rules(roles[n]) for n in cluster_wide))
    assert {r for (_, r, _) in granted_everywhere} == {
        "nodes",
        "customresourcedefinitions",
        "clusterkopfpeerings",
        "storageclasses",
    }
    assert all(v in ("get", "list", "watch", "patch") for (_, _, v) in granted_everywhere)
    per_namespace = [b for b in bindings if b["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in per_namespace) == ["a", "b"]
    namespaced = _rules(roles[per_namespace[0]["roleRef"]["name"]])
    assert ("batch", "jobs", "create") in namespaced and ("apps", "deployments", "create") in namespaced
    # Together they grant what the cluster-wide install grants: nothing lost, nothing added.
    all_role = next(d for d in everywhere if d["kind"] == "ClusterRole")
    assert namespaced | granted_everywhere == _rules(all_role)


def test_namespaced_watch() -> None:
    docs = rendered("watch.allNamespaces=false", "watch.namespaces={a,b}")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=a" in args and "--namespace=b" in args and "--all-namespaces" not in args
    # kopf peers through a KopfPeering in each watched namespace, not the cluster-wide object
    peerings = [
        (d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"].endswith("KopfPeering")
    ]
    assert sorted(peerings) == [("KopfPeering", "a"), ("KopfPeering", "b")]


def test_engine_images_reach_the_operator() -> None:
    deploy = next(d for d in rendered("engineImages.vllm=registry.local/vllm:1") if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["INFERATOR_IMAGE_VLLM"] == "registry.local/vllm:1"


def test_the_grafana_dashboard_ships_in_a_configmap_the_sidecar_loads() -> None:
    dashboard = next(
        d for d in rendered() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["inferator.json"])
    assert shipped == json.loads((CHART / "dashboards" / "inferator.json").read_text())
    assert not [
        d for d in rendered("grafana.dashboard.enabled=false") if d["metadata"]["name"].endswith("-dashboard")
    ]
