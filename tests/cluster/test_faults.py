"""Faults in the local control plane: the operator killed mid-burst, the API server restarted,
a source that keeps failing, a full volume, two operator replicas. Each test asserts the end
state (objects, statuses, files), not only that nothing raised."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferator.api.cache_manifest import MANIFEST_PATH
from inferator.dev.cluster import LocalCluster
from tests.cluster.conftest import OperatorProcess, served_root, wait_for
from tests.cluster.test_inferenceservice_controller import LLAMA_8B, ready_cache, service
from tests.cluster.test_modelcache_e2e import ON_RUNNER, cache, settled, volume_dir
from tests.prefetch_servers import MIB, Fault, FileServer, make_model

pytestmark = pytest.mark.cluster
CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "inferator" / "crds"


def settled_services(kubectl_json: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl_json("infsvc", "-n", namespace)["items"]
    done = []
    for item in items:
        status = item.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if (
            status.get("observedGeneration") == item["metadata"]["generation"]
            and ready.get("status") == "True"
        ):
            done.append(item)
    return done


def assert_one_child_of_each(
    kubectl_json: Any, namespace: str, services: list[dict[str, Any]], *, one_rollout: bool = True
) -> None:
    """Exactly one Deployment, Service and NetworkPolicy per InferenceService, owned by it."""
    uids = {s["metadata"]["name"]: s["metadata"]["uid"] for s in services}
    for kind in ("deployments", "services", "networkpolicies"):
        items = kubectl_json(kind, "-n", namespace, "-l", "inferator.dev/inference-service")["items"]
        names = sorted(i["metadata"]["name"] for i in items)
        assert names == sorted(uids), (kind, names)
        for item in items:
            owners = item["metadata"]["ownerReferences"]
            assert [(o["kind"], o["uid"]) for o in owners] == [
                ("InferenceService", uids[item["metadata"]["name"]])
            ]
    if one_rollout:
        replicasets = kubectl_json("replicasets", "-n", namespace)["items"]
        assert len(replicasets) == len(uids), (
            "one rollout per service: no duplicate or re-rendered Deployment"
        )


def test_operator_killed_mid_burst_converges_without_duplicates(
    cluster: LocalCluster, namespace: str, kubectl_json: Any, tmp_path: Path
) -> None:
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    count = 40
    first = OperatorProcess(cluster, namespace, tmp_path / "first.log")
    second: OperatorProcess | None = None
    try:
        cluster.apply([service(namespace, f"s{i:02d}", "llama-8b", replicas=0) for i in range(count)])
        wait_for(lambda: len(kubectl_json("deployments", "-n", namespace)["items"]) >= 3, timeout_s=90,
                 interval_s=0.1, what="the burst under way")  # fmt: skip
        first.proc.kill()  # kill -9: no cleanup, handlers cut wherever they were
        first.proc.wait()
        done_by_first = len(kubectl_json("deployments", "-n", namespace)["items"])
        second = OperatorProcess(cluster, namespace, tmp_path / "second.log")
        services = wait_for(lambda: (s := settled_services(kubectl_json, namespace)) and len(s) == count and s,
                            timeout_s=240, what=f"all {count} services settled after the restart")  # fmt: skip
        assert_one_child_of_each(kubectl_json, namespace, services)
        assert all(s["status"]["phase"] == "Ready" for s in services)
        assert "Traceback" not in second.log()
        print(f"{done_by_first}/{count} Deployments existed when the first operator was killed")
    finally:
        first.stop()
        if second:
            second.stop()


def test_api_server_restart_the_operator_reconnects_and_converges(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any
) -> None:
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    cluster.apply([service(namespace, "before", "llama-8b", replicas=0)])
    wait_for(lambda: len(settled_services(kubectl_json, namespace)) == 1, timeout_s=90, what="first settled")
    cluster.restart_apiserver()
    # Changes made after the restart reach the same operator process through its new watches.
    cluster.apply([service(namespace, "after", "llama-8b", replicas=0),
                   service(namespace, "before", "llama-8b", replicas=0, serving={"maxModelLen": 4096})])  # fmt: skip
    services = wait_for(
        lambda: (s := settled_services(kubectl_json, namespace)) and len(s) == 2 and s,
        timeout_s=180, what="both services settled after the API server came back",
    )  # fmt: skip
    before = next(s for s in services if s["metadata"]["name"] == "before")
    assert before["metadata"]["generation"] == 2 and before["status"]["observedGeneration"] == 2
    assert operator.proc.poll() is None, "the operator survived the outage"
    assert_one_child_of_each(kubectl_json, namespace, services, one_rollout=False)  # the edit rolls out
    args = kubectl_json("deploy/before", "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "4096" in next(e["value"] for e in args if e["name"] == "INFERATOR_PROFILE"), (
        "the edit was rendered"
    )


def test_a_source_that_keeps_failing_is_retried_with_backoff_then_fails_clearly(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = served_root(tmp_path_factory, "flaky")
    model = make_model(root / "tiny", shard_bytes=(2 * MIB, 2 * MIB))
    shard = model.weight_files[-1].path
    with FileServer(root) as files:
        files.add_faults(f"/tiny/{shard}", *[Fault.error(503)] * 20)
        cluster.apply([cache(namespace, {"uri": f"{files.url}/tiny/"}, storage={"size": "1Gi"},
                             prefetch={**ON_RUNNER, "backoffLimit": 0})])  # fmt: skip
        obj = settled(kubectl_json, namespace, timeout_s=240)
        attempts = files.gets(f"/tiny/{shard}")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (obj["status"]["phase"], ready["reason"]) == ("Failed", "PrefetchFailed")
    assert shard in ready["message"] and "HTTP 503" in ready["message"], ready["message"]
    assert "giving up after 5 attempts" in ready["message"], ready["message"]
    assert [a.status for a in attempts] == [503] * 5, "bounded retries, one pod (backoffLimit 0)"
    directory = volume_dir(cluster, kubectl_json, namespace, "m-weights")
    assert not (directory / MANIFEST_PATH).exists()
    assert not (directory / shard).exists()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        os.chown(path, 1000, 1000)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_volume_fails_clearly_and_marks_nothing_complete(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = served_root(tmp_path_factory, "big")
    model = make_model(root / "tiny", shard_bytes=(6 * MIB, 6 * MIB))  # 12 MiB onto an 8 MiB volume
    os.chmod(tmp_path, 0o755)
    pv = f"{namespace}-small"
    with FileServer(root) as files, small_tmpfs(tmp_path / "small", "8m") as volume:
        cluster.apply([
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
             "spec": {"capacity": {"storage": "8Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                      "hostPath": {"path": str(volume)}, "claimRef": {"namespace": namespace, "name": "small"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "small", "namespace": namespace},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                      "resources": {"requests": {"storage": "8Mi"}}}},
            cache(namespace, {"uri": f"{files.url}/tiny/"}, storage={"pvcName": "small"}),
        ])  # fmt: skip
        try:
            obj = settled(kubectl_json, namespace, timeout_s=240)
            ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
            assert (obj["status"]["phase"], ready["reason"]) == ("Failed", "PrefetchFailed")
            assert "no space left on the cache volume" in ready["message"], ready["message"]
            assert "spec.storage.size" in ready["message"], ready["message"]
            assert not (volume / MANIFEST_PATH).exists(), "nothing marked complete"
            for f in model.weight_files:
                final = volume / f.path
                assert not final.exists() or final.stat().st_size == f.size, (
                    f"{f.path} half-written under its name"
                )
            pods = kubectl_json("pods", "-n", namespace, "-l", "job-name")["items"]
            assert len(pods) == 1, "a full volume fails the Job at once (podFailurePolicy), no retries"
        finally:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            wait_for(lambda: not kubectl_json("pods", "-n", namespace)["items"], timeout_s=60,
                     what="the Job's pod gone before the volume is unmounted")  # fmt: skip
            cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_two_operator_replicas_only_one_acts(
    cluster: LocalCluster, namespace: str, kubectl_json: Any, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-f", str(CHART_CRDS / "kopf.dev_kopfpeerings.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    cluster.apply([{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                    "metadata": {"name": "inferator", "namespace": namespace}}])  # fmt: skip
    ready_cache(cluster, namespace, "llama-8b", LLAMA_8B)
    replicas = [
        OperatorProcess(cluster, namespace, tmp_path / f"op{i}.log", ("--peering=inferator",)) for i in (0, 1)
    ]
    try:
        time.sleep(5)  # a peering round: each sees the other's priority
        cluster.apply([service(namespace, f"s{i}", "llama-8b", replicas=0) for i in range(5)])
        services = wait_for(lambda: (s := settled_services(kubectl_json, namespace)) and len(s) == 5 and s,
                            timeout_s=120, what="services settled by the active replica")  # fmt: skip
        assert_one_child_of_each(kubectl_json, namespace, services)
        logs = [r.log() for r in replicas]
        # The services were created after a peering round: exactly one replica handles them. (The
        # cache existed before both started, so either may have handled it while peering settled.)
        handled = f"InferenceService {namespace}/s0 reconciled"
        acted = [i for i, log in enumerate(logs) if handled in log]
        assert len(acted) == 1, f"exactly one replica reconciles services; acted: {acted}"
        standby = logs[1 - acted[0]]
        assert handled not in standby
        assert "Pausing operations in favour of" in standby or "Resuming operations" not in standby
        assert all(r.proc.poll() is None for r in replicas), "the standby waits, it does not exit"
        peering = kubectl_json("kopfpeering/inferator", "-n", namespace)
        assert len(peering.get("status") or {}) == 2, "both replicas registered as peers"
    finally:
        for r in replicas:
            r.stop()
