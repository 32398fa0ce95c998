"""ModelCache end to end: the operator's Job runs the real `inferator prefetch` on the runner node,
downloading from a real server on loopback, and reports through the cache's own Role."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferator.api.cache_manifest import MANIFEST_PATH
from inferator.dev.cluster import LocalCluster
from inferator.dev.demo import ON_RUNNER
from inferator.dev.runner import TEST_VOLUME_ANNOTATION
from tests.cluster.conftest import OperatorProcess, served_root, wait_for
from tests.prefetch_servers import (
    MIB,
    MOTO_CREDENTIALS,
    HfRepo,
    HfServer,
    Model,
    make_model,
    moto_s3,
    nginx_server,
    upload_tree,
    write_sha256sums,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    root = served_root(tmp_path_factory, "model")
    return make_model(root / "tiny", shard_bytes=(6 * MIB, 5 * MIB, 4 * MIB))


def cache(namespace: str, source: dict[str, Any], name: str = "m", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "inferator.dev/v1alpha1", "kind": "ModelCache",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": source, "prefetch": {**ON_RUNNER, "stallTimeoutSeconds": 10}, **spec}}  # fmt: skip


def settled(kubectl_json: Any, namespace: str, name: str = "m", timeout_s: float = 180) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl_json(f"mcache/{name}", "-n", namespace)
        st = obj.get("status", {})
        done = (
            st.get("phase") in ("Ready", "Failed")
            and st.get("observedGeneration") == obj["metadata"]["generation"]
        )
        return obj if done else None

    result: dict[str, Any] = wait_for(check, timeout_s=timeout_s, what=f"ModelCache {name} settled")
    return result


def volume_dir(cluster: LocalCluster, kubectl_json: Any, namespace: str, claim: str) -> Path:
    pv = kubectl_json(f"pvc/{claim}", "-n", namespace)["spec"]["volumeName"]
    return cluster.state_dir / "runner" / "volumes" / pv


def assert_ready_with_facts(obj: dict[str, Any], model: Model) -> None:
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (obj["status"]["phase"], ready["status"], ready["reason"]) == ("Ready", "True", "Prefetched"), (
        ready
    )
    facts = obj["status"]["model"]
    assert (facts["architecture"], facts["numLayers"], facts["hiddenSize"]) == ("LlamaForCausalLM", 2, 256)
    assert facts["weightBytes"] > 0 and facts["parameterCount"] > 0
    progress = obj["status"]["progress"]
    assert progress["bytesDone"] == progress["bytesTotal"] == obj["status"]["sizeBytes"]
    assert progress["filesDone"] == progress["filesTotal"] == len(model.files)


def assert_files_match(directory: Path, model: Model, uid: int = 1000) -> None:
    for f in model.files:
        path = directory / f.path
        assert path.stat().st_size == f.size, f.path
        assert path.stat().st_uid == uid, f"{f.path} owned by {path.stat().st_uid}"
    manifest = json.loads((directory / MANIFEST_PATH).read_text())
    assert sorted(e["path"] for e in manifest["files"]) == sorted(f.path for f in model.files)


@pytest.fixture
def nginx(model: Model) -> Iterator[Any]:
    write_sha256sums(model)
    try:
        with nginx_server(model.root.parent) as server:
            yield server
    finally:
        (model.root / "SHA256SUMS").unlink(missing_ok=True)


def test_https_source_sized_from_its_listing_downloads_verifies_and_reports_facts(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    model: Model,
    nginx: Any,
) -> None:
    cluster.apply([cache(namespace, {"uri": f"{nginx.url}/tiny/"})])
    obj = settled(kubectl_json, namespace)
    assert_ready_with_facts(obj, model)
    # no size in the spec: a sizing Job listed the source first, the claim is sized from it
    claim = kubectl_json(f"pvc/{obj['status']['pvcName']}", "-n", namespace)
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"  # 15 MiB + the 1 GiB minimum headroom
    assert_files_match(volume_dir(cluster, kubectl_json, namespace, obj["status"]["pvcName"]), model)
    # each file fetched once (sizing only lists; SHA256SUMS is read, never stored)
    for f in model.weight_files:
        assert len([r for r in nginx.gets(f"/tiny/{f.path}") if r[2] in (200, 206)]) == 1, f.path


def test_s3_source_with_credentials_from_a_secret(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, model: Model
) -> None:
    with moto_s3() as endpoint:
        upload_tree(endpoint, "weights", "models/tiny", model)
        cluster.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": namespace},
                        "stringData": {**MOTO_CREDENTIALS, "DATABASE_PASSWORD": "not-for-the-job"}},
                       cache(namespace, {"uri": "s3://weights/models/tiny", "endpoint": endpoint, "region": "us-east-1",
                                         "credentialsSecret": {"name": "s3"}}, storage={"size": "1Gi"})])  # fmt: skip
        obj = settled(kubectl_json, namespace)
    assert_ready_with_facts(obj, model)
    assert_files_match(volume_dir(cluster, kubectl_json, namespace, "m-weights"), model)
    text = json.dumps(obj) + operator.log()
    assert all(secret not in text for secret in MOTO_CREDENTIALS.values())
    # The Job got the two keys an S3 source reads, as files; not the Secret's other key, not env.
    mounted = {
        p.name
        for p in (cluster.state_dir / "runner" / "pods").glob(f"{namespace}_m-fetch-*/volumes/credentials/*")
    }
    assert mounted == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, mounted
    job = kubectl_json("jobs", "-n", namespace)["items"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in job


def test_hf_source_pins_the_commit_a_branch_pointed_to(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, model: Model
) -> None:
    repo = HfRepo(model.root, refs={"main": "c0ffee" * 6 + "c0ff"})
    with HfServer({"org/tiny": repo}) as hub:
        cluster.apply(
            [cache(namespace, {"uri": "hf://org/tiny@main", "endpoint": hub.url}, storage={"size": "1Gi"})]
        )
        obj = settled(kubectl_json, namespace)
    assert_ready_with_facts(obj, model)
    assert obj["status"]["resolvedRevision"] == "c0ffee" * 6 + "c0ff"


def test_wrong_checksum_fails_naming_the_file_and_marks_nothing_complete(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, model: Model
) -> None:
    shard = model.weight_files[-1].path
    repo = HfRepo(model.root, lfs_sha256_override={shard: "0" * 64})
    with HfServer({"org/tiny": repo}) as hub:
        cluster.apply(
            [cache(namespace, {"uri": "hf://org/tiny", "endpoint": hub.url}, storage={"size": "1Gi"})]
        )
        obj = settled(kubectl_json, namespace)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (obj["status"]["phase"], ready["reason"]) == ("Failed", "PrefetchFailed")
    assert shard in ready["message"] and "sha256" in ready["message"], ready["message"]
    directory = volume_dir(cluster, kubectl_json, namespace, "m-weights")
    assert not (directory / MANIFEST_PATH).exists()
    assert not (directory / shard).exists(), "a corrupt file must never get its final name"


def test_cache_owned_by_another_uid_reports_the_uid_and_path(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    model: Model,
    nginx: Any,
    tmp_path: Path,
) -> None:
    # An NFS-like volume with root squash: fsGroup is ignored, the directory belongs to uid 2000.
    export = tmp_path / "export"
    export.mkdir()
    os.chown(export, 2000, 2000)
    os.chmod(export, 0o755)
    os.chmod(tmp_path, 0o755)
    pv = f"{namespace}-nfs"
    cluster.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume",
         "metadata": {"name": pv, "annotations": {TEST_VOLUME_ANNOTATION: "root-squash"}},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "hostPath": {"path": str(export)}, "claimRef": {"namespace": namespace, "name": "nfs"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "nfs", "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
        cache(namespace, {"uri": f"{nginx.url}/tiny/"}, storage={"pvcName": "nfs"}),
    ])  # fmt: skip
    try:
        obj = settled(kubectl_json, namespace)
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert obj["status"]["phase"] == "Failed"
        assert "uid 1000" in ready["message"] and str(export) not in ready["message"], ready["message"]
        assert "/cache" in ready["message"], ready["message"]
    finally:
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_download_killed_half_way_resumes_without_refetching_finished_files(
    cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    kubectl_json: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = served_root(tmp_path_factory, "slow")
    # One small shard that finishes at once, two that take ~16 s each at 1 MiB/s per connection.
    model = make_model(root / "tiny", shard_bytes=(MIB, 16 * MIB, 16 * MIB))
    write_sha256sums(model)
    small, *large = model.weight_files
    with nginx_server(root, limit_rate="1m") as server:
        cluster.apply([cache(namespace, {"uri": f"{server.url}/tiny/"}, storage={"size": "1Gi"})])
        claim = wait_for(
            lambda: (
                kubectl_json("pvc/m-weights", "-n", namespace, "--ignore-not-found")
                .get("spec", {})
                .get("volumeName")
            ),
            what="the cache's claim bound",
        )
        assert claim
        directory = volume_dir(cluster, kubectl_json, namespace, "m-weights")
        parts = directory / ".inferator" / "tmp"

        def half_way() -> bool:
            started = [p for p in parts.glob("*.part") if p.stat().st_size > 0] if parts.is_dir() else []
            return (directory / small.path).exists() and len(started) == len(large)

        wait_for(half_way, timeout_s=120, interval_s=0.1, what="the small shard done, the large ones started")
        done_before_kill = {f.path for f in model.files if (directory / f.path).exists()}
        pods = kubectl_json("pods", "-n", namespace, "-l", "job-name")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        assert len(running) == 1, [p["status"].get("phase") for p in pods]
        pid = int(running[0]["status"]["containerStatuses"][0]["containerID"].removeprefix("runner://"))
        os.killpg(pid, signal.SIGKILL)  # kill -9 the prefetch process, as an OOM kill or a node loss would

        obj = settled(kubectl_json, namespace, timeout_s=240)
        requests = server.requests()
    assert_ready_with_facts(obj, model)
    assert_files_match(directory, model)
    pods = kubectl_json("pods", "-n", namespace, "-l", "job-name")["items"]
    assert len(pods) == 2, "the Job replaced the killed pod"
    assert small.path in done_before_kill
    for path in done_before_kill:
        assert len([r for r in requests if r.method == "GET" and r.path == f"/tiny/{path}"]) == 1, path
    for shard in large:
        gets = [r for r in requests if r.method == "GET" and r.path == f"/tiny/{shard.path}"]
        assert len(gets) == 2, gets  # the cut first transfer, then one ranged resume
        assert (
            gets[1].status == 206
            and gets[1].range.startswith("bytes=")
            and not gets[1].range.startswith("bytes=0-")
        ), gets
        # what was on disk was not fetched again: the two transfers add up to about the file
        assert sum(r.body_bytes for r in gets) < shard.size + 2 * MIB, gets


def test_pvc_source_is_verified_in_place_on_its_own_claim_and_served_from_its_sub_path(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, tmp_path: Path
) -> None:
    """pvc://weights/llama: that claim, that folder; the claim is mounted read-only and left untouched."""
    from tests.cluster.test_inferenceservice_controller import service

    export = tmp_path / "export"
    model = make_model(export / "llama")
    for path in [tmp_path, *export.rglob("*"), export]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = sorted(p.relative_to(export).as_posix() for p in export.rglob("*"))
    pv = f"{namespace}-weights"
    cluster.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "hostPath": {"path": str(export)}, "claimRef": {"namespace": namespace, "name": "weights"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "weights", "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
        cache(namespace, {"uri": "pvc://weights/llama"}),
    ])  # fmt: skip
    try:
        obj = settled(kubectl_json, namespace)
        assert_ready_with_facts(obj, model)
        assert obj["status"]["pvcName"] == "weights"  # the claim named in the URI, no pvcName needed
        assert (
            sorted(p.relative_to(export).as_posix() for p in export.rglob("*")) == before
        )  # nothing written
        job = kubectl_json("jobs", "-n", namespace)["items"][0]["spec"]["template"]["spec"]
        assert (
            next(m for m in job["containers"][0]["volumeMounts"] if m["name"] == "cache")["readOnly"] is True
        )
        assert not kubectl_json("pvc", "-n", namespace)["items"][1:], "no claim of its own was created"
        # Served from the folder, checked in place by the runtime (there is no manifest).
        cluster.apply([service(namespace, "chat", "m")])
        deploy = wait_for(lambda: kubectl_json("deploy/chat", "-n", namespace, "--ignore-not-found") or None,
                          timeout_s=60, what="the serving Deployment")  # fmt: skip
        pod = deploy["spec"]["template"]["spec"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
        assert mount["subPath"] == "llama"
        assert (
            next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"]["claimName"]
            == "weights"
        )
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["INFERATOR_CACHE_CHECK"] == "in-place"
    finally:
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_credentials_are_checked_on_a_schedule_and_a_revoked_token_turns_the_condition_false(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, kubectl_json: Any, model: Model
) -> None:
    token = "hf_scheduled_check_token_5151515151"
    with HfServer({"org/tiny": HfRepo(model.root)}, token=token, auth_failure_status=401) as hub:
        cluster.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": namespace},
                        "stringData": {"HF_TOKEN": token}},
                       cache(namespace, {"uri": "hf://org/tiny", "endpoint": hub.url, "credentialsSecret": {"name": "hf"}},
                             storage={"size": "1Gi"})])  # fmt: skip
        assert_ready_with_facts(settled(kubectl_json, namespace), model)
        cron = kubectl_json("cronjob/m-credentials", "-n", namespace)
        assert cron["spec"]["schedule"] == "17 */6 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert {v["name"] for v in pod["volumes"]} == {"tmp", "credentials"}  # never the cache's volume

        def check_now(job: str, wanted: str) -> dict[str, Any]:
            # What the CronJob does at its next tick, now (kubectl create job --from).
            cluster.kubectl("create", "job", job, "--from=cronjob/m-credentials", "-n", namespace)

            def condition() -> dict[str, Any] | None:
                obj = kubectl_json("mcache/m", "-n", namespace)
                found = next((c for c in obj["status"]["conditions"] if c["type"] == "CredentialsValid"), {})
                return obj if found.get("status") == wanted and job_done(job) else None

            result: dict[str, Any] = wait_for(condition, timeout_s=120, what=f"CredentialsValid {wanted}")
            return result

        def job_done(job: str) -> bool:
            status = kubectl_json(f"job/{job}", "-n", namespace).get("status") or {}
            return bool(status.get("succeeded") or status.get("failed"))

        obj = check_now("check-1", "True")
        assert obj["status"]["credentials"]["valid"] is True
        assert obj["status"]["phase"] == "Ready"
        downloads = [r for r in hub.requests if r.path.startswith("/cdn/")]
        hub.token = "hf_rotated_token_6262626262"  # the Secret's token is revoked at the source
        obj = check_now("check-2", "False")
        assert [r for r in hub.requests if r.path.startswith("/cdn/")] == downloads  # listed, nothing fetched
    rejected = next(c for c in obj["status"]["conditions"] if c["type"] == "CredentialsValid")
    assert rejected["reason"] == "CredentialsRejected" and "credentials were rejected" in rejected["message"]
    assert obj["status"]["phase"] == "Ready"  # the weights are still there; the next revision would fail
    events = kubectl_json("events", "-n", namespace, "--field-selector", "involvedObject.name=m")["items"]
    assert any(e["reason"] == "CredentialsRejected" for e in events)
    text = json.dumps(obj) + json.dumps(events) + operator.log()
    assert token not in text
