"""Reporting on the ModelCache: merge patches of its `status` subresource, or stdout when run by hand.

The Job owns exactly these status keys: contentHash, sizeBytes, resolvedRevision, model, modelError,
progress, and the scheduled credentials check its own `credentials`. The operator owns the rest (phase, conditions, pvcName, jobName, ...), and a JSON
merge patch only touches the keys it names, so the two writers never overwrite each other.
Progress reports are best effort (a failed one is logged and the download goes on); the
final report must land, or the run fails (exit 1) so the Job retries it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from inferator.api.common import API_GROUP, API_VERSION
from inferator.api.modelcache import ModelFacts, Progress
from inferator.prefetch.errors import ReportError
from inferator.prefetch.redact import Redactor

log = logging.getLogger(__name__)

PLURAL = "modelcaches"
FINAL_ATTEMPTS = 5
FINAL_BACKOFF_S = 1.0
REQUEST_TIMEOUT_S = 15.0
WARN_EVERY_S = 60.0  # a flapping API server should not fill the log with one warning per tick


def size_status(content_hash: str | None, size_bytes: int, revision: str | None) -> dict[str, Any]:
    """What a sizing run reports. A null revision clears one left by an earlier spec (merge patch)."""
    status: dict[str, Any] = {"sizeBytes": size_bytes, "resolvedRevision": revision}
    if content_hash:
        status["contentHash"] = content_hash
    return status


def credentials_status(valid: bool | None, message: str, checked_at: str) -> dict[str, Any]:
    """What a credentials check reports (its own status key; the operator turns it into the
    CredentialsValid condition)."""
    return {"credentials": {"valid": valid, "checkedAt": checked_at, "message": message}}


def progress_status(progress: Progress) -> dict[str, Any]:
    return {"progress": progress.model_dump(by_alias=True, mode="json")}


def final_status(
    content_hash: str | None,
    size_bytes: int,
    revision: str | None,
    facts: ModelFacts | None,
    progress: Progress,
    model_error: str | None = None,
) -> dict[str, Any]:
    """What a completed fetch reports, in one patch so the operator never sees half of it.

    Exactly one of `model` and `modelError` is set; the other is nulled, which a merge patch
    reads as "remove", so facts of an earlier revision never outlive it.
    """
    return {
        **size_status(content_hash, size_bytes, revision),
        "model": facts.to_k8s() if facts is not None else None,
        "modelError": None if facts is not None else (model_error or "the model's facts were not read"),
        **progress_status(progress),
    }


class StatusSink(Protocol):
    """Where a status patch goes. Raises on failure; the Reporter decides what a failure means."""

    def patch_status(self, status: dict[str, Any]) -> None: ...


class StdoutSink:
    """Run by hand (no INFERATOR_MODELCACHE): each report is one JSON line on stdout."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def patch_status(self, status: dict[str, Any]) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps({"status": status}, sort_keys=True) + "\n")
        stream.flush()


class KubernetesStatusSink:
    """Merge-patches `modelcaches/<name>/status` with the pod's service account (in-cluster config)."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        self.namespace = namespace
        self._api: Any = None

    def _client(self) -> Any:
        if self._api is None:
            import kubernetes

            try:
                kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                # Run by hand with --modelcache from a workstation: the kubeconfig's context.
                # KUBECONFIG read now: the client's default is fixed when it is first imported.
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
            from inferator import __version__

            api_client = kubernetes.client.ApiClient()
            api_client.user_agent = f"inferator-prefetch/{__version__}"
            self._api = kubernetes.client.CustomObjectsApi(api_client)
        return self._api

    def patch_status(self, status: dict[str, Any]) -> None:
        self._client().patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            self.namespace,
            PLURAL,
            self.name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT_S,
        )


class Reporter:
    """Best-effort progress, must-succeed final reports, and errors logged without secrets."""

    def __init__(
        self,
        sink: StatusSink,
        redactor: Redactor,
        *,
        final_attempts: int = FINAL_ATTEMPTS,
        final_backoff_s: float = FINAL_BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sink = sink
        self.redactor = redactor
        self.final_attempts = final_attempts
        self.final_backoff_s = final_backoff_s
        self.sleep = sleep
        self._lock = threading.Lock()  # the ticker and the main thread both report
        self._last_warning = -WARN_EVERY_S

    def progress(self, progress: Progress) -> None:
        """Report progress; a failure is a warning (at most once a minute), never an exception."""
        try:
            with self._lock:
                self.sink.patch_status(progress_status(progress))
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning("progress report failed (the download goes on): %s", self._describe(exc))

    def final(self, status: dict[str, Any]) -> None:
        """Report the result, retrying with backoff; ReportError when it cannot be written."""
        last: Exception | None = None
        for attempt in range(1, self.final_attempts + 1):
            try:
                with self._lock:
                    self.sink.patch_status(status)
                return
            except Exception as exc:
                last = exc
                if attempt < self.final_attempts:
                    delay = self.final_backoff_s * 2 ** (attempt - 1)
                    log.warning(
                        "status report failed (attempt %d/%d), retrying in %.0fs: %s",
                        attempt, self.final_attempts, delay, self._describe(exc),
                    )  # fmt: skip
                    self.sleep(delay)
        raise ReportError(
            f"cannot report the result on the ModelCache status after {self.final_attempts} attempts: "
            f"{self._describe(last)}"
        )

    def _describe(self, exc: BaseException | None) -> str:
        if exc is None:
            return "unknown error"
        status = getattr(exc, "status", None)
        reason = getattr(exc, "reason", None)
        if status is not None:  # kubernetes ApiException: the body may be long; status and reason say it
            return self.redactor(f"HTTP {status} {reason or ''}".strip())
        return self.redactor(f"{type(exc).__name__}: {exc}")[:500]
