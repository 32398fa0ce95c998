"""The prefetch's cache-side behaviour: pvc:// verification, ownership and space failures, exit codes,
status reports, configuration, and keeping secrets out of everything it prints."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferator.api.modelcache import ModelFacts, Progress
from inferator.prefetch import main as prefetch_main
from inferator.prefetch.config import load_config
from inferator.prefetch.errors import (
    EXIT_NO_SPACE,
    EXIT_PERMISSION,
    EXIT_RETRYABLE,
    CachePermissionError,
    NoSpaceError,
    PrefetchError,
    ReportError,
    classify_os_error,
)
from inferator.prefetch.journal import Journal, JournalEntry
from inferator.prefetch.main import one_line
from inferator.prefetch.redact import Redactor, display_url
from inferator.prefetch.report import (
    KubernetesStatusSink,
    Reporter,
    final_status,
    progress_status,
    size_status,
)
from inferator.prefetch.sources.listing import RemoteFile, matches, safe_relative_path
from tests.prefetch_servers import (
    MIB,
    PRESIGNED_SECRET,
    FakeKubeApi,
    Fault,
    FileServer,
    HfRepo,
    HfServer,
    Model,
    RecordingSink,
    free_port,
    make_model,
    run_prefetch,
    tree_digest,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_STATUS_KEYS = {"contentHash", "sizeBytes", "resolvedRevision", "model", "modelError", "progress"}


@pytest.fixture
def model(tmp_path: Path) -> Model:
    return make_model(tmp_path / "www" / "llama")


# -- pvc:// -------------------------------------------------------------------------------------


def test_pvc_source_is_verified_in_place_on_a_read_only_claim_and_nothing_is_written(tmp_path: Path) -> None:
    """The claim is the user's: verified where it is, reported in status, left exactly as it was."""
    cache = tmp_path / "cache"
    model = make_model(cache / "llama")
    before = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    for path in [cache, *cache.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)  # as a read-only mount looks to the Job (root included, below)
    try:
        run = run_prefetch("pvc://weights/llama", cache)
    finally:
        for path in [cache, *cache.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)

    assert run.code == 0, run.termination
    assert run.manifest is None
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) == before
    assert run.sink.final["sizeBytes"] == model.total_bytes
    assert run.sink.final["progress"]["filesDone"] == len(model.files)
    assert run.sink.final["model"]["architecture"] == "LlamaForCausalLM"
    assert tree_digest(cache / "llama") == {f.path: f.sha256 for f in model.files}


def test_pvc_truncated_safetensors_fails_with_exit_2_naming_the_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_model(cache)
    shard = cache / "model-00001-of-00002.safetensors"
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 1000)

    run = run_prefetch("pvc://weights", cache)

    assert run.code == 2
    assert "model-00001-of-00002.safetensors: safetensors header describes" in run.termination
    assert run.manifest is None


def test_pvc_path_that_is_not_on_the_volume_fails_with_exit_2(tmp_path: Path) -> None:
    run = run_prefetch("pvc://weights/absent", tmp_path / "cache")

    assert run.code == 2
    assert f"{tmp_path / 'cache' / 'absent'} is not a directory on the mounted volume" in run.termination


# -- ownership and space ------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail in CI (CI=true), which runs as root and can mount:
    a skip there would hide the exit-3 and exit-5 paths these tests exist for."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def foreign_cache() -> Iterator[Path]:
    """A cache directory owned by uid 2000 (mode 0755) in a directory anyone may enter."""
    if os.getuid() != 0:
        unavailable("needs root to create a directory owned by another uid and to drop to uid 1000")
    base = Path(tempfile.mkdtemp(prefix="prefetch-uid-"))
    base.chmod(0o755)
    cache = base / "cache"
    cache.mkdir()
    os.chown(cache, 2000, 2000)
    cache.chmod(0o755)
    yield cache
    shutil.rmtree(base, ignore_errors=True)


# The interpreter lives under /root (0700) here, so uid 1000 could not exec it: start as root,
# import what the run needs, then drop to uid/gid 1000 before `inferator prefetch` does anything.
AS_UID_1000 = """
import os, sys
import inferator.cli, inferator.prefetch.main, inferator.prefetch.sources.http
os.setgroups([]); os.setgid(1000); os.setuid(1000)
sys.exit(inferator.cli.main(["prefetch", *sys.argv[1:]]))
"""


def test_cache_owned_by_another_uid_exits_3_naming_the_uid_and_path(foreign_cache: Path) -> None:
    termination = foreign_cache.parent / "termination-log"
    termination.touch()
    termination.chmod(0o666)
    closed_port = free_port()  # the preflight comes before any network call: nothing listens here
    result = subprocess.run(
        [sys.executable, "-c", AS_UID_1000, "--source", f"http://127.0.0.1:{closed_port}/m/",
         "--dest", str(foreign_cache), "--termination-log", str(termination)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == EXIT_PERMISSION, result.stderr
    reason = termination.read_text().strip()
    assert reason.startswith(
        f"cannot write {foreign_cache}/.inferator as uid 1000 gid 1000: Permission denied"
    )
    assert f"{foreign_cache} is owned by uid 2000 gid 2000, mode 0755" in reason
    assert reason in result.stderr


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_too_small_a_volume_exits_5_before_downloading_naming_path_and_bytes(
    tmp_path: Path, model: Model
) -> None:
    with FileServer(model.root.parent) as server, tmpfs(tmp_path / "small", "1m") as cache:
        run = run_prefetch(f"{server.url}/llama/", cache)
        gets = [r for r in server.requests if r.method == "GET" and r.path != "/llama/"]

    assert run.code == EXIT_NO_SPACE
    assert f"no space left on the cache volume at {cache}: {model.total_bytes} bytes" in run.termination
    assert "bytes (0.00 GiB) free" in run.termination or " free;" in run.termination
    assert gets == []


def test_running_out_of_space_mid_download_exits_5_and_marks_nothing_complete(
    tmp_path: Path, model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lie to the up-front check only: the kernel's ENOSPC on write is real.
    monkeypatch.setattr(prefetch_main, "free_bytes", lambda _path: 1 << 40)
    with FileServer(model.root.parent) as server, tmpfs(tmp_path / "small", "2m") as cache:
        run = run_prefetch(f"{server.url}/llama/", cache, parallel=1)
        manifest_exists = (cache / ".inferator" / "manifest.json").exists()
        big_shard_in_place = (cache / "model-00001-of-00002.safetensors").exists()

    assert run.code == EXIT_NO_SPACE
    assert f"no space left on the cache volume at {cache}" in run.termination
    assert not manifest_exists
    assert not big_shard_in_place


@pytest.mark.parametrize(
    ("error", "expected_type", "code"),
    [
        (OSError(errno.EACCES, "Permission denied", "/cache/x"), CachePermissionError, 3),
        (OSError(errno.EPERM, "Operation not permitted", "/cache/x"), CachePermissionError, 3),
        (OSError(errno.EROFS, "Read-only file system", "/cache/x"), CachePermissionError, 3),
        (OSError(errno.ENOSPC, "No space left on device", "/cache/x"), NoSpaceError, 5),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/cache/x"), NoSpaceError, 5),
        (OSError(errno.EIO, "Input/output error", "/cache/x"), PrefetchError, 1),
    ],
)
def test_os_errors_while_writing_map_to_the_job_exit_codes(
    error: OSError, expected_type: type[PrefetchError], code: int, tmp_path: Path
) -> None:
    classified = classify_os_error(error, tmp_path, needed_bytes=123)

    assert type(classified) is expected_type
    assert classified.exit_code == code
    if code == 3:
        assert f"cannot write /cache/x as uid {os.getuid()} gid {os.getgid()}" in str(classified)
    if code == 5:
        assert f"at {tmp_path}: 123 bytes" in str(classified)


# -- reporting ----------------------------------------------------------------------------------

FACTS = ModelFacts(architecture="LlamaForCausalLM", num_layers=2, hidden_size=256, num_attention_heads=4,
                   num_key_value_heads=4, head_dim=64, parameter_count=10, weight_bytes=20)  # fmt: skip


def test_status_patches_name_only_the_keys_the_job_owns_in_camel_case() -> None:
    progress = Progress(bytes_done=5, bytes_total=10, files_done=1, files_total=2, bytes_per_second=3)

    assert size_status("abc", 10, "sha") == {"contentHash": "abc", "sizeBytes": 10, "resolvedRevision": "sha"}
    assert progress_status(progress) == {
        "progress": {"bytesDone": 5, "bytesTotal": 10, "filesDone": 1, "filesTotal": 2, "bytesPerSecond": 3}
    }
    final = final_status("abc", 10, None, FACTS, progress)
    assert set(final) == JOB_STATUS_KEYS
    assert final["resolvedRevision"] is None  # a merge patch null: clears a revision from an earlier spec
    assert final["model"]["numKeyValueHeads"] == 4


def test_progress_is_reported_while_downloading_and_only_job_keys_are_ever_patched(
    tmp_path: Path, model: Model
) -> None:
    with FileServer(model.root.parent) as server:
        server.add_faults(
            "/llama/model-00001-of-00002.safetensors", Fault.stall(after_bytes=MIB, seconds=0.8)
        )
        run = run_prefetch(f"{server.url}/llama/", tmp_path / "cache", progress_interval_s=0.1)

    assert run.code == 0, run.termination
    assert all(set(patch) <= JOB_STATUS_KEYS for patch in run.sink.patches)
    done = [p["bytesDone"] for p in run.sink.progress]
    assert len(done) >= 3
    assert done == sorted(done)
    assert any(0 < d < model.total_bytes for d in done)
    assert run.sink.patches[-1]["progress"]["filesDone"] == len(model.files)


def test_a_failed_progress_report_does_not_stop_the_download(tmp_path: Path, model: Model) -> None:
    with FileServer(model.root.parent) as server:
        run = run_prefetch(f"{server.url}/llama/", tmp_path / "cache", sink=RecordingSink(fail_first=1))

    assert run.code == 0, run.termination
    assert run.sink.final["sizeBytes"] == model.total_bytes


def test_the_final_report_is_retried_then_fails_with_a_retryable_exit() -> None:
    sink = RecordingSink(fail_first=2)
    sleeps: list[float] = []
    Reporter(sink, Redactor(), sleep=sleeps.append).final({"sizeBytes": 1})
    assert sink.patches == [{"sizeBytes": 1}]
    assert sleeps == [1.0, 2.0]

    with pytest.raises(ReportError) as raised:
        Reporter(RecordingSink(fail_first=99), Redactor(), sleep=lambda _s: None).final({"sizeBytes": 1})
    assert raised.value.exit_code == EXIT_RETRYABLE
    assert "after 5 attempts" in str(raised.value)


def test_kubernetes_sink_merge_patches_the_status_subresource(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKubeApi() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", "sa-token")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        KubernetesStatusSink("llama", "team-a").patch_status({"sizeBytes": 42})
        patches = list(api.patches)

    assert patches == [
        (
            "/apis/inferator.dev/v1alpha1/namespaces/team-a/modelcaches/llama/status",
            "application/merge-patch+json",
            {"status": {"sizeBytes": 42}},
        )
    ]


# -- secrets ------------------------------------------------------------------------------------

SECRETS = {
    "HF_TOKEN": "hf_secret_token_value_0000000001",
    "AWS_ACCESS_KEY_ID": "AKIASECRETKEYID00002",
    "AWS_SECRET_ACCESS_KEY": "aws/secret+access+key/value/00003",
    "AWS_SESSION_TOKEN": "aws-session-token-value-00004",
    "HTTP_BEARER_TOKEN": "http-bearer-token-value-00005",
}


def _prefetch_subprocess(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    termination = tmp_path / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "inferator.cli", "prefetch", *args, "--dest", str(tmp_path / "cache"),
         "--termination-log", str(termination), "--max-attempts", "2", "--retry-backoff", "0.01"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), **SECRETS},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr, termination.read_text()


@pytest.mark.parametrize("case", ["cdn-unreachable", "hub-rejects-token", "presigned-list-server-errors"])
def test_no_secret_reaches_the_logs_the_termination_message_or_status(
    case: str, tmp_path: Path, model: Model
) -> None:
    closed = free_port()
    with contextlib.ExitStack() as stack:
        if case == "cdn-unreachable":
            hub = stack.enter_context(HfServer({"org/llama": HfRepo(model.root)}, cdn_url=f"http://127.0.0.1:{closed}",
                                               token=SECRETS["HF_TOKEN"]))  # fmt: skip
            args = ["--source", "hf://org/llama", "--endpoint", hub.url]
        elif case == "hub-rejects-token":
            hub = stack.enter_context(HfServer({"org/llama": HfRepo(model.root)}, token="x" * 20,
                                               auth_failure_status=403))  # fmt: skip
            args = ["--source", "hf://org/llama", "--endpoint", hub.url]
        else:
            files = stack.enter_context(FileServer(model.root.parent))
            signed = f"X-Amz-Credential={SECRETS['AWS_ACCESS_KEY_ID']}&X-Amz-Signature={PRESIGNED_SECRET}"
            (model.root.parent / "list.txt").write_text(
                "\n".join(f"{files.url}/llama/{f.path}?{signed}" for f in model.files)
            )
            for f in model.files:
                files.add_faults(f"/llama/{f.path}", *[Fault.error(500)] * 20)
            files.add_faults("/llama/config.json", *[Fault.error(500)] * 20)
            args = ["--source", f"{files.url}/list.txt"]
        code, output, termination = _prefetch_subprocess(args, tmp_path)

    assert code == EXIT_RETRYABLE, output
    assert termination.strip()
    for text in (output, termination):
        for name, value in SECRETS.items():
            assert value not in text, f"{name} leaked: {text}"
        assert PRESIGNED_SECRET not in text
        assert "X-Amz-Credential" not in text


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("token hf_abcdef123456 rejected", "token *** rejected"),
        ("GET https://h/p/f?X-Amz-Signature=abc&X-Amz-Credential=x failed", "GET https://h/p/f?*** failed"),
        (
            "Max retries exceeded with url: /cdn/abc?X-Amz-Signature=s (Caused by",
            "Max retries exceeded with url: /cdn/abc?*** (Caused by",
        ),
        ("https://user:pass@host/path", "https://***@host/path"),
        ("headers={'Authorization': 'Bearer abc.def'}", "headers={'Authorization': '***'}"),
        ("Authorization: Bearer xyz", "Authorization: ***"),
        ("sent bearer tok-123 to host", "sent Bearer *** to host"),
        ("nothing to hide? no.", "nothing to hide? no."),
    ],
)
def test_redactor_masks_secret_values_and_secret_bearing_url_parts(text: str, redacted: str) -> None:
    assert Redactor(["hf_abcdef123456"])(text) == redacted


def test_display_url_drops_user_info_and_query() -> None:
    assert display_url("https://u:p@host:8443/a/b.bin?sig=1#x") == "https://host:8443/a/b.bin"


def test_the_termination_message_is_one_line_under_4_kib() -> None:
    message = one_line("first line\nsecond line " + "x" * 10_000)
    assert "\n" not in message
    assert len(message.encode()) <= 4000
    assert message.startswith("first line second line")


# -- listing rules, journal, configuration ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "/etc/passwd", "a/../../b", ".inferator/manifest.json", "", "."]
)
def test_listed_names_cannot_escape_the_cache_or_touch_the_manifest(name: str) -> None:
    with pytest.raises(PrefetchError):
        safe_relative_path(name, "source")


@pytest.mark.parametrize(
    ("path", "patterns", "matched"),
    [
        ("model-00001.safetensors", ["*.safetensors"], True),
        ("sub/model.safetensors", ["*.safetensors"], True),  # huggingface_hub: * crosses /
        ("original/consolidated.pth", ["original/"], True),  # a folder pattern
        ("config.json", ["*.safetensors"], False),
    ],
)
def test_globs_follow_huggingface_hub_allow_patterns(path: str, patterns: list[str], matched: bool) -> None:
    assert matches(path, patterns) is matched


def test_journal_trusts_a_file_only_for_the_same_object_and_size(tmp_path: Path) -> None:
    journal_path = tmp_path / "journal.jsonl"
    final = tmp_path / "a.bin"
    final.write_bytes(b"x" * 10)
    journal = Journal(journal_path)
    journal.record(JournalEntry("a.bin", 10, "etag:1", "ab" * 32))
    with open(journal_path, "a") as handle:
        handle.write('{"path": "b.bin", "si')  # a line cut by SIGKILL

    reloaded = Journal(journal_path)
    file = RemoteFile("a.bin", 10, "etag:1", sha256="ab" * 32)
    assert reloaded.is_complete(file, final) is not None
    assert reloaded.is_complete(RemoteFile("a.bin", 10, "etag:2"), final) is None
    assert reloaded.is_complete(RemoteFile("a.bin", 10, "etag:1", sha256="cd" * 32), final) is None
    final.write_bytes(b"x" * 9)
    assert reloaded.is_complete(file, final) is None
    assert "b.bin" not in reloaded.entries


def test_the_job_environment_is_the_interface_and_flags_override_it() -> None:
    env = {
        "INFERATOR_SOURCE": "hf://org/m@main",
        "INFERATOR_DEST": "/cache",
        "INFERATOR_MODE": "size",
        "INFERATOR_INCLUDE": "*.json\n*.safetensors\n",
        "INFERATOR_EXCLUDE": "original/",
        "INFERATOR_PARALLEL": "3",
        "INFERATOR_STALL_TIMEOUT": "45",
        "INFERATOR_REVISION": "a" * 40,
        "INFERATOR_MODELCACHE": "m",
        "INFERATOR_NAMESPACE": "ns",
        "INFERATOR_CONTENT_HASH": "abc",
        "HF_TOKEN": "hf_x_secret",
    }
    config = load_config([], env)
    assert (config.source, str(config.dest), config.mode) == ("hf://org/m@main", "/cache", "size")
    assert config.include == ("*.json", "*.safetensors")
    assert config.exclude == ("original/",)
    assert (config.parallel, config.stall_timeout_s, config.revision) == (3, 45.0, "a" * 40)
    assert (config.modelcache, config.namespace, config.content_hash) == ("m", "ns", "abc")
    assert config.credentials == {"HF_TOKEN": "hf_x_secret"}
    assert "hf_x_secret" not in repr(config)

    by_hand = load_config(
        ["--mode", "fetch", "--parallel", "8", "--include", "*.bin", "--dest", "/tmp/c"], env
    )
    assert (by_hand.mode, by_hand.parallel, by_hand.include, str(by_hand.dest)) == (
        "fetch",
        8,
        ("*.bin",),
        "/tmp/c",
    )

    with pytest.raises(SystemExit):
        load_config([], {})


def test_run_by_hand_reports_json_lines_on_stdout(tmp_path: Path, model: Model) -> None:
    with FileServer(model.root.parent) as server:
        result = subprocess.run(
            [sys.executable, "-m", "inferator.cli", "prefetch", "--source", f"{server.url}/llama/",
             "--mode", "size", "--termination-log", str(tmp_path / "t")],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert result.returncode == 0, result.stderr
    lines: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"status": {"sizeBytes": model.total_bytes, "resolvedRevision": None}}]
