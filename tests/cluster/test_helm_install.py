"""`helm install` into the local control plane: the chart's operator, with only the chart's RBAC, does a round trip."""

from __future__ import annotations

import contextlib
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferator.dev import toolchain
from inferator.dev.cluster import LocalCluster, free_port
from inferator.dev.runner import RUNNER_LABEL
from tests.cluster.conftest import wait_for
from tests.cluster.test_inferenceservice_controller import LLAMA_8B, ready_cache, service

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "inferator"
# The RBAC authorizer's refusal, as the API server words it in a 403's message.
DENIED = re.compile(r'User "system:serviceaccount:[^"]+" cannot [a-z]+ resource')


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition text as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(toolchain.binary("helm")), f"--kubeconfig={cluster.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {result.stderr}")
    return result


@pytest.fixture
def release(cluster: LocalCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The chart installed into its own namespace; the operator pod really runs on the runner node."""
    with installed(cluster, tmp_path) as info:
        yield info


@contextlib.contextmanager
def installed(cluster: LocalCluster, tmp_path: Path, **extra: Any) -> Iterator[dict[str, Any]]:
    name = f"inf-{uuid.uuid4().hex[:6]}"
    namespace = f"{name}-system"
    cluster.create_namespace(namespace)
    metrics_port, liveness_port = free_port(), free_port()
    values = {
        "image": {"repository": "local/inferator"},
        "metrics": {"port": metrics_port},
        "livenessPort": liveness_port,
        "nodeSelector": {RUNNER_LABEL: "true"},
        "tolerations": [{"key": RUNNER_LABEL, "operator": "Exists"}],
        **extra,
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    helm(
        cluster,
        "install",
        name,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout=120s",
        "-f",
        str(tmp_path / "values.yaml"),
    )
    try:
        yield {"name": name, "namespace": namespace, "metrics_port": metrics_port}
    finally:
        _uninstall(cluster, name, namespace)


def _uninstall(cluster: LocalCluster, name: str, namespace: str) -> None:
    for log in (cluster.state_dir / "runner" / "pods").glob(f"{namespace}_*/operator.log"):
        print(f"---- {log} (tail) ----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
    helm(cluster, "uninstall", name, "-n", namespace, "--wait", "--timeout=120s", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_chart_operator_round_trip_with_only_its_rbac(
    cluster: LocalCluster, namespace: str, release: dict[str, Any], kubectl_json: Any
) -> None:
    deploy = kubectl_json(f"deploy/{release['name']}-operator", "-n", release["namespace"])
    assert deploy["status"]["readyReplicas"] == 1
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    cluster.apply([service(namespace, "chat", "llama-8b")])
    svc = wait_for(lambda: (o := kubectl_json("infsvc/chat", "-n", namespace)).get("status", {}).get("phase") == "Ready" and o,
                   timeout_s=120, what="InferenceService Ready through the chart's operator")  # fmt: skip
    assert svc["status"]["profile"]
    cache = kubectl_json("mcache/llama-8b", "-n", namespace)
    assert cache["status"]["phase"] == "Ready"
    with urllib.request.urlopen(f"http://127.0.0.1:{release['metrics_port']}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'inferator_reconcile_total{kind="InferenceService",outcome="Ready"}' in metrics
    assert 'inferator_reconcile_total{kind="ModelCache",outcome="Ready"}' in metrics
    values = samples(metrics)
    assert values[("inferator_profile_selections_total", (("outcome", "selected"),))] >= 1
    assert values[("inferator_time_to_ready_seconds_count", (("kind", "InferenceService"),))] >= 1
    assert values[("inferator_time_to_ready_seconds_count", (("kind", "ModelCache"),))] >= 1
    assert values[("inferator_prefetch_bytes_total", ())] >= LLAMA_8B["weightBytes"]
    assert values[("inferator_resources", (("kind", "InferenceService"), ("phase", "Ready")))] >= 1
    assert values[("inferator_reconcile_duration_seconds_count", (("kind", "ModelCache"),))] >= 1
    conditions = {c["type"]: (c["status"], c["reason"]) for c in svc["status"]["conditions"]}
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["ProfileSelected"] == ("True", "ProfileSelected")
    assert conditions["CacheReady"] == ("True", "CacheReady")
    assert kubectl_json("deploy/chat", "-n", namespace)["metadata"]["ownerReferences"][0][
        "blockOwnerDeletion"
    ]
    # RBAC was enough. Denials are told apart from other 403s (an Event posted into a namespace
    # another test is deleting is refused "because it is being terminated"): the authorizer's
    # own words in the log, and no write the audit log records as forbidden for its account.
    pods = kubectl_json("pods", "-n", release["namespace"])["items"]
    log_dir = next(
        (cluster.state_dir / "runner" / "pods").glob(
            f"{release['namespace']}_{pods[0]['metadata']['name']}_*"
        )
    )
    log = (log_dir / "operator.log").read_text()
    assert not DENIED.search(log), log[-3000:]
    account = f"system:serviceaccount:{release['namespace']}:"
    forbidden = [
        e for e in cluster.audit_events(0, "")
        if e.get("user", {}).get("username", "").startswith(account)
        and e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"
    ]  # fmt: skip
    assert not forbidden, [(e["verb"], e["objectRef"]) for e in forbidden]


def test_a_namespaced_install_serves_its_namespace_and_may_write_nowhere_else(
    cluster: LocalCluster, namespace: str, kubectl_json: Any, tmp_path: Path
) -> None:
    with installed(cluster, tmp_path, watch={"allNamespaces": False, "namespaces": [namespace]}) as rel:
        account = f"system:serviceaccount:{rel['namespace']}:{rel['name']}-operator"

        def can(verb: str, resource: str, ns: str | None) -> bool:
            where = ["-n", ns] if ns else []
            out = cluster.kubectl("auth", "can-i", verb, resource, f"--as={account}", *where, check=False)
            return out.stdout.strip() == "yes"

        assert can("create", "deployments.apps", namespace) and can("create", "jobs.batch", namespace)
        assert not can("create", "deployments.apps", "default")
        assert not can("create", "jobs.batch", "kube-system")
        assert not can("create", "roles.rbac.authorization.k8s.io", "default")
        assert can("list", "nodes", None)
        ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
        cluster.apply([service(namespace, "chat", "llama-8b")])
        svc = wait_for(lambda: (o := kubectl_json("infsvc/chat", "-n", namespace)).get("status", {}).get("phase") == "Ready" and o,
                       timeout_s=120, what="InferenceService Ready through a namespaced install")  # fmt: skip
        assert svc["status"]["profile"]
