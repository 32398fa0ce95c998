"""`inferator prefetch` from an HTTP server: nginx for the normal paths, a faulty Python server for faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferator.prefetch.journal import JOURNAL_NAME, Journal
from tests.prefetch_servers import (
    MIB,
    Fault,
    FileServer,
    Model,
    NginxServer,
    make_model,
    nginx_server,
    run_prefetch,
    tree_digest,
    write_sha256sums,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(tmp_path: Path) -> Model:
    return make_model(tmp_path / "www" / "llama")


@pytest.fixture
def nginx(tmp_path: Path, model: Model) -> Iterator[NginxServer]:
    # Not skipped when nginx is missing: the HTTP source is tested against the real thing.
    with nginx_server(tmp_path / "www") as server:
        yield server


@pytest.fixture
def files(model: Model) -> Iterator[FileServer]:
    with FileServer(model.root.parent) as server:
        yield server


def expected(model: Model) -> dict[str, str]:
    return {f.path: f.sha256 for f in model.files}


def test_directory_listing_fetches_every_file_then_writes_manifest_and_reports_facts(
    tmp_path: Path, model: Model, nginx: NginxServer
) -> None:
    run = run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache")

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == expected(model)
    assert not list((run.dest / ".inferator" / "tmp").iterdir())
    manifest = run.manifest
    assert manifest is not None
    # No checksums published: sizes (and safetensors structure) verified, nothing hashed.
    assert {f["path"]: (f["size"], f.get("sha256")) for f in manifest["files"]} == {
        f.path: (f.size, None) for f in model.files
    }
    assert manifest["totalBytes"] == model.total_bytes
    assert manifest["source"] == f"{nginx.url}/llama/"
    final = run.sink.final
    assert final["sizeBytes"] == model.total_bytes
    assert final["contentHash"] == "c0ffee1234"
    assert final["resolvedRevision"] is None
    assert final["model"]["architecture"] == "LlamaForCausalLM"
    assert final["model"]["numLayers"] == 2
    assert final["model"]["weightBytes"] == sum(f.size for f in model.weight_files) - sum(
        8 + int.from_bytes((model.root / f.path).read_bytes()[:8], "little") for f in model.weight_files
    )
    assert final["progress"]["bytesDone"] == final["progress"]["bytesTotal"] == model.total_bytes
    assert final["progress"]["filesDone"] == final["progress"]["filesTotal"] == len(model.files)


def test_file_list_with_sha256_column_fetches_and_verifies(
    tmp_path: Path, model: Model, nginx: NginxServer
) -> None:
    lines = [f"llama/{f.path} {f.sha256}" for f in model.files]
    (tmp_path / "www" / "files.txt").write_text("# model files\n" + "\n".join(lines) + "\n")

    run = run_prefetch(f"{nginx.url}/files.txt", tmp_path / "cache")

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == expected(model)
    assert run.manifest is not None
    assert {f["path"]: f["sha256"] for f in run.manifest["files"]} == expected(model)


def test_size_mode_reports_the_total_and_writes_nothing(
    tmp_path: Path, model: Model, nginx: NginxServer
) -> None:
    run = run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache", mode="size")

    assert run.code == 0, run.termination
    assert run.sink.patches == [
        {"sizeBytes": model.total_bytes, "resolvedRevision": None, "contentHash": "c0ffee1234"}
    ]
    assert not (tmp_path / "cache").exists()
    assert not [r for r in nginx.requests() if r[0] == "GET" and r[1] != "/llama/"]


def test_include_and_exclude_globs_select_the_files(tmp_path: Path, model: Model, nginx: NginxServer) -> None:
    run = run_prefetch(
        f"{nginx.url}/llama/",
        tmp_path / "cache",
        include=("*.json", "model-*.safetensors"),
        exclude=("tokenizer*",),
    )

    assert run.code == 0, run.termination
    assert sorted(tree_digest(run.dest)) == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert run.sink.final["sizeBytes"] == sum(
        f.size for f in model.files if f.path.endswith(".json") and not f.path.startswith("tokenizer")
    ) + sum(f.size for f in model.files if f.path.startswith("model-"))


def test_checksum_mismatch_fails_with_exit_2_naming_the_file_and_marks_nothing_complete(
    tmp_path: Path, model: Model, nginx: NginxServer
) -> None:
    bad = "model-00002-of-00002.safetensors"
    write_sha256sums(model, override={bad: "0" * 64})

    run = run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache", parallel=1)

    assert run.code == 2
    assert (
        f"sha256 mismatch for {bad}: expected {'0' * 64}, got {model.by_path()[bad].sha256}"
        in run.termination
    )
    assert not (run.dest / bad).exists()
    assert run.manifest is None
    assert not list((run.dest / ".inferator" / "tmp").glob(f"*{bad}.part"))  # not kept for a resume
    assert "SHA256SUMS" not in tree_digest(run.dest)  # a checksum file is read, not fetched


def test_a_matching_manifest_means_done_without_downloading(
    tmp_path: Path, model: Model, nginx: NginxServer
) -> None:
    first = run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache")
    assert first.code == 0, first.termination
    gets_before = len([r for r in nginx.requests() if r[0] == "GET"])

    again = run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache")

    assert again.code == 0, again.termination
    assert "already complete" in again.termination
    new_gets = [r for r in nginx.requests() if r[0] == "GET"][gets_before:]
    assert [r[1] for r in new_gets] == ["/llama/"]  # the listing only
    assert again.sink.final["model"] == first.sink.final["model"]


def test_a_file_changed_on_disk_under_a_manifest_is_fetched_again(
    tmp_path: Path, model: Model, nginx: NginxServer
) -> None:
    assert run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache").code == 0
    (tmp_path / "cache" / "config.json").write_text("{}")

    again = run_prefetch(f"{nginx.url}/llama/", tmp_path / "cache")

    assert again.code == 0, again.termination
    assert tree_digest(again.dest) == expected(model)
    assert len(nginx.gets("/llama/config.json")) == 2
    assert len(nginx.gets("/llama/model-00001-of-00002.safetensors")) == 1


# -- faults (the Python server) ----------------------------------------------------------------

SHARD = "/llama/model-00001-of-00002.safetensors"


def test_a_cut_connection_resumes_with_a_range_from_the_bytes_on_disk(
    tmp_path: Path, model: Model, files: FileServer
) -> None:
    files.add_faults(SHARD, Fault.cut(after_bytes=MIB))

    run = run_prefetch(f"{files.url}/llama/", tmp_path / "cache")

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == expected(model)
    gets = files.gets(SHARD)
    size = model.by_path()[SHARD.removeprefix("/llama/")].size
    assert [g.range for g in gets] == [f"bytes=0-{size - 1}", f"bytes={MIB}-{size - 1}"]


def test_a_stalled_transfer_is_cut_after_the_stall_timeout_and_retried(
    tmp_path: Path, model: Model, files: FileServer
) -> None:
    files.add_faults(SHARD, Fault.stall(after_bytes=MIB, seconds=30))

    started = time.monotonic()
    run = run_prefetch(f"{files.url}/llama/", tmp_path / "cache", stall_timeout_s=0.5)
    elapsed = time.monotonic() - started

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == expected(model)
    assert elapsed < 10
    assert len(files.gets(SHARD)) == 2
    assert files.gets(SHARD)[1].range.startswith(f"bytes={MIB}-")


def test_server_errors_then_success_completes(tmp_path: Path, model: Model, files: FileServer) -> None:
    files.add_faults(SHARD, Fault.error(500), Fault.error(503))

    run = run_prefetch(f"{files.url}/llama/", tmp_path / "cache")

    assert run.code == 0, run.termination
    assert [g.status for g in files.gets(SHARD)] == [500, 503, 206]
    assert tree_digest(run.dest) == expected(model)


def test_server_errors_forever_fail_with_exit_1_after_bounded_attempts(
    tmp_path: Path, model: Model, files: FileServer
) -> None:
    files.add_faults(SHARD, *[Fault.error(502)] * 10)

    run = run_prefetch(f"{files.url}/llama/", tmp_path / "cache", max_attempts=3)

    assert run.code == 1
    assert "model-00001-of-00002.safetensors: giving up after 3 attempts" in run.termination
    assert "HTTP 502" in run.termination
    assert len(files.gets(SHARD)) == 3
    assert run.manifest is None


def test_forbidden_fails_at_once_naming_credentials_without_the_secret(tmp_path: Path, model: Model) -> None:
    token = "http-bearer-secret-31337"
    with FileServer(model.root.parent, token="another-token", auth_failure_status=403) as server:
        run = run_prefetch(
            f"{server.url}/llama/", tmp_path / "cache", credentials={"HTTP_BEARER_TOKEN": token}
        )
        requests = list(server.requests)

    assert run.code == 1
    assert "HTTP 403" in run.termination
    assert "credentials were rejected" in run.termination
    assert "HTTP_BEARER_TOKEN" in run.termination
    assert token not in run.termination
    assert len(requests) == 1  # no retries for a refusal
    assert requests[0].authorization == f"Bearer {token}"


def test_bearer_token_is_sent_only_to_the_source_host(tmp_path: Path, model: Model) -> None:
    token = "http-bearer-secret-31337"
    with FileServer(model.root.parent, token=token) as origin, FileServer(model.root.parent) as other:
        (model.root.parent / "list.txt").write_text(
            f"{origin.url}/llama/config.json\n{other.url}/llama/tokenizer.json\n"
        )
        run = run_prefetch(f"{origin.url}/list.txt", tmp_path / "cache", include=("*.json",),
                           credentials={"HTTP_BEARER_TOKEN": token})  # fmt: skip
        other_requests = list(other.requests)

    assert run.code == 0, run.termination
    assert sorted(tree_digest(run.dest)) == ["config.json", "tokenizer.json"]
    assert other_requests and all(r.authorization == "" for r in other_requests)


def test_a_killed_download_resumes_and_does_not_fetch_finished_files_again(
    tmp_path: Path, model: Model, files: FileServer
) -> None:
    """A pod killed mid-download (SIGKILL, as on eviction) leaves a .part; the next pod resumes it."""
    files.add_faults(SHARD, Fault.stall(after_bytes=MIB, seconds=60))
    dest = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    command = [sys.executable, "-m", "inferator.cli", "prefetch", "--source", f"{files.url}/llama/",
               "--dest", str(dest), "--stall-timeout", "60", "--parallel", "4",
               "--termination-log", str(tmp_path / "termination")]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    others = [f.path for f in model.files if f"/llama/{f.path}" != SHARD]
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            parts = list((dest / ".inferator" / "tmp").glob("*.part")) if dest.exists() else []
            # The journal line follows each rename: wait for it, not for the file, or the kill can
            # land between the two and the next run rightly fetches that file again.
            journal = Journal(dest / ".inferator" / JOURNAL_NAME)
            journaled = all(p in journal.entries for p in others)
            if journaled and parts and parts[0].stat().st_size == MIB:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the first run never reached the stalled shard with the others done")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (dest / ".inferator" / "manifest.json").exists()

    run = run_prefetch(f"{files.url}/llama/", dest)

    assert run.code == 0, run.termination
    assert tree_digest(dest) == expected(model)
    for path in others:
        assert len(files.gets(f"/llama/{path}")) == 1, path
    shard_gets = files.gets(SHARD)
    assert len(shard_gets) == 2
    assert shard_gets[1].range.startswith(f"bytes={MIB}-")
    assert run.sink.progress[0]["bytesDone"] == model.total_bytes - model.by_path()[SHARD[7:]].size + MIB


def test_a_model_the_planner_cannot_price_still_completes_and_says_why(
    tmp_path: Path, model: Model, files: FileServer
) -> None:
    """Sound files of an unknown quantisation are a complete cache, not a failed download."""
    config = json.loads((model.root / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "hqq", "nbits": 4}
    (model.root / "config.json").write_text(json.dumps(config))

    run = run_prefetch(f"{files.url}/llama/", tmp_path / "cache")

    assert run.code == 0, run.termination
    assert sorted(tree_digest(run.dest)) == sorted(expected(model))
    final = run.sink.final
    assert final["model"] is None
    assert "hqq" in final["modelError"]
    manifest = run.manifest
    assert manifest is not None and manifest.get("model") is None

    again = run_prefetch(f"{files.url}/llama/", tmp_path / "cache")  # resumed: the verdict is the same
    assert again.code == 0 and "hqq" in again.sink.final["modelError"]
