"""Operator settings: images and defaults a platform team sets once (Helm values → environment)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from inferator import __version__

DEFAULT_REGISTRY = "ghcr.io/inferator"


class OperatorSettings(BaseModel):
    """Read from INFERATOR_* environment variables; the chart sets them from values.yaml."""

    prefetch_image: str = f"{DEFAULT_REGISTRY}/inferator:{__version__}"
    # The InferenceGateway's pods run `inferator gateway` from the same image by default.
    gateway_image: str = f"{DEFAULT_REGISTRY}/inferator:{__version__}"
    engine_images: dict[str, str] = Field(
        default_factory=lambda: {
            "vllm": f"{DEFAULT_REGISTRY}/runtime-vllm:{__version__}",
            "trtllm": f"{DEFAULT_REGISTRY}/runtime-trtllm:{__version__}",
            "sglang": f"{DEFAULT_REGISTRY}/runtime-sglang:{__version__}",
            "vllm-cpu": f"{DEFAULT_REGISTRY}/runtime-vllm-cpu:{__version__}",
        }
    )
    # Prefetch images a ModelCache may ask for besides `prefetch_image` (fnmatch patterns such
    # as "registry.corp/inferator:*"). Empty: only the operator's own. The Job runs with the
    # cache's credentials, so the platform team, not every author of a ModelCache, picks it.
    prefetch_images_allowed: list[str] = Field(default_factory=list)
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
        settings.gateway_image = env.get("INFERATOR_GATEWAY_IMAGE") or settings.prefetch_image
        if allowed := env.get("INFERATOR_PREFETCH_IMAGES_ALLOWED"):
            settings.prefetch_images_allowed = [p.strip() for p in allowed.split(",") if p.strip()]
        for engine in list(settings.engine_images):
            key = "INFERATOR_IMAGE_" + engine.upper().replace("-", "_")
            if image := env.get(key):
                settings.engine_images[engine] = image
        return settings

    def prefetch_image_allowed(self, image: str) -> bool:
        from fnmatch import fnmatchcase

        return image == self.prefetch_image or any(
            fnmatchcase(image, p) for p in self.prefetch_images_allowed
        )
