"""Engine launch: the exact argv, endpoints, environment and pod needs of each OpenAI server.

Every argument the engines default differently between releases is passed explicitly
(host, port, memory fraction, context length), so a profile means the same thing on any
image version. `extra_args` from the spec are appended last: argparse lets the later flag
win, which is how a user overrides one of ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from inferator.api.inferenceservice import Engine, Precision, Target

PORT = 8000
GIB = 2**30

# Environment every engine gets: the model is on a read-only volume, never fetched at start,
# and nothing phones home (vLLM usage stats, generic DO_NOT_TRACK).
COMMON_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
VLLM_ENV: dict[str, str] = {"VLLM_NO_USAGE_STATS": "1"}
SGLANG_ENV: dict[str, str] = {"SGLANG_DISABLE_USAGE_STATS": "1"}

# /dev/shm: NCCL and the engines' worker processes exchange tensors through it under TP > 1;
# NIM's docs ask for 16 GB on multi-GPU runs. A single GPU (and the CPU engine) needs little.
SHM_BYTES_SINGLE = 2 * GIB
SHM_BYTES_MULTI_GPU = 16 * GIB

# Sequences scheduled at once: small batches keep per-token latency low; vLLM's default (256)
# for throughput. Always at least the user's minConcurrency.
MAX_NUM_SEQS: dict[Target, int] = {"latency": 64, "throughput": 256}

_DTYPE_ARG: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the pod needs to know about an engine, independent of the profile."""

    engine: Engine
    port: int
    health_path: str
    metrics_path: str
    readiness_path: str
    env: dict[str, str] = field(default_factory=dict)


ENGINES: dict[Engine, EngineInfo] = {
    # vLLM docs, "OpenAI-Compatible Server": /health (503 when the engine died), /metrics.
    "vllm": EngineInfo("vllm", PORT, "/health", "/metrics", "/v1/models", COMMON_ENV | VLLM_ENV),
    # trtllm-serve docs: /health, /health_generate; Prometheus at /prometheus/metrics.
    "trtllm": EngineInfo("trtllm", PORT, "/health", "/prometheus/metrics", "/v1/models", dict(COMMON_ENV)),
    # SGLang docs: /health, /health_generate; /metrics with --enable-metrics.
    "sglang": EngineInfo("sglang", PORT, "/health", "/metrics", "/v1/models", COMMON_ENV | SGLANG_ENV),
    # vLLM's CPU backend serves the same API as vLLM.
    "vllm-cpu": EngineInfo(
        "vllm-cpu",
        PORT,
        "/health",
        "/metrics",
        "/v1/models",
        COMMON_ENV | VLLM_ENV | {"VLLM_TARGET_DEVICE": "cpu"},
    ),
}


@dataclass(frozen=True, slots=True)
class LaunchInputs:
    """Everything an engine's command line depends on."""

    engine: Engine
    model_dir: str
    served_model_name: str
    precision: Precision
    online_quantization: bool  # fp8 from a bf16/fp16 checkpoint (vLLM/SGLang --quantization fp8)
    tensor_parallel_size: int
    target: Target
    max_model_len: int
    min_concurrency: int
    gpu_memory_utilization: float
    # Fractions of GPU memory in each engine's own terms (see engine_memory_fractions).
    trtllm_kv_cache_free_fraction: float = 0.9
    sglang_mem_fraction_static: float = 0.85
    cpu_kv_cache_space_gib: int = 1
    extra_args: tuple[str, ...] = ()
    # generate, or a pooling task (embed, rerank, classify) served by the engine's pooling runner.
    task: str = "generate"
    # vLLM's --convert for a causal LM served as a pooling model (Qwen3-Embedding): embed or classify.
    convert: str | None = None
    # Nodes one replica spans: one pipeline stage per node (see multi_node_args).
    nodes: int = 1


def max_num_seqs(target: Target, min_concurrency: int) -> int:
    return max(MAX_NUM_SEQS[target], min_concurrency)


def _fraction(value: float) -> str:
    return f"{value:.2f}"


def engine_command(inputs: LaunchInputs) -> list[str]:
    """The full argv of the engine's OpenAI-compatible server for one profile."""
    seqs = str(max_num_seqs(inputs.target, inputs.min_concurrency))
    tp = str(inputs.tensor_parallel_size)
    dtype = _DTYPE_ARG.get(inputs.precision, "bfloat16")
    if inputs.engine in ("vllm", "vllm-cpu"):
        argv = [
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            inputs.model_dir,
            "--served-model-name",
            inputs.served_model_name,
            "--host",
            "0.0.0.0",  # noqa: S104 - a server in a pod listens on the pod's address
            "--port",
            str(PORT),
            "--max-model-len",
            str(inputs.max_model_len),
            "--max-num-seqs",
            seqs,
        ]
        if inputs.task != "generate":
            # vLLM's pooling runner (docs: "Pooling Models"); --convert turns a causal LM into an embedder.
            argv += ["--runner", "pooling"]
            if inputs.convert:
                argv += ["--convert", inputs.convert]
        if inputs.engine == "vllm":
            argv += [
                "--tensor-parallel-size",
                tp,
                "--gpu-memory-utilization",
                _fraction(inputs.gpu_memory_utilization),
            ]
            if inputs.precision in _DTYPE_ARG:
                argv += ["--dtype", dtype]
            if inputs.online_quantization:
                argv += ["--quantization", inputs.precision]
        else:
            argv += ["--dtype", dtype]
    elif inputs.engine == "trtllm":
        argv = [
            "trtllm-serve",
            "serve",
            inputs.model_dir,
            "--host",
            "0.0.0.0",  # noqa: S104 - trtllm-serve binds localhost unless told
            "--port",
            str(PORT),
            "--backend",
            "pytorch",
            "--tp_size",
            tp,
            "--max_seq_len",
            str(inputs.max_model_len),
            "--max_batch_size",
            seqs,
            "--kv_cache_free_gpu_memory_fraction",
            _fraction(inputs.trtllm_kv_cache_free_fraction),
        ]
    else:  # sglang
        argv = [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            inputs.model_dir,
            "--served-model-name",
            inputs.served_model_name,
            "--host",
            "0.0.0.0",  # noqa: S104 - SGLang binds 127.0.0.1 unless told
            "--port",
            str(PORT),
            "--tp",
            tp,
            "--context-length",
            str(inputs.max_model_len),
            "--mem-fraction-static",
            _fraction(inputs.sglang_mem_fraction_static),
            "--max-running-requests",
            seqs,
            "--enable-metrics",
        ]
        if inputs.task != "generate":
            argv += ["--is-embedding"]  # SGLang's pooling mode (embeddings and rerank scores)
        if inputs.task == "rerank":
            # SGLang's rerank-models page: cross-encoders run without the radix cache, in one
            # chunk, on the triton attention backend.
            argv += ["--disable-radix-cache", "--chunked-prefill-size", "-1", "--attention-backend", "triton"]
        if inputs.precision in _DTYPE_ARG:
            argv += ["--dtype", dtype]
        if inputs.online_quantization:
            argv += ["--quantization", inputs.precision]
    if inputs.nodes > 1:
        if inputs.engine in ("vllm", "vllm-cpu"):
            # The module entry point has no --headless: multi-node runs through `vllm serve`,
            # which starts no API server on the workers. Same flags, the model positional.
            argv = ["vllm", "serve", inputs.model_dir, *argv[5:]]
        argv += multi_node_args(inputs.engine, inputs.nodes)
    return argv + list(inputs.extra_args)


# The rendezvous port of a multi-node group (the leader listens, the workers connect).
RENDEZVOUS_PORT = 29500
# What the runtime adds on each pod of a group, from its rank and the leader's address.
RANK_ENV = "INFERATOR_NODE_RANK"
LEADER_ENV = "INFERATOR_LEADER_ADDRESS"
# The same, as a LeaderWorkerSet sets them in every container (LWS 0.6 and later).
LWS_RANK_ENV = "LWS_WORKER_INDEX"
LWS_LEADER_ENV = "LWS_LEADER_ADDRESS"


def multi_node_args(engine: Engine, nodes: int) -> list[str]:
    """The arguments every pod of a group shares: pipeline stages = nodes. The pod's rank and the
    leader's address are known only in the pod; `rank_args` adds them there.

    vLLM (docs, "Parallelism and scaling", multi-node without Ray): `--nnodes`, `--node-rank`,
    `--master-addr`, `--master-port`, and `--headless` on every node but the first.
    SGLang (server arguments): `--nnodes`, `--node-rank`, `--dist-init-addr host:port`, `--pp-size`.
    vLLM's CPU backend takes vLLM's launch (over gloo): selection never spans nodes on CPUs, but
    it is how the launch is run for real without GPUs (tests/runtime/test_multi_node_launch.py).
    """
    if engine in ("vllm", "vllm-cpu"):
        return [
            "--pipeline-parallel-size",
            str(nodes),
            "--nnodes",
            str(nodes),
            "--master-port",
            str(RENDEZVOUS_PORT),
        ]
    if engine == "sglang":
        return ["--pp-size", str(nodes), "--nnodes", str(nodes)]
    raise ValueError(f"engine {engine} has no multi-node launch here")


def rank_args(engine: Engine, rank: int, leader: str) -> list[str]:
    """The arguments of one pod of a group: its rank and where the leader listens."""
    if engine in ("vllm", "vllm-cpu"):
        return ["--node-rank", str(rank), "--master-addr", leader, *(["--headless"] if rank > 0 else [])]
    if engine == "sglang":
        return ["--node-rank", str(rank), "--dist-init-addr", f"{leader}:{RENDEZVOUS_PORT}"]
    raise ValueError(f"engine {engine} has no multi-node launch here")


def listen_port(extra_args: tuple[str, ...] | list[str], default: int = PORT) -> int:
    """The port the server will listen on: the last `--port` in the user's extra args wins, as in
    the engine's own argument parsing, so probes, the Service and the warm-up follow it."""
    port = default
    for i, arg in enumerate(extra_args):
        value = None
        if arg == "--port" and i + 1 < len(extra_args):
            value = extra_args[i + 1]
        elif arg.startswith("--port="):
            value = arg.partition("=")[2]
        if value is not None and value.isdigit() and 0 < int(value) < 65536:
            port = int(value)
    return port


def engine_env(inputs: LaunchInputs) -> dict[str, str]:
    """Environment for the serving container (the CPU engine's KV space is an env var, in GiB)."""
    env = dict(ENGINES[inputs.engine].env)
    if inputs.engine == "vllm-cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(inputs.cpu_kv_cache_space_gib)
    return env


def shm_size_bytes(engine: Engine, tensor_parallel_size: int) -> int:
    return SHM_BYTES_MULTI_GPU if engine != "vllm-cpu" and tensor_parallel_size > 1 else SHM_BYTES_SINGLE


# Host memory of a GPU serving process outside /dev/shm: Python, torch and the CUDA runtime's
# host side, pinned staging buffers and the tokenizer, per GPU worker (vLLM runs one process per
# TP rank). vLLM on an H100 settles around 2.5-3.5 GiB RSS per worker; 4 GiB leaves room for
# the API server and the detokenizer.
HOST_BYTES_PER_GPU_WORKER = 4 * 2**30


def gpu_host_memory_request_bytes(engine: Engine, gpu_count: int, tensor_parallel_size: int) -> int:
    """The memory request of a GPU serving pod: its workers plus the memory-backed /dev/shm.

    Without one the pod is BestEffort (GPUs are not a QoS resource): host memory unreserved, and
    the first evicted under node pressure. The emptyDir at /dev/shm is counted against the pod's
    memory, so it is part of the request.
    """
    return max(1, gpu_count) * HOST_BYTES_PER_GPU_WORKER + shm_size_bytes(engine, tensor_parallel_size)


def trtllm_kv_cache_free_fraction(
    gpu_memory_bytes: int,
    gpu_memory_utilization: float,
    weight_bytes_per_gpu: int,
    overhead_bytes_per_gpu: int,
) -> float:
    """trtllm-serve's KV fraction is a share of memory free *after* weights load; translate ours to it.

    We want the KV pool to be what vLLM would get: utilization x total - weights - overhead.
    Rounded down to two decimals and kept within [0.05, 0.95].
    """
    free_after_weights = gpu_memory_bytes - weight_bytes_per_gpu - overhead_bytes_per_gpu
    if free_after_weights <= 0:
        return 0.05
    wanted = gpu_memory_bytes * gpu_memory_utilization - weight_bytes_per_gpu - overhead_bytes_per_gpu
    return min(0.95, max(0.05, math.floor(100 * wanted / free_after_weights) / 100))


def sglang_mem_fraction_static(
    gpu_memory_bytes: int, gpu_memory_utilization: float, activation_and_graph_bytes: int
) -> float:
    """SGLang's static fraction covers weights and KV pool only; activations and graphs live outside it."""
    wanted = gpu_memory_bytes * gpu_memory_utilization - activation_and_graph_bytes
    return min(0.95, max(0.05, math.floor(100 * wanted / gpu_memory_bytes) / 100))


def cpu_kv_cache_space_gib(kv_required_bytes: int) -> int:
    """VLLM_CPU_KVCACHE_SPACE (GiB, integer): the KV the profile needs, rounded up, at least 1.

    Not the whole memory budget: vLLM-CPU allocates all of it at start, and a development node
    shares its memory with everything else.
    """
    return max(1, math.ceil(kv_required_bytes / GIB))
