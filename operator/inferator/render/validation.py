"""The validation Job of an InferenceService: what it runs, and the key of what it measures."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from inferator.api.inferenceservice import Validation
from inferator.api.profile import DEFAULT_MODEL_DIR
from inferator.render.inferenceservice import SERVICE_LABEL, VALIDATION_LABEL, ServingInputs, labels
from inferator.render.templating import render_manifest

KEY_ANNOTATION = "inferator.dev/validation-key"
# The load generator is vLLM's benchmark, which every vLLM serving image carries; services on
# other engines are measured from the vLLM image of the same kind (CPU or GPU build).
BENCH_ENGINE = {"vllm-cpu": "vllm-cpu", "vllm": "vllm", "sglang": "vllm", "trtllm": "vllm"}
DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}


def bench_image(inputs: ServingInputs) -> str:
    """The serving image itself where it has vLLM (a user's image override included), else the
    operator's vLLM image."""
    profile = inputs.selection.profile
    assert profile is not None
    if profile.engine in ("vllm", "vllm-cpu") and inputs.spec.image:
        return inputs.spec.image
    return inputs.settings.engine_images[BENCH_ENGINE.get(profile.engine, "vllm")]


def validation_key(inputs: ServingInputs, validation: Validation) -> str:
    """What a run measured. The SLOs are left out: they judge stored numbers, and a new target
    must not cost a new load test."""
    profile = inputs.selection.profile
    assert profile is not None
    measured = {
        "profile": profile.model_dump(mode="json", by_alias=True, exclude_none=True),
        "image": inputs.spec.image or inputs.settings.engine_images.get(profile.engine, ""),
        "cache": inputs.cache_revision,
        "load": validation.model_dump(
            mode="json", include={"concurrency", "requests_per_level", "input_tokens", "output_tokens"}
        ),
    }
    return hashlib.sha256(json.dumps(measured, sort_keys=True).encode()).hexdigest()[:16]


def job_name(service: str, key: str, generation: int) -> str:
    """At most 63 characters (the Job's name is also a label value on its pods). The generation
    makes a retry after a spec change a new Job rather than the failed one found again."""
    suffix = f"-validate-{key[:10]}-{generation}"
    return service[: 63 - len(suffix)] + suffix


def render_job(
    inputs: ServingInputs, validation: Validation, key: str, pod_ip: str, generation: int = 1
) -> dict[str, Any]:
    """The Job measuring the pod at `pod_ip`: one pod, so numbers are per replica and the KV
    peak is that pod's. It runs where the service's own scheduling says (its node selector
    and tolerations), not on the GPU pool: it needs no GPU."""
    profile = inputs.selection.profile
    assert profile is not None
    scheduling = inputs.spec.scheduling
    levels = ",".join(str(c) for c in validation.concurrency)
    command = ["inferator", "validate", "--url", f"http://{pod_ip}:{profile.port}",
               "--model", profile.served_model_name, "--tokenizer", DEFAULT_MODEL_DIR,
               "--concurrency", levels, "--requests", str(validation.requests_per_level),
               "--input-tokens", str(validation.input_tokens),
               "--output-tokens", str(validation.output_tokens),
               "--metrics-path", profile.metrics_path]  # fmt: skip
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HUB_OFFLINE", "value": "1"},
           {"name": "TRANSFORMERS_OFFLINE", "value": "1"}, {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
           {"name": "DO_NOT_TRACK", "value": "1"}]  # fmt: skip
    if ref := inputs.spec.serving.api_key_secret:
        # vLLM's benchmark sends OPENAI_API_KEY as the bearer token; the pod reads the Secret.
        env.append(
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    user = validation.resources
    resources = user.to_k8s() if user and (user.requests or user.limits) else DEFAULT_RESOURCES
    service_labels = labels(inputs.name)
    pod_labels = {k: v for k, v in service_labels.items() if k != SERVICE_LABEL}
    pod_labels |= {"app.kubernetes.io/name": "inferator-validation", VALIDATION_LABEL: inputs.name}
    return render_manifest(
        "validation-job.yaml.j2",
        job_name=job_name(inputs.name, key, generation),
        namespace=inputs.namespace,
        labels={**service_labels, VALIDATION_LABEL: inputs.name},
        pod_labels=pod_labels,
        profile=profile.name,
        key=key,
        timeout_seconds=validation.timeout_seconds,
        ownership=inputs.ownership,
        node_selector=scheduling.node_selector if scheduling and scheduling.node_selector else None,
        tolerations=[t.to_k8s() for t in scheduling.tolerations or []] if scheduling else [],
        image_pull_secrets=[r.to_k8s() for r in scheduling.image_pull_secrets or []] if scheduling else [],
        image=bench_image(inputs),
        command=command,
        env=env,
        resources=resources,
        model_dir=DEFAULT_MODEL_DIR,
        model_subpath=inputs.model_subpath,
        pvc_name=inputs.pvc_name,
    )
