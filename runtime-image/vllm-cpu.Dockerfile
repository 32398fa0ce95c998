# syntax=docker/dockerfile:1.7
# Serving image for engine `vllm-cpu`: vLLM's official CPU image (torch +cpu, tcmalloc and Intel
# OpenMP preloaded) plus `inferator runtime` as the entrypoint, which checks the model cache
# against the ServingProfile and then execs the engine's argv unchanged.
# Build from the repository root (BuildKit):
#   docker build -f runtime-image/vllm-cpu.Dockerfile -t ghcr.io/inferator/runtime-vllm-cpu:0.1.0 .

# The inferator wheel is built in a throwaway stage: no build tool reaches the serving image.
FROM python:3.12.12-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM vllm/vllm-openai-cpu:v0.32.0
LABEL org.opencontainers.image.title="inferator-runtime-vllm-cpu" \
      dev.inferator.engine="vllm-cpu" \
      dev.inferator.engine-version="0.32.0"
# The engine image already has what the runtime imports (pydantic, PyYAML; a CPU profile never
# loads NVML), so the wheel goes in without its dependencies: kopf, kubernetes and the rest are
# the operator's.
# Nothing the engine pinned is changed, and the wheel comes through a bind mount, not a layer.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -eux; \
    export PIP_BREAK_SYSTEM_PACKAGES=1; \
    python3 -m pip install --no-cache-dir --no-deps /wheels/inferator-*.whl; \
    inferator runtime --help >/dev/null
# The serving pod runs as the cache's UID with a read-only root filesystem; /tmp is a volume.
ENV HOME=/tmp
WORKDIR /tmp
USER 1000:1000
ENTRYPOINT ["inferator", "runtime"]
