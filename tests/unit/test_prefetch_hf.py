"""`inferator prefetch` from a Hugging Face-compatible endpoint (the API huggingface_hub calls, on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prefetch_servers import (
    PRESIGNED_SECRET,
    Fault,
    HfRepo,
    HfServer,
    Model,
    PrefetchRun,
    make_model,
    run_prefetch,
    tree_digest,
)

MAIN_SHA = "0123456789abcdef0123456789abcdef01234567"
V2_SHA = "89abcdef0123456789abcdef0123456789abcdef"
TOKEN = "hf_test_token_value_4242424242"


@pytest.fixture
def model(tmp_path: Path) -> Model:
    return make_model(tmp_path / "repo")


@pytest.fixture
def hub(model: Model) -> Iterator[HfServer]:
    repo = HfRepo(model.root, refs={"main": MAIN_SHA, "v2": V2_SHA})
    with HfServer({"org/llama": repo}, token=TOKEN) as server:
        yield server


def fetch(tmp_path: Path, hub: HfServer, uri: str = "hf://org/llama") -> PrefetchRun:
    return run_prefetch(uri, tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN})


def test_fetch_resolves_the_branch_to_a_commit_and_verifies_lfs_sha256(
    tmp_path: Path, hub: HfServer, model: Model
) -> None:
    run = run_prefetch(
        "hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN}
    )

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == {f.path: f.sha256 for f in model.files}
    assert run.manifest is not None
    assert run.manifest["resolvedRevision"] == MAIN_SHA
    assert run.sink.final["resolvedRevision"] == MAIN_SHA
    assert run.sink.final["model"]["numAttentionHeads"] == 4
    # Bytes are fetched at the commit, never at the moving branch name.
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{MAIN_SHA}/" in r.path for r in resolves)


def test_size_mode_reports_the_commit_sha_a_branch_resolves_to(
    tmp_path: Path, hub: HfServer, model: Model
) -> None:
    run = run_prefetch("hf://org/llama@v2", tmp_path / "cache", mode="size", endpoint=hub.url,
                       credentials={"HF_TOKEN": TOKEN})  # fmt: skip

    assert run.code == 0, run.termination
    assert run.sink.patches == [
        {"sizeBytes": model.total_bytes, "resolvedRevision": V2_SHA, "contentHash": "c0ffee1234"}
    ]
    assert not (tmp_path / "cache").exists()
    assert not [r for r in hub.requests if "/resolve/" in r.path or r.path.startswith("/cdn/")]


def test_a_pinned_revision_is_used_without_resolving_again(tmp_path: Path, hub: HfServer) -> None:
    run = run_prefetch("hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN},
                       revision=V2_SHA)  # fmt: skip

    assert run.code == 0, run.termination
    assert run.sink.final["resolvedRevision"] == V2_SHA
    assert not [r for r in hub.requests if "/revision/" in r.path]


def test_include_and_exclude_select_repository_files(tmp_path: Path, hub: HfServer) -> None:
    run = run_prefetch("hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN},
                       include=("*.json", "*.safetensors"), exclude=("model-00002*", "tokenizer.json"))  # fmt: skip

    assert run.code == 0, run.termination
    assert sorted(tree_digest(run.dest)) == [
        "config.json",
        "embeddings.safetensors",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
    ]


def test_checksum_mismatch_fails_with_exit_2_naming_the_file_and_marks_nothing_complete(
    tmp_path: Path, model: Model
) -> None:
    bad = "model-00002-of-00002.safetensors"
    repo = HfRepo(model.root, lfs_sha256_override={bad: "f" * 64})
    with HfServer({"org/llama": repo}) as hub:
        run = run_prefetch("hf://org/llama", tmp_path / "cache", endpoint=hub.url, parallel=1)

    assert run.code == 2
    assert run.termination.strip() == (
        f"sha256 mismatch for {bad}: expected {'f' * 64}, got {model.by_path()[bad].sha256}"
    )
    assert not (run.dest / bad).exists()
    assert run.manifest is None
    assert not list((run.dest / ".inferator" / "tmp").glob(f"*{bad}.part"))  # not kept for a resume
    assert "model" not in run.sink.patches[-1]


def test_the_token_goes_to_the_hub_and_not_to_the_cdn(tmp_path: Path, hub: HfServer) -> None:
    run = run_prefetch(
        "hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN}
    )

    assert run.code == 0, run.termination
    api = [r for r in hub.requests if not r.path.startswith("/cdn/")]
    cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert api and all(r.authorization == f"Bearer {TOKEN}" for r in api)
    assert cdn and all(r.authorization == "" for r in cdn)
    assert all(PRESIGNED_SECRET in r.query for r in cdn)


def test_rejected_token_fails_at_once_naming_credentials_without_the_secret(
    tmp_path: Path, model: Model
) -> None:
    with HfServer({"org/llama": HfRepo(model.root)}, token="the-right-token", auth_failure_status=403) as hub:
        run = run_prefetch(
            "hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN}
        )
        requests = list(hub.requests)

    assert run.code == 1
    assert "credentials were rejected" in run.termination
    assert "HF_TOKEN" in run.termination
    assert TOKEN not in run.termination
    assert len(requests) == 1


def test_a_private_or_missing_repository_says_so_and_names_credentials(tmp_path: Path, hub: HfServer) -> None:
    run = run_prefetch(
        "hf://org/missing", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN}
    )

    assert run.code == 1
    assert "repository not found, or credentials were rejected" in run.termination


def test_a_cdn_error_then_success_completes(tmp_path: Path, hub: HfServer, model: Model) -> None:
    shard = model.by_path()["model-00001-of-00002.safetensors"]
    hub.add_faults(f"/cdn/{shard.sha256}", Fault.error(503), Fault.cut(after_bytes=100_000))

    run = run_prefetch(
        "hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN}
    )

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == {f.path: f.sha256 for f in model.files}
    ranges = [g.range for g in hub.gets(f"/cdn/{shard.sha256}")]
    assert ranges[-1] == f"bytes=100000-{shard.size - 1}"


def test_a_new_revision_replaces_changed_files_and_removes_files_it_no_longer_has(
    tmp_path: Path, hub: HfServer, model: Model
) -> None:
    assert fetch(tmp_path, hub).code == 0
    (model.root / "tokenizer.json").unlink()
    (model.root / "config.json").write_text((model.root / "config.json").read_text().replace("2048", "4096"))
    hub.repos["org/llama"].refs["main"] = V2_SHA
    hub._meta.clear()

    run = run_prefetch(
        "hf://org/llama", tmp_path / "cache", endpoint=hub.url, credentials={"HF_TOKEN": TOKEN}
    )

    assert run.code == 0, run.termination
    assert "tokenizer.json" not in tree_digest(run.dest)
    assert run.sink.final["model"]["maxPositionEmbeddings"] == 4096
    assert run.manifest is not None and run.manifest["resolvedRevision"] == V2_SHA
    # unchanged shards were not fetched again (same LFS oid: the journal knows them)
    for weight in model.weight_files:
        assert len(hub.gets(f"/cdn/{weight.sha256}")) == 1


def test_huggingface_hub_itself_downloads_from_the_test_endpoint(
    tmp_path: Path, hub: HfServer, model: Model
) -> None:
    """The endpoint is faithful enough for snapshot_download (the benchmark's baseline)."""
    from huggingface_hub import snapshot_download

    path = snapshot_download("org/llama", endpoint=hub.url, token=TOKEN, local_dir=tmp_path / "snapshot",
                             cache_dir=tmp_path / "hf-cache")  # fmt: skip

    assert {k: v for k, v in tree_digest(Path(path)).items() if not k.startswith(".cache")} == {
        f.path: f.sha256 for f in model.files
    }
