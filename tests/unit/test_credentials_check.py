"""The scheduled credentials check: `inferator prefetch` in check mode against real servers on
loopback (the Hugging Face-compatible endpoint, moto's S3 enforcing IAM keys), its CronJob, and
the CredentialsValid condition made of its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from inferator.api.modelcache import ModelCacheSpec, ModelCacheStatus
from inferator.controllers.modelcache import credentials_condition
from inferator.render import modelcache as render
from inferator.settings import OperatorSettings
from tests.prefetch_servers import HfRepo, HfServer, Model, free_port, make_model, run_prefetch, wait_for_port

TOKEN = "hf_check_token_value_7373737373"


@pytest.fixture
def model(tmp_path: Path) -> Model:
    return make_model(tmp_path / "repo")


def credentials(run: Any) -> dict[str, Any]:
    patches = [p["credentials"] for p in run.sink.patches if "credentials" in p]
    assert len(patches) == 1, run.sink.patches
    return dict(patches[0])


def test_a_valid_token_is_reported_accepted_after_a_listing_and_nothing_is_downloaded(
    tmp_path: Path, model: Model
) -> None:
    with HfServer({"org/llama": HfRepo(model.root)}, token=TOKEN) as hub:
        run = run_prefetch("hf://org/llama", tmp_path / "cache", mode="check", endpoint=hub.url,
                           credentials={"HF_TOKEN": TOKEN})  # fmt: skip
        requests = list(hub.requests)
    assert run.code == 0, run.termination
    report = credentials(run)
    assert report["valid"] is True and report["checkedAt"].endswith("Z")
    assert "credentials accepted" in report["message"]
    assert requests and not [r for r in requests if r.path.startswith("/cdn/")]
    assert not (tmp_path / "cache").exists()
    assert [p for p in run.sink.patches if set(p) != {"credentials"}] == []  # only its own status key


def test_a_revoked_token_is_reported_rejected_without_the_token(tmp_path: Path, model: Model) -> None:
    with HfServer({"org/llama": HfRepo(model.root)}, token=TOKEN) as hub:
        assert run_prefetch("hf://org/llama", tmp_path / "c1", mode="check", endpoint=hub.url,
                            credentials={"HF_TOKEN": TOKEN}).code == 0  # fmt: skip
        hub.token = "hf_rotated_token_value_8484848484"  # revoked at the source
        run = run_prefetch("hf://org/llama", tmp_path / "c2", mode="check", endpoint=hub.url,
                           credentials={"HF_TOKEN": TOKEN})  # fmt: skip
    assert run.code == 1
    report = credentials(run)
    assert report["valid"] is False and "credentials were rejected" in report["message"]
    assert "HF_TOKEN" in report["message"]
    assert TOKEN not in json.dumps(run.sink.patches) + run.termination


def test_an_unreachable_source_says_nothing_about_the_credentials(tmp_path: Path) -> None:
    run = run_prefetch("hf://org/llama", tmp_path / "cache", mode="check", endpoint=f"http://127.0.0.1:{free_port()}",
                       credentials={"HF_TOKEN": TOKEN}, max_attempts=1)  # fmt: skip
    assert run.code == 1
    report = credentials(run)
    assert report["valid"] is None and report["message"].startswith("could not check the credentials")


@pytest.fixture
def moto_with_iam(tmp_path: Path) -> Iterator[str]:
    """moto's server enforcing IAM keys after its first three requests (those create the user, its
    key and its policy). A separate process: the setting is global in moto."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_s3_keys_accepted_then_deleted_at_the_source(
    tmp_path: Path, moto_with_iam: str, model: Model
) -> None:
    import boto3

    def client(service: str, key_id: str, secret: str) -> Any:
        return boto3.client(service, endpoint_url=moto_with_iam, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)  # fmt: skip

    iam = client("iam", "AKIABOOTSTRAP0000000", "bootstrap")
    iam.create_user(UserName="puller")
    key = iam.create_access_key(UserName="puller")["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:DeleteAccessKey"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="puller", PolicyName="models", PolicyDocument=json.dumps(policy))
    keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    s3 = client("s3", keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="weights")
    for f in model.files:
        s3.put_object(Bucket="weights", Key=f"llama/{f.path}", Body=(model.root / f.path).read_bytes())

    def check(dest: str) -> Any:
        return run_prefetch("s3://weights/llama", tmp_path / dest, mode="check", endpoint=moto_with_iam,
                            region="us-east-1", credentials=keys, max_attempts=1)  # fmt: skip

    accepted = check("c1")
    assert accepted.code == 0 and credentials(accepted)["valid"] is True, accepted.termination
    client("iam", keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]).delete_access_key(
        UserName="puller", AccessKeyId=keys["AWS_ACCESS_KEY_ID"]
    )
    rejected = check("c2")
    assert rejected.code == 1
    report = credentials(rejected)
    assert report["valid"] is False and "credentials were rejected" in report["message"]
    assert keys["AWS_SECRET_ACCESS_KEY"] not in json.dumps(rejected.sink.patches) + rejected.termination


# -- the CronJob and the condition -------------------------------------------------------------


def spec(**source: Any) -> ModelCacheSpec:
    check = source.pop("credentialsCheck", None)
    body: dict[str, Any] = {
        "source": {"uri": "hf://org/llama", "credentialsSecret": {"name": "hf"}, **source}
    }
    if check is not None:
        body["credentialsCheck"] = check
    return ModelCacheSpec.model_validate(body)


def test_the_check_runs_the_prefetch_pod_in_check_mode_on_a_schedule_without_the_cache_volume() -> None:
    cron = render.render_credentials_check("llama", "team-a", spec(), OperatorSettings(), generation=1)
    assert cron["kind"] == "CronJob" and len(cron["metadata"]["name"]) <= 52
    assert cron["spec"]["schedule"] == "17 */6 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]
    # Not a download Job: the cache's stale-Job cleanup lists Jobs by the cache label.
    assert (
        render.CACHE_LABEL not in job["metadata"]["labels"]
        and render.CHECK_LABEL in job["metadata"]["labels"]
    )
    pod = job["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "credentials"}
    secret = next(v for v in pod["volumes"] if v["name"] == "credentials")["secret"]
    assert secret["items"] == [{"key": "HF_TOKEN", "path": "HF_TOKEN"}]  # only the key the source reads
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["INFERATOR_MODE"] == "check" and "HF_TOKEN" not in env
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_only_a_remote_source_with_credentials_is_checked() -> None:
    assert render.wants_credentials_check(spec())
    assert not render.wants_credentials_check(
        ModelCacheSpec.model_validate({"source": {"uri": "hf://org/llama"}})
    )
    assert not render.wants_credentials_check(spec(credentialsCheck={"enabled": False}))
    assert not render.wants_credentials_check(
        ModelCacheSpec.model_validate(
            {"source": {"uri": "pvc://claim/llama", "credentialsSecret": {"name": "x"}}}
        )
    )
    with pytest.raises(ValidationError):
        spec(credentialsCheck={"schedule": "every day"})
    assert spec(credentialsCheck={"schedule": "@hourly"}).credentials_check.schedule == "@hourly"


def test_credentials_valid_follows_the_last_report() -> None:
    def status(credentials: dict[str, Any] | None) -> ModelCacheStatus:
        return ModelCacheStatus.model_validate({"credentials": credentials} if credentials else {})

    assert credentials_condition(spec(), status(None))[:2] == ("Unknown", "NotChecked")  # type: ignore[index]
    accepted = credentials_condition(
        spec(), status({"valid": True, "checkedAt": "2026-12-01T00:00:00Z", "message": "ok"})
    )
    assert accepted == ("True", "CredentialsAccepted", "checked 2026-12-01T00:00:00Z: ok")
    rejected = credentials_condition(
        spec(), status({"valid": False, "checkedAt": "t", "message": "rejected"})
    )
    assert rejected is not None and rejected[:2] == ("False", "CredentialsRejected")
    unknown = credentials_condition(spec(), status({"valid": None, "checkedAt": "t", "message": "timeout"}))
    assert unknown is not None and unknown[:2] == ("Unknown", "SourceUnreachable")
    assert credentials_condition(spec(credentialsCheck={"enabled": False}), status(None)) is None
