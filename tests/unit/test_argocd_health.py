"""Argo CD health checks (the Lua Argo CD runs), evaluated with lupa on statuses in the operator's shape."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.argocd import argocd_cm_data, health


def obj(
    kind: str,
    generation: int,
    observed: int | None,
    phase: str | None,
    ready: tuple[str, str] | None,
    **status: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "metadata": {"name": "x", "generation": generation}}
    if phase is None and ready is None and observed is None:
        return body
    conditions = [{"type": "Ready", "status": ready[0], "reason": ready[1], "message": "m"}] if ready else []
    body["status"] = {"observedGeneration": observed, "phase": phase, "conditions": conditions, **status}
    if phase is None:  # a gateway has no phase
        del body["status"]["phase"]
    return body


CASES = [
    ("svc-no-status", obj("InferenceService", 1, None, None, None), "Progressing"),
    ("svc-ready", obj("InferenceService", 3, 3, "Ready", ("True", "Serving")), "Healthy"),
    ("svc-stale-generation", obj("InferenceService", 4, 3, "Ready", ("True", "Serving")), "Progressing"),
    ("svc-waiting-for-cache", obj("InferenceService", 1, 1, "WaitingForCache", ("False", "WaitingForCache")), "Progressing"),
    ("svc-cache-missing", obj("InferenceService", 1, 1, "WaitingForCache", ("False", "CacheNotFound")), "Degraded"),
    ("svc-cache-failed", obj("InferenceService", 1, 1, "WaitingForCache", ("False", "CacheFailed")), "Degraded"),
    ("svc-deploying", obj("InferenceService", 1, 1, "Deploying", ("False", "WarmupFailed")), "Progressing"),
    ("svc-no-profile", obj("InferenceService", 1, 1, "NoCompatibleProfile", ("False", "NoCompatibleProfile")), "Degraded"),
    ("svc-unsupported-model", obj("InferenceService", 1, 1, "NoCompatibleProfile", ("False", "UnsupportedModel")), "Degraded"),
    ("svc-no-keda", obj("InferenceService", 1, 1, "Failed", ("False", "AutoscalerUnavailable")), "Degraded"),
    ("svc-refused", obj("InferenceService", 2, 2, "Degraded", ("False", "RuntimeRefused")), "Degraded"),
    ("svc-invalid", obj("InferenceService", 1, 1, "Failed", ("False", "InvalidSpec")), "Degraded"),
    ("gw-ready", obj("InferenceGateway", 2, 2, None, ("True", "Ready")), "Healthy"),
    ("gw-deploying", obj("InferenceGateway", 1, 1, None, ("False", "Deploying")), "Progressing"),
    ("gw-invalid", obj("InferenceGateway", 1, 1, None, ("False", "InvalidSpec")), "Degraded"),
    ("gw-stale-generation", obj("InferenceGateway", 3, 2, None, ("True", "Ready")), "Progressing"),
    ("cache-ready", obj("ModelCache", 1, 1, "Ready", ("True", "Prefetched")), "Healthy"),
    ("cache-downloading", obj("ModelCache", 1, 1, "Downloading", ("False", "Downloading"), progress={"bytesDone": 1, "bytesTotal": 2}), "Progressing"),
    ("cache-failed", obj("ModelCache", 2, 2, "Failed", ("False", "PrefetchFailed")), "Degraded"),
    ("cache-stale-failed", obj("ModelCache", 3, 2, "Failed", ("False", "PrefetchFailed")), "Progressing"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), [(b, e) for _, b, e in CASES], ids=[i for i, _, _ in CASES])
def test_health(body: dict[str, Any], expected: str) -> None:
    assert health(body)["status"] == expected


def test_messages_carry_the_reason_and_progress() -> None:
    downloading = obj("ModelCache", 1, 1, "Downloading", ("False", "Downloading"),
                      progress={"bytesDone": 2 * 2**30, "bytesTotal": 8 * 2**30})  # fmt: skip
    assert health(downloading)["message"] == "Downloading: m (2.0 of 8.0 GiB)"
    assert "observed generation 4" in health(CASES[2][1])["message"]


def test_argocd_cm_keys() -> None:
    assert sorted(argocd_cm_data()) == [
        "resource.customizations.health.inferator.dev_InferenceGateway",
        "resource.customizations.health.inferator.dev_InferenceService",
        "resource.customizations.health.inferator.dev_ModelCache",
    ]


@pytest.mark.parametrize(
    ("done", "total", "shown"),
    [(0, 1, "0.0 of 0.0"), (2**30 + 2**30 // 2, 140 * 2**30, "1.5 of 140.0"), (1234 * 2**30, 1234 * 2**30, "1234.0 of 1234.0")],
)  # fmt: skip
def test_progress_in_gib_without_the_string_library(done: int, total: int, shown: str) -> None:
    body = obj(
        "ModelCache",
        1,
        1,
        "Downloading",
        ("False", "Downloading"),
        progress={"bytesDone": done, "bytesTotal": total},
    )
    assert health(body)["message"] == f"Downloading: m ({shown} GiB)"


def test_scripts_run_only_with_what_argocd_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner itself refuses what Argo CD's VM lacks, so the checks above can fail."""
    from inferator import argocd

    monkeypatch.setattr(
        argocd, "lua_source", lambda kind: 'hs = {status = string.format("%s", "Healthy")}\nreturn hs'
    )
    with pytest.raises(Exception, match="string"):
        health(obj("ModelCache", 1, 1, "Ready", ("True", "Prefetched")))
    monkeypatch.setattr(argocd, "lua_source", lambda kind: 'hs = {status = ("healthy"):upper()}\nreturn hs')
    with pytest.raises(Exception, match=r"upper|index"):
        health(obj("ModelCache", 1, 1, "Ready", ("True", "Prefetched")))
