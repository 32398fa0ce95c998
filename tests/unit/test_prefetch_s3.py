"""`inferator prefetch` from S3: moto's S3 in server mode on loopback, driven through boto3."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferator.prefetch.sources.s3 import parse_s3_uri, sha256_hex_from_checksum
from tests.prefetch_servers import (
    MOTO_CREDENTIALS,
    Model,
    make_model,
    moto_s3,
    run_prefetch,
    s3_client,
    tree_digest,
    upload_tree,
)

_buckets = itertools.count()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def model(tmp_path: Path) -> Model:
    return make_model(tmp_path / "model")


@pytest.fixture
def bucket(s3_endpoint: str, model: Model) -> str:
    name = f"models-{next(_buckets)}"
    upload_tree(s3_endpoint, name, "llama", model)
    return name


def test_fetch_verifies_sha256_checksums_writes_files_manifest_and_facts(
    tmp_path: Path, s3_endpoint: str, bucket: str, model: Model
) -> None:
    run = run_prefetch(
        f"s3://{bucket}/llama", tmp_path / "cache", endpoint=s3_endpoint, credentials=MOTO_CREDENTIALS
    )

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == {f.path: f.sha256 for f in model.files}
    manifest = run.manifest
    assert manifest is not None
    assert manifest["source"] == f"s3://{bucket}/llama"
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {f.path: f.sha256 for f in model.files}
    assert run.sink.final["model"]["architecture"] == "LlamaForCausalLM"
    assert run.sink.final["sizeBytes"] == model.total_bytes


def test_listing_takes_sha256_from_full_object_checksums(s3_endpoint: str, bucket: str, model: Model) -> None:
    from inferator.prefetch.retry import RetryPolicy
    from inferator.prefetch.sources.s3 import S3Source

    source = S3Source(f"s3://{bucket}/llama/", endpoint=s3_endpoint, region=None, credentials=MOTO_CREDENTIALS,
                      include=(), exclude=(), parallel=2, stall_timeout_s=5, retry=RetryPolicy())  # fmt: skip
    listing = source.list_files()

    assert {f.path: f.sha256 for f in listing.files} == {f.path: f.sha256 for f in model.files}
    assert listing.revision is None


def test_size_mode_reports_the_total_and_clears_any_revision(
    tmp_path: Path, s3_endpoint: str, bucket: str, model: Model
) -> None:
    run = run_prefetch(f"s3://{bucket}/llama", tmp_path / "cache", mode="size", endpoint=s3_endpoint,
                       credentials=MOTO_CREDENTIALS, revision="0123456789abcdef0123456789abcdef01234567")  # fmt: skip

    assert run.code == 0, run.termination
    assert run.sink.patches == [
        {"sizeBytes": model.total_bytes, "resolvedRevision": None, "contentHash": "c0ffee1234"}
    ]
    assert not (tmp_path / "cache").exists()


def test_include_and_exclude_select_objects(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    run = run_prefetch(f"s3://{bucket}/llama", tmp_path / "cache", endpoint=s3_endpoint,
                       credentials=MOTO_CREDENTIALS, include=("config.json", "*.safetensors"),
                       exclude=("embeddings*",))  # fmt: skip

    assert run.code == 0, run.termination
    assert sorted(tree_digest(run.dest)) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_the_prefix_is_a_folder_not_a_string_prefix(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=bucket, Key="llama-2/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="llama/dir-marker/", Body=b"")

    run = run_prefetch(f"s3://{bucket}/llama", tmp_path / "cache", endpoint=s3_endpoint,
                       credentials=MOTO_CREDENTIALS, mode="size")  # fmt: skip

    assert run.code == 0, run.termination
    assert run.sink.final["sizeBytes"] == sum(
        o["Size"] for o in client.list_objects_v2(Bucket=bucket, Prefix="llama/")["Contents"]
    )


def test_objects_without_a_sha256_checksum_are_verified_by_size(
    tmp_path: Path, s3_endpoint: str, model: Model
) -> None:
    upload_tree(s3_endpoint, "plain-models", "llama", model, sha256_checksums=False)

    run = run_prefetch("s3://plain-models/llama", tmp_path / "cache", endpoint=s3_endpoint,
                       credentials=MOTO_CREDENTIALS)  # fmt: skip

    assert run.code == 0, run.termination
    assert tree_digest(run.dest) == {f.path: f.sha256 for f in model.files}
    assert run.manifest is not None
    assert not [f for f in run.manifest["files"] if "sha256" in f]  # nothing published, nothing claimed


def test_an_empty_prefix_fails_with_exit_2_saying_nothing_matched(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    run = run_prefetch(f"s3://{bucket}/nothing-here", tmp_path / "cache", endpoint=s3_endpoint,
                       credentials=MOTO_CREDENTIALS)  # fmt: skip

    assert run.code == 2
    assert f"s3://{bucket}/nothing-here/" in run.termination
    assert "no files to fetch" in run.termination


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://b/models/llama", "b", "models/llama/"),
        ("s3://b/models/llama/", "b", "models/llama/"),
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
    ],
)
def test_s3_uris_name_a_bucket_and_a_folder(uri: str, bucket: str, prefix: str) -> None:
    assert parse_s3_uri(uri) == (bucket, prefix)


@pytest.mark.parametrize(
    ("checksum", "hex_digest"),
    [
        (
            "RPg1RJSlugO6F5Ko0+nFNMR6kYGYD956P0SwbvKufH8=",
            "44f8354494a5ba03ba1792a8d3e9c534c47a9181980fde7a3f44b06ef2ae7c7f",
        ),
        ("RPg1RJSlugO6F5Ko0+nFNMR6kYGYD956P0SwbvKufH8=-3", None),  # multipart: composite, not the file's
        ("not base64!", None),
        (None, None),
    ],
)
def test_only_full_object_sha256_checksums_are_used(checksum: str | None, hex_digest: str | None) -> None:
    assert sha256_hex_from_checksum(checksum) == hex_digest
