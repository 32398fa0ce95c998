"""What a ModelCache renders to: the Job runs as the cache's UID, restricted, with its credentials by reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferator.api import ModelCacheSpec
from inferator.controllers.modelcache import job_outcome
from inferator.render import modelcache as render
from inferator.settings import OperatorSettings

SETTINGS = OperatorSettings()


def spec(**overrides: Any) -> ModelCacheSpec:
    return ModelCacheSpec.model_validate(
        {"source": {"uri": "hf://org/model", "credentialsSecret": {"name": "hf"}}, **overrides}
    )


def test_job_runs_non_root_as_the_cache_owner_with_fsgroup() -> None:
    job = render.render_job("m", "ns", spec(ownership={"runAsUser": 2000, "runAsGroup": 3000, "fsGroup": 4000}),
                            SETTINGS, mode="fetch", generation=1)  # fmt: skip
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 2000, "runAsGroup": 3000, "fsGroup": 4000,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    container = pod["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "initContainers" not in pod
    assert pod["volumes"][1] == {"name": "cache", "persistentVolumeClaim": {"claimName": "m-weights"}}


@pytest.mark.parametrize(
    ("uri", "keys"),
    [("hf://org/model", ["HF_TOKEN"]), ("s3://bucket/m/", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]),
     ("https://mirror/m/", ["HTTP_BEARER_TOKEN"])],
)  # fmt: skip
def test_credentials_are_files_with_only_the_keys_the_source_reads(uri: str, keys: list[str]) -> None:
    """Naming a Secret hands the Job these keys, never the Secret's others, and never as env."""
    s = spec(source={"uri": uri, "credentialsSecret": {"name": "creds"}})
    for mode in ("size", "fetch"):
        pod = render.render_job("m", "ns", s, SETTINGS, mode=mode, generation=1)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert "envFrom" not in container
        assert all("secretKeyRef" not in (e.get("valueFrom") or {}) for e in container["env"])
        volume = next(v for v in pod["volumes"] if v["name"] == "credentials")
        assert volume["secret"]["secretName"] == "creds"
        assert [i["key"] for i in volume["secret"]["items"]] == keys
        mount = next(m for m in container["volumeMounts"] if m["name"] == "credentials")
        assert mount["readOnly"] is True
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["INFERATOR_CREDENTIALS_DIR"] == mount["mountPath"]


def test_the_job_reads_credentials_from_the_mounted_files(tmp_path: Path) -> None:
    from inferator.prefetch.config import load_config

    (tmp_path / "HF_TOKEN").write_text("hf_secret_value\n")
    config = load_config(["--source", "hf://o/m", "--dest", str(tmp_path / "d")],
                         {"INFERATOR_CREDENTIALS_DIR": str(tmp_path)})  # fmt: skip
    assert config.credentials == {"HF_TOKEN": "hf_secret_value"}


def test_a_prefetch_image_outside_the_allow_list_is_refused() -> None:
    settings = OperatorSettings.from_env({"INFERATOR_PREFETCH_IMAGES_ALLOWED": "registry.corp/inferator:*"})
    assert settings.prefetch_image_allowed(settings.prefetch_image)
    assert settings.prefetch_image_allowed("registry.corp/inferator:1.2")
    assert not settings.prefetch_image_allowed("docker.io/attacker/exfiltrate:latest")
    assert not OperatorSettings().prefetch_image_allowed("registry.corp/inferator:1.2")


def test_fix_ownership_is_opt_in_and_runs_chown_as_root() -> None:
    job = render.render_job(
        "m", "ns", spec(ownership={"fixOwnership": True}), SETTINGS, mode="fetch", generation=1
    )
    init = job["spec"]["template"]["spec"]["initContainers"][0]
    assert init["securityContext"]["runAsUser"] == 0
    assert "chown -R 1000:1000 /cache" in init["command"][-1]


def test_sizing_job_mounts_no_volume() -> None:
    job = render.render_job("m", "ns", spec(), SETTINGS, mode="size", generation=1)
    assert job["metadata"]["name"].startswith("m-size-")
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["tmp", "credentials"]


def test_only_content_changes_change_the_job() -> None:
    base = spec()
    assert render.names("m", base) == render.names("m", spec(prefetch={"parallelDownloads": 2}))
    assert (
        render.names("m", base).fetch_job
        != render.names("m", spec(source={"uri": "hf://org/model@v2"})).fetch_job
    )


def test_job_names_fit_the_job_name_label() -> None:
    names = render.names("x" * 253, spec())
    assert max(len(names.fetch_job), len(names.size_job)) <= 63


def test_long_names_sharing_a_prefix_get_different_children_and_valid_labels() -> None:
    """Two 63-character caches alike in their first 60: no shared PVC, account, Role or label."""
    a, b = "llama-3-1-70b-instruct-" + "a" * 37 + "one", "llama-3-1-70b-instruct-" + "a" * 37 + "two"
    assert len(a) == len(b) == 63
    first, second = render.names(a, spec()), render.names(b, spec())
    assert first.pvc != second.pvc
    assert first.service_account != second.service_account
    assert first.fetch_job != second.fetch_job and len(first.fetch_job) <= 63
    long_a, long_b = "m" * 100 + "-a", "m" * 100 + "-b"
    label_a = render.labels(long_a)[render.CACHE_LABEL]
    label_b = render.labels(long_b)[render.CACHE_LABEL]
    assert label_a != label_b and len(label_a) <= 63 and len(label_b) <= 63
    assert render.labels(a)[render.CACHE_LABEL] == a  # a name that fits is kept as it is
    for obj in render.render_rbac(long_a, "ns", spec()):
        assert (
            obj["metadata"]["name"]
            != next(o for o in render.render_rbac(long_b, "ns", spec()) if o["kind"] == obj["kind"])[
                "metadata"
            ]["name"]
        )
        assert all(len(v) <= 63 for v in obj["metadata"]["labels"].values())


@pytest.mark.parametrize(
    ("size", "expected_gib"), [(0, 1), (5 * 2**30, 6), (5 * 2**30 + 1, 7), (100 * 2**30, 110)]
)
def test_pvc_is_sized_from_the_listing_with_headroom(size: int, expected_gib: int) -> None:
    assert render.pvc_size_bytes(size, SETTINGS) == expected_gib * 2**30


def test_rbac_limits_the_job_to_its_own_cache() -> None:
    role = next(o for o in render.render_rbac("m", "ns", spec()) if o["kind"] == "Role")
    assert all(rule["resourceNames"] == ["m"] for rule in role["rules"])
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "patch"}


def _pod(message: str, code: int) -> dict[str, Any]:
    return {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"containerStatuses": [{"name": "prefetch", "state": {"terminated": {"exitCode": code, "message": message}}}]}}  # fmt: skip


def test_failed_job_reports_its_pods_termination_message() -> None:
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    assert job_outcome(job, [_pod("sha256 mismatch for model-00001.safetensors", 2)]) == (
        "failed", "sha256 mismatch for model-00001.safetensors")  # fmt: skip
    assert job_outcome({"status": {"succeeded": 1}}, []) == ("succeeded", "")
    assert job_outcome({"status": {"active": 1}}, []) == ("running", "")
    assert job_outcome(None, []) == ("missing", "")


def test_platform_fields_reach_the_prefetch_pod() -> None:
    placement = {
        "imagePullSecrets": [{"name": "registry"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "node-role/storage", "operator": "Exists"}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
    }  # fmt: skip
    pod = render.render_job("m", "ns", spec(prefetch=placement), SETTINGS, mode="fetch", generation=1)[
        "spec"
    ]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["affinity"] == placement["affinity"]
    assert pod["topologySpreadConstraints"] == placement["topologySpreadConstraints"]


def test_a_pvc_source_uses_the_claim_in_its_uri_read_only() -> None:
    s = ModelCacheSpec.model_validate(
        {"source": {"uri": "pvc://weights/llama"}, "ownership": {"fixOwnership": True}}
    )
    assert render.names("m", s).pvc == "weights"
    assert (s.in_place, s.model_subpath) == (True, "llama")
    pod = render.render_job("m", "ns", s, SETTINGS, mode="fetch", generation=1)["spec"]["template"]["spec"]
    assert next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "cache")["readOnly"] is True
    claim = next(v for v in pod["volumes"] if v["name"] == "cache")["persistentVolumeClaim"]
    assert claim == {"claimName": "weights", "readOnly": True}
    assert "initContainers" not in pod  # no chown on the user's claim


def test_a_pvc_source_and_another_pvc_name_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be that claim"):
        ModelCacheSpec.model_validate(
            {"source": {"uri": "pvc://weights/llama"}, "storage": {"pvcName": "other"}}
        )
    ok = ModelCacheSpec.model_validate(
        {"source": {"uri": "pvc://weights"}, "storage": {"pvcName": "weights"}}
    )
    assert ok.model_subpath == ""


def test_the_job_is_burstable_by_default_and_takes_the_users_resources() -> None:
    container = render.render_job("m", "ns", spec(), SETTINGS, mode="fetch", generation=1)["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}}
    own = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    container = render.render_job("m", "ns", spec(prefetch={"resources": own}), SETTINGS, mode="fetch",
                                  generation=1)["spec"]["template"]["spec"]["containers"][0]  # fmt: skip
    assert container["resources"] == own
