"""The serving profile: the contract between the operator (which selects it) and the runtime (which asserts it).

The operator serialises a `ServingProfile` into the serving container's environment
(`INFERATOR_PROFILE`, JSON). The container re-checks the hardware it landed on against it
and then executes `command` unchanged: nothing is re-selected inside the container.
"""

from __future__ import annotations

from pydantic import Field

from inferator.api.common import ApiModel
from inferator.api.inferenceservice import Engine, Precision, Target
from inferator.api.modelcache import ModelTask

PROFILE_ENV = "INFERATOR_PROFILE"
MODEL_DIR_ENV = "INFERATOR_MODEL_DIR"
# "in-place" for pvc:// caches: no manifest; the runtime checks the files against their headers.
CACHE_CHECK_ENV = "INFERATOR_CACHE_CHECK"
# The engine's API key, from spec.serving.apiKeySecret (a secretKeyRef: never in the spec itself).
API_KEY_ENV = "INFERATOR_API_KEY"
TERMINATION_LOG_ENV = "INFERATOR_TERMINATION_LOG"  # default /dev/termination-log
DEFAULT_MODEL_DIR = "/models"


class ServingProfile(ApiModel):
    name: str = Field(description="<engine>-<gpu>-<precision>-tp<N>-<target>, e.g. vllm-h100-fp8-tp2-latency")
    engine: Engine
    precision: Precision
    tensor_parallel_size: int = Field(ge=1)
    nodes: int = Field(
        default=1,
        ge=1,
        description="Nodes one replica spans (pipeline stages); each node runs tensorParallelSize GPUs.",
    )
    target: Target
    gpu_product: str | None = Field(
        default=None, description="Normalised nvidia.com/gpu.product the profile was chosen for; None on CPU."
    )
    gpu_short_name: str | None = None
    gpu_count: int = Field(default=0, ge=0, description="GPUs the container must see (0 for vllm-cpu).")
    required_gpu_memory_bytes: int = Field(
        default=0, ge=0, description="Memory each GPU must offer (total, as NVML reports it)."
    )
    command: list[str] = Field(description="Full argv of the engine's OpenAI server, executed as is.")
    served_model_name: str
    task: ModelTask = Field(
        default="generate", description="What the server answers; the warm-up calls this task's endpoint."
    )
    port: int = Field(default=8000, ge=1, le=65535)
    health_path: str = "/health"
    metrics_path: str = "/metrics"
