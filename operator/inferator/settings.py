"""Operator settings: images and defaults a platform team sets once (Helm values → environment)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from inferator import __version__

DEFAULT_REGISTRY = "ghcr.io/inferator"


class OperatorSettings(BaseModel):
    """Read from INFERATOR_* environment variables; the chart sets them from values.yaml."""

    prefetch_image: str = f"{DEFAULT_REGISTRY}/inferator:{__version__}"
    engine_images: dict[str, str] = Field(
        default_factory=lambda: {
            "vllm": f"{DEFAULT_REGISTRY}/runtime-vllm:{__version__}",
            "trtllm": f"{DEFAULT_REGISTRY}/runtime-trtllm:{__version__}",
            "sglang": f"{DEFAULT_REGISTRY}/runtime-sglang:{__version__}",
            "vllm-cpu": f"{DEFAULT_REGISTRY}/runtime-vllm-cpu:{__version__}",
        }
    )
    operator_namespace: str = "inferator-system"
    # KEDA's Prometheus trigger reads engine metrics from here.
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    pvc_headroom_ratio: float = 0.10  # room for the manifest, partial files and a revision bump
    pvc_headroom_min_bytes: int = 1 << 30

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ) if env is None else env
        settings = cls()
        if namespace := env.get("POD_NAMESPACE"):
            settings.operator_namespace = namespace
        if url := env.get("INFERATOR_PROMETHEUS_URL"):
            settings.prometheus_url = url
        if image := env.get("INFERATOR_PREFETCH_IMAGE"):
            settings.prefetch_image = image
        for engine in list(settings.engine_images):
            key = "INFERATOR_IMAGE_" + engine.upper().replace("-", "_")
            if image := env.get(key):
                settings.engine_images[engine] = image
        return settings
