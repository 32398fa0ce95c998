"""What the operator copies into status and events from URIs and termination messages."""

from __future__ import annotations

from inferator.controllers.modelcache import job_outcome
from inferator.controllers.redaction import MAX_MESSAGE_CHARS, scrub
from inferator.prefetch.redact import display_url


def test_userinfo_query_and_token_shapes_are_masked() -> None:
    text = (
        "GET https://alice:hunter2@mirror.example/m/config.json?X-Amz-Signature=abc123 failed; "
        "vllm serve --api-key sk-live-0123456789abcdefghij --port 8000; HF hf_abcdefghijklmnopqrstuvwx; "
        "key AKIAABCDEFGHIJKLMNOP; Authorization: Bearer eyJhbGciOi.payload.sig"
    )
    out = scrub(text)
    for secret in ("hunter2", "abc123", "sk-live-0123456789abcdefghij", "hf_abcdefghijklmnopqrstuvwx",
                   "AKIAABCDEFGHIJKLMNOP", "eyJhbGciOi.payload.sig"):  # fmt: skip
        assert secret not in out, (secret, out)
    assert "mirror.example/m/config.json" in out and "--port 8000" in out


def test_messages_are_bounded() -> None:
    assert len(scrub("x" * 10_000)) == MAX_MESSAGE_CHARS


def test_source_uri_is_shown_without_credentials() -> None:
    assert display_url("s3://k:s@bucket/p/?X-Amz-Credential=c") == "s3://bucket/p/"


def test_a_failed_jobs_termination_message_is_scrubbed() -> None:
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    pod = {"metadata": {"creationTimestamp": "2026-12-01T00:00:00Z"}, "status": {"containerStatuses": [
        {"name": "prefetch", "state": {"terminated": {"exitCode": 1,
         "message": "HTTP 403 for https://u:p4ssw0rd@h/x?sig=s3cr3t"}}}]}}  # fmt: skip
    state, message = job_outcome(job, [pod])
    assert state == "failed"
    assert "p4ssw0rd" not in message and "s3cr3t" not in message and "HTTP 403" in message
