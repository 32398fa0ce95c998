"""What a ModelCache becomes: its PVC, the prefetch Job's identity, and the Jobs themselves."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from inferator.api.modelcache import ModelCacheSpec
from inferator.render.inferenceservice import binary_quantity
from inferator.render.templating import render_manifest, render_manifests
from inferator.settings import OperatorSettings

CACHE_LABEL = "inferator.dev/model-cache"
MOUNT_PATH = "/cache"
CREDENTIALS_DIR = "/var/run/secrets/inferator/credentials"
# The keys of a credentials Secret each source type reads: only these are mounted (as files),
# so naming a Secret never hands the Job its other keys.
CREDENTIAL_KEYS: dict[str, tuple[str, ...]] = {
    "hf": ("HF_TOKEN",),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "http": ("HTTP_BEARER_TOKEN",),
    "https": ("HTTP_BEARER_TOKEN",),
}


# Requests only, so the Job is Burstable (not BestEffort, evicted first) without a limit that
# could kill a download: it streams to disk, a few MiB of buffers per parallel stream.
DEFAULT_PREFETCH_RESOURCES: dict[str, Any] = {"requests": {"cpu": "250m", "memory": "512Mi"}}


def credential_keys(uri: str) -> tuple[str, ...]:
    return CREDENTIAL_KEYS.get(uri.split("://", 1)[0].lower(), ())


_MAX_PREFIX = 40  # Job names feed the `job-name` label (63 chars) with a suffix
_MAX_LABEL_VALUE = 63


def bounded(name: str, limit: int) -> str:
    """`name` if it fits in `limit`, else a prefix and a hash of the whole name.

    Cutting alone would give two caches named alike past the limit the same PVC, ServiceAccount,
    Role and label; the hash keeps names derived from different names different.
    """
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(digest) - 1].rstrip('-.')}-{digest}"


def cache_label_value(cache_name: str) -> str:
    """The value of CACHE_LABEL for a cache (a label value has at most 63 characters)."""
    return bounded(cache_name, _MAX_LABEL_VALUE)


@dataclass(frozen=True)
class CacheNames:
    pvc: str
    service_account: str
    size_job: str
    fetch_job: str


def labels(cache_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "inferator",
        "app.kubernetes.io/part-of": "inferator",
        CACHE_LABEL: cache_label_value(cache_name),
    }


def content_hash(spec: ModelCacheSpec) -> str:
    """Hash of what decides the bytes on the volume. Changing it re-runs the Job; nothing else does."""
    source = spec.source
    material = {
        "uri": source.uri,
        "endpoint": source.endpoint,
        "region": source.region,
        "include": source.include,
        "exclude": source.exclude,
        "owner": [spec.ownership.run_as_user, spec.ownership.run_as_group],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:10]


def names(cache_name: str, spec: ModelCacheSpec) -> CacheNames:
    prefix = bounded(cache_name, _MAX_PREFIX)
    digest = content_hash(spec)
    return CacheNames(
        pvc=spec.source_claim or spec.storage.pvc_name or f"{prefix}-weights",
        service_account=f"{prefix}-prefetch",
        size_job=f"{prefix}-size-{digest}",
        fetch_job=f"{prefix}-fetch-{digest}",
    )


def pvc_size_bytes(source_bytes: int, settings: OperatorSettings) -> int:
    """Source size plus headroom, rounded up to whole GiB: sized from the listing, never a default."""
    headroom = max(int(source_bytes * settings.pvc_headroom_ratio), settings.pvc_headroom_min_bytes)
    return math.ceil((source_bytes + headroom) / (1 << 30)) * (1 << 30)


def render_rbac(cache_name: str, namespace: str, spec: ModelCacheSpec) -> list[dict[str, Any]]:
    return render_manifests(
        "modelcache-rbac.yaml.j2",
        names=names(cache_name, spec),
        namespace=namespace,
        labels=labels(cache_name),
        cache_name=cache_name,
    )


def render_pvc(cache_name: str, namespace: str, spec: ModelCacheSpec, size: str | int) -> dict[str, Any]:
    return render_manifest(
        "modelcache-pvc.yaml.j2",
        names=names(cache_name, spec),
        namespace=namespace,
        labels=labels(cache_name),
        storage=spec.storage,
        size=binary_quantity(size) if isinstance(size, int) else str(size),
    )


def prefetch_env(
    cache_name: str, spec: ModelCacheSpec, mode: str, resolved_revision: str | None
) -> list[dict[str, Any]]:
    """The Job's settings as environment variables (the `inferator prefetch` contract)."""
    source = spec.source
    values: dict[str, str | None] = {
        "INFERATOR_SOURCE": source.uri,
        "INFERATOR_DEST": MOUNT_PATH,
        "INFERATOR_ENDPOINT": source.endpoint,
        "INFERATOR_REGION": source.region,
        "INFERATOR_INCLUDE": "\n".join(source.include) or None,
        "INFERATOR_EXCLUDE": "\n".join(source.exclude) or None,
        "INFERATOR_PARALLEL": str(spec.prefetch.parallel_downloads),
        "INFERATOR_STALL_TIMEOUT": str(spec.prefetch.stall_timeout_seconds),
        "INFERATOR_REVISION": resolved_revision,
        "INFERATOR_MODELCACHE": cache_name,
        "INFERATOR_CONTENT_HASH": content_hash(spec),
        "INFERATOR_MODE": mode,
        "INFERATOR_CREDENTIALS_DIR": CREDENTIALS_DIR if source.credentials_secret else None,
        "HOME": "/tmp",
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items() if v is not None]
    env.append(
        {"name": "INFERATOR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    )
    return env


def render_job(
    cache_name: str,
    namespace: str,
    spec: ModelCacheSpec,
    settings: OperatorSettings,
    *,
    mode: str,
    generation: int,
    resolved_revision: str | None = None,
) -> dict[str, Any]:
    """The sizing (`mode="size"`) or download (`mode="fetch"`) Job for a cache."""
    cache_names = names(cache_name, spec)
    prefetch = spec.prefetch
    return render_manifest(
        "modelcache-job.yaml.j2",
        job_name=cache_names.size_job if mode == "size" else cache_names.fetch_job,
        names=cache_names,
        namespace=namespace,
        labels=labels(cache_name),
        mode=mode,
        content_hash=content_hash(spec),
        generation=generation,
        prefetch=prefetch,
        ownership=spec.ownership,
        source=spec.source,
        image=prefetch.image or settings.prefetch_image,
        in_place=spec.in_place,
        credential_keys=credential_keys(spec.source.uri),
        credential_items=[{"key": k, "path": k} for k in credential_keys(spec.source.uri)],
        credentials_dir=CREDENTIALS_DIR,
        command=["inferator", "prefetch"],
        env=prefetch_env(cache_name, spec, mode, resolved_revision),
        tolerations=[t.to_k8s() for t in prefetch.tolerations or []],
        image_pull_secrets=[r.to_k8s() for r in prefetch.image_pull_secrets or []],
        resources=prefetch.resources.to_k8s() if prefetch.resources else DEFAULT_PREFETCH_RESOURCES,
    )


CHECK_LABEL = "inferator.dev/credentials-check"


def credentials_check_name(cache_name: str) -> str:
    """At most 52 characters, a CronJob's limit (its Jobs add 11)."""
    return f"{bounded(cache_name, _MAX_PREFIX)}-credentials"


def wants_credentials_check(spec: ModelCacheSpec) -> bool:
    """A check needs credentials to check and a remote source (pvc:// has none)."""
    return bool(
        spec.source.credentials_secret
        and spec.credentials_check.enabled
        and credential_keys(spec.source.uri)
        and not spec.in_place
    )


def render_credentials_check(
    cache_name: str, namespace: str, spec: ModelCacheSpec, settings: OperatorSettings, generation: int
) -> dict[str, Any]:
    """The scheduled credentials check: the prefetch Job's pod in `check` mode (the same image,
    service account, Secret keys and placement; no volume but /tmp), one run at a time.

    Its Jobs carry CHECK_LABEL instead of the cache label, so the cache's stale-Job cleanup
    never takes them for an outdated download."""
    job = render_job(cache_name, namespace, spec, settings, mode="check", generation=generation)
    job_spec = dict(job["spec"])
    job_spec["backoffLimit"] = 1
    job_spec.pop("podFailurePolicy", None)
    job_spec["activeDeadlineSeconds"] = 600
    job_spec["ttlSecondsAfterFinished"] = 3600
    job_labels = {k: v for k, v in labels(cache_name).items() if k != CACHE_LABEL}
    job_labels[CHECK_LABEL] = cache_label_value(cache_name)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": credentials_check_name(cache_name),
            "namespace": namespace,
            "labels": job_labels,
        },
        "spec": {
            "schedule": spec.credentials_check.schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": job_labels}, "spec": job_spec},
        },
    }
