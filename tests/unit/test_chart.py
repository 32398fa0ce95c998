"""The Helm chart: lint-clean, schema-checked values, least-privilege RBAC, CRDs generated from the models."""

from __future__ import annotations

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
