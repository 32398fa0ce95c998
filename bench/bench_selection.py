"""Benchmark: profile selection for 50 models x 1,000 nodes (issue 3 asks for well under a second).

Run: .venv/bin/python bench/bench_selection.py [--repeat 5]
Prints the best and median wall time of each phase over the repeats and writes them, with the
machine and the date, to bench/results/selection-<date>.md (--out to change, --no-write to skip).
Not a timed test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.api.modelcache import ModelFacts
from inferator.profiles import facts_from_config, gpu_pools, pools_for_spec, select_profile

GPU_LABELS = [
    ("NVIDIA-H100-80GB-HBM3", 81559, 9, 0),
    ("NVIDIA-H200", 143771, 9, 0),
    ("NVIDIA-A100-SXM4-40GB", 40960, 8, 0),
    ("A100-SXM4-80GB", 81920, 8, 0),
    ("NVIDIA-L4", 23034, 8, 9),
    ("NVIDIA-L40S", 46068, 8, 9),
    ("NVIDIA-A10G", 23028, 8, 6),
    ("NVIDIA-B200", 183359, 10, 0),
]
# (hidden, intermediate, heads, kv heads, layers, vocab, experts) of published model families.
SHAPES = [
    (4096, 14336, 32, 8, 32, 128256, None),  # Llama-3.1-8B
    (8192, 28672, 64, 8, 80, 128256, None),  # Llama-3.1-70B
    (16384, 53248, 128, 8, 126, 128256, None),  # Llama-3.1-405B
    (4096, 14336, 32, 8, 32, 32000, 8),  # Mixtral-8x7B
    (3584, 18944, 28, 4, 28, 152064, None),  # Qwen2.5-7B
    (8192, 29568, 64, 8, 80, 152064, None),  # Qwen2.5-72B
]


def make_nodes(count: int, rng: random.Random) -> list[dict[str, Any]]:
    nodes = []
    for index in range(count):
        if index % 50 == 0:
            nodes.append(
                {"metadata": {"name": f"cpu-{index}"}, "status": {"allocatable": {"memory": "256Gi"}}}
            )
            continue
        product, memory, major, minor = rng.choice(GPU_LABELS)
        gpus = rng.choice([1, 2, 4, 8, 8, 8])
        node: dict[str, Any] = {
            "metadata": {
                "name": f"gpu-{index:04d}",
                "labels": {
                    "nvidia.com/gpu.product": product + ("-SHARED" if index % 97 == 0 else ""),
                    "nvidia.com/gpu.memory": str(memory),
                    "nvidia.com/gpu.compute.major": str(major),
                    "nvidia.com/gpu.compute.minor": str(minor),
                },
            },
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "memory": "1Ti"}},
        }
        if index % 113 == 0:
            node["spec"]["unschedulable"] = True
        nodes.append(node)
    return nodes


def make_models(count: int, rng: random.Random) -> list[ModelFacts]:
    models = []
    for index in range(count):
        hidden, inter, heads, kv, layers, vocab, experts = SHAPES[index % len(SHAPES)]
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "num_hidden_layers": max(1, layers + rng.randint(-4, 4)),
            "max_position_embeddings": rng.choice([8192, 32768, 131072]),
            "vocab_size": vocab,
            "torch_dtype": "bfloat16",
        }
        if experts:
            config["num_local_experts"] = experts
            config["num_experts_per_tok"] = 2
        if index % 10 == 9:
            config["quantization_config"] = {"quant_method": "fp8"}
        models.append(facts_from_config(config))
    return models


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="result file (default bench/results/selection-<date>.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rng = random.Random(3)  # noqa: S311 - a fixed, reproducible workload, not a secret
    nodes = make_nodes(args.nodes, rng)
    models = make_models(args.models, rng)
    spec = InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "bench"}})
    scan = pools_for_spec(nodes, spec)
    print(
        f"{args.models} models x {args.nodes} nodes -> {len(scan.pools)} pools, {len(scan.excluded)} nodes left out"
    )

    def each_from_nodes() -> None:
        for facts in models:
            select_profile(facts, nodes, spec)

    def each_from_scan() -> None:
        for facts in models:
            select_profile(facts, scan, spec)

    results = {
        "group 1,000 nodes into pools (once)": timed(lambda: gpu_pools(nodes), args.repeat),
        "select 50 models, pools from the node list each time": timed(each_from_nodes, args.repeat),
        "select 50 models, pools reused (PoolScan)": timed(each_from_scan, args.repeat),
    }
    candidates = sum(len(select_profile(f, scan, spec).candidates) for f in models)
    lines = [
        f"{args.models} models x {args.nodes} nodes -> {len(scan.pools)} pools, {len(scan.excluded)} nodes left out"
    ]
    for label, (best, median) in results.items():
        lines.append(f"{label:<56} best {best * 1000:8.1f} ms   median {median * 1000:8.1f} ms")
    lines.append(f"candidates scored per run: {candidates}")
    print("\n".join(lines[1:]))
    if not args.no_write:
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        out = args.out or Path(__file__).parent / "results" / f"selection-{today}.md"
        out.write_text(_report(today, args.repeat, lines))
        print(f"wrote {out}")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.machine()}"


def _report(today: str, repeat: int, lines: list[str]) -> str:
    body = "\n".join(lines)
    return (
        f"# Profile selection benchmark — {today}\n\n"
        f"- Command: `.venv/bin/python bench/bench_selection.py --repeat {repeat}`\n"
        f"- Machine: {_machine()}\n\n"
        f"```\n{body}\n```\n"
    )


if __name__ == "__main__":
    main()
