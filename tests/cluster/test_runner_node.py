"""The runner node runs pods for real: volumes, identity, probes, exit codes, termination messages."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.dev.cluster import LocalCluster
from inferator.dev.runner import RUNNER_LABEL, RUNNER_TAINT
from tests.cluster.conftest import wait_for

pytestmark = pytest.mark.cluster

RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def runner_pod_spec(command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "nodeSelector": {RUNNER_LABEL: "true"},
        "tolerations": [{"key": RUNNER_TAINT["key"], "operator": "Exists"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": False,
        "containers": [{"name": "main", "image": "local", "command": command, "securityContext": RESTRICTED, **extra}],
    }  # fmt: skip


def test_job_on_the_runner_writes_its_pvc_as_its_uid_and_reports_exit(
    cluster: LocalCluster, namespace: str, kubectl_json: Any
) -> None:
    spec = runner_pod_spec(["sh", "-c", "id -u > /data/uid && echo $GREETING > /data/greeting && echo done > /dev/termination-log"],
                           env=[{"name": "GREETING", "value": "hello"}],
                           volumeMounts=[{"name": "data", "mountPath": "/data"}])  # fmt: skip
    spec["restartPolicy"] = "Never"
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    cluster.apply([
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "write", "namespace": namespace},
         "spec": {"backoffLimit": 0, "template": {"spec": spec}}},
    ])  # fmt: skip
    job = wait_for(lambda: (j := kubectl_json("job/write", "-n", namespace)).get("status", {}).get("succeeded") and j,
                   timeout_s=90, what="Job succeeded")  # fmt: skip
    assert job["status"]["succeeded"] == 1
    pods = kubectl_json("pods", "-n", namespace, "-l", "job-name=write")["items"]
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["message"].strip() == "done"
    pv = kubectl_json("pvc/data", "-n", namespace)["spec"]["volumeName"]
    volume = cluster.state_dir / "runner" / "volumes" / pv
    assert (volume / "uid").read_text().strip() == "1000"
    assert (volume / "greeting").read_text().strip() == "hello"
    assert (volume / "uid").stat().st_uid == 1000


def test_failing_container_fails_the_pod_with_its_termination_message(
    cluster: LocalCluster, namespace: str, kubectl_json: Any
) -> None:
    spec = runner_pod_spec(
        ["sh", "-c", "echo 'cannot write /cache as uid 1000' > /dev/termination-log; exit 3"]
    )
    spec["restartPolicy"] = "Never"
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "fails", "namespace": namespace},
                "spec": spec,
            }
        ]
    )
    pod = wait_for(lambda: (p := kubectl_json("pod/fails", "-n", namespace))["status"].get("phase") == "Failed" and p,
                   timeout_s=60, what="pod Failed")  # fmt: skip
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert "cannot write /cache as uid 1000" in terminated["message"]


def test_deployment_pod_becomes_ready_through_its_readiness_probe(
    cluster: LocalCluster, namespace: str, kubectl_json: Any
) -> None:
    import sys

    port = 18765
    spec = runner_pod_spec([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           readinessProbe={"httpGet": {"path": "/", "port": port}, "periodSeconds": 1})  # fmt: skip
    cluster.apply([{
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}},
    }])  # fmt: skip
    wait_for(lambda: kubectl_json("deploy/web", "-n", namespace).get("status", {}).get("readyReplicas") == 1,
             timeout_s=60, what="Deployment ready")  # fmt: skip
    cluster.kubectl("delete", "deploy/web", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not kubectl_json("pods", "-n", namespace, "-l", "app=web")["items"],
        timeout_s=60,
        what="pods gone",
    )
