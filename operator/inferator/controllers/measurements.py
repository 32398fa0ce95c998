"""Validation numbers kept per (model, profile, GPU pool), cluster-wide, for `rankBy: measured`.

One ConfigMap in the operator's namespace: a service in any namespace learns from a run in
another, and a platform team reads (or seeds) the numbers with kubectl. Each entry is one data
key (a hash, since ConfigMap keys allow few characters) holding a small JSON document that
names its model, profile and pool. Written once per finished run, read by the reconciles of
services that rank by measurements.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes.client import ApiException

from inferator.api.inferenceservice import ServiceLevelObjectives, ValidationRun
from inferator.controllers import kube
from inferator.controllers.validation import headline
from inferator.profiles.measured import CONFIGMAP, LABEL, Measured, entry_key, measured_for, model_identity

__all__ = ["CONFIGMAP", "entry", "entry_key", "load", "measured_for", "model_identity", "record"]

log = logging.getLogger(__name__)


def entry(
    model: str, profile: str, pool: str, run: ValidationRun, slo: ServiceLevelObjectives | None, source: str
) -> dict[str, Any] | None:
    """The stored document of a finished run: its headline level (the SLO's, else the highest)."""
    level = headline(run.levels, slo)
    if run.state != "Succeeded" or level is None or level.output_tokens_per_second is None:
        return None
    return {
        "model": model, "profile": profile, "pool": pool, "measuredAt": run.completed_at,
        "concurrency": level.concurrency, "outputTokensPerSecond": level.output_tokens_per_second,
        "ttftP99Ms": level.ttft_p99_ms, "interTokenLatencyP99Ms": level.inter_token_latency_p99_ms,
        "kvCachePeak": run.kv_cache_peak, "service": source,
    }  # fmt: skip


def load(namespace: str, model: str) -> dict[tuple[str, str], Measured]:
    found = kube.get("v1", "ConfigMap", CONFIGMAP, namespace)
    return measured_for((found or {}).get("data") or {}, model)


def record(namespace: str, doc: dict[str, Any]) -> None:
    """Add or replace one entry (a merge patch of one data key; the ConfigMap is created first
    if it is missing)."""
    key = entry_key(doc["model"], doc["profile"], doc["pool"])
    body = {"data": {key: json.dumps(doc, separators=(",", ":"), sort_keys=True)}}
    try:
        kube.patch("v1", "ConfigMap", CONFIGMAP, namespace, body)
    except ApiException as exc:
        if exc.status != 404:
            raise
        kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": CONFIGMAP, "namespace": namespace, "labels": {LABEL: "true"}}, **body})  # fmt: skip
        kube.patch("v1", "ConfigMap", CONFIGMAP, namespace, body)  # a concurrent create won the race
    log.info("measurement of %s on %s (%s) recorded in %s/%s", doc["profile"], doc["pool"], doc["model"],
             namespace, CONFIGMAP)  # fmt: skip
