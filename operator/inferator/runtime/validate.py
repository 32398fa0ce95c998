"""`inferator validate`: the load test a validation Job runs against one serving pod.

The load comes from vLLM's own benchmark (`vllm bench serve`, `vllm.benchmarks.serve`): the
tool vLLM's users already quote numbers from, and it is in every serving image that has
vLLM, so the Job needs no image of its own. It speaks the OpenAI completions API, so it
measures SGLang and TensorRT-LLM servers the same way. One run per concurrency level, a
fixed random prompt set (seeded: the same prompts for every profile), bounded in requests.

Beside the load, the engine's /metrics are sampled for KV-cache use at idle and at the peak
of the load. The summary, at most a few hundred bytes per level, is written to the
container's termination log, where the operator reads it from the pod's status: the Job
needs no API access and no credentials of the operator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

# The engine's own gauge of KV-cache use (0..1), as ENGINE_SIGNALS names it for autoscaling.
KV_USAGE_METRICS = ("vllm:kv_cache_usage_perc", "sglang:token_usage")
SAMPLE_INTERVAL_S = 0.25
TERMINATION_LOG = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096


def bench_argv(
    url: str,
    model: str,
    tokenizer: str,
    concurrency: int,
    requests: int,
    input_tokens: int,
    output_tokens: int,
) -> list[str]:
    """The arguments of `vllm bench serve` for one level: random prompts of a fixed length,
    every request generating exactly `output_tokens` (ignore_eos), all sent at once and held
    to `concurrency` in flight."""
    return [
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", model, "--served-model-name", model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(input_tokens),
        "--random-output-len", str(output_tokens), "--random-range-ratio", "0",
        "--num-prompts", str(requests), "--max-concurrency", str(concurrency),
        "--request-rate", "inf", "--ignore-eos", "--seed", "0", "--disable-tqdm",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--ready-check-timeout-sec", "60",
    ]  # fmt: skip


def _ms(result: dict[str, Any], key: str) -> float | None:
    value = result.get(key)
    return round(float(value), 2) if isinstance(value, (int, float)) else None


def summarize(concurrency: int, result: dict[str, Any]) -> dict[str, Any]:
    """One level of the benchmark's result as status reports it (milliseconds, tokens/s)."""
    return {
        "concurrency": concurrency,
        "requests": int(result.get("completed") or 0),
        "failed": int(result.get("failed") or 0),
        "ttftP50Ms": _ms(result, "median_ttft_ms"),
        "ttftP99Ms": _ms(result, "p99_ttft_ms"),
        "interTokenLatencyP50Ms": _ms(result, "median_itl_ms"),
        "interTokenLatencyP99Ms": _ms(result, "p99_itl_ms"),
        "outputTokensPerSecond": round(float(result.get("output_throughput") or 0.0), 2),
        "durationSeconds": round(float(result.get("duration") or 0.0), 2),
    }


def kv_usage(metrics_text: str) -> float | None:
    """The largest KV-cache use any engine gauge reports in a /metrics page (0..1)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name in KV_USAGE_METRICS
    ]
    return max(values) if values else None


def kv_cache_tokens(metrics_text: str) -> int | None:
    """Tokens the engine's KV cache holds (vLLM's cache_config_info: blocks x block size)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name.startswith("vllm:cache_config_info"):
                tokens = sample.labels.get("kv_cache_size_tokens") or ""
                if tokens.isdigit():
                    return int(tokens)
                blocks, size = sample.labels.get("num_gpu_blocks"), sample.labels.get("block_size")
                if blocks and size and blocks.isdigit() and size.isdigit():
                    return int(blocks) * int(size)
    return None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a pod IP the operator chose)
        return str(response.read().decode())


class KvSampler:
    """Samples KV-cache use in a thread while the load runs; keeps the peak."""

    def __init__(self, metrics_url: str) -> None:
        self.metrics_url = metrics_url
        self.peak: float | None = None
        self._stop = threading.Event()

    def sample(self) -> float | None:
        try:
            value = kv_usage(_get(self.metrics_url))
        except (OSError, ValueError):
            return None
        if value is not None:
            self.peak = value if self.peak is None else max(self.peak, value)
        return value

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        def loop() -> None:
            while not self._stop.wait(SAMPLE_INTERVAL_S):
                self.sample()

        thread = threading.Thread(target=loop, name="kv-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=15)
            self.sample()


def run_level(argv: list[str]) -> dict[str, Any]:
    """One `vllm bench serve` run in this process; its result dictionary."""
    from vllm.benchmarks import serve  # the engine image's own; imported late: heavy
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    result: dict[str, Any] = serve.main(parser.parse_args(argv))
    return result


def termination_message(report: dict[str, Any]) -> str:
    """The report as compact JSON within the kubelet's limit: levels are dropped from the end
    (the highest concurrency) rather than the message cut mid-JSON."""
    report = dict(report)
    text = json.dumps(report, separators=(",", ":"))
    while len(text.encode()) > TERMINATION_LIMIT and report.get("levels"):
        report["levels"] = report["levels"][:-1]
        report["truncated"] = True
        text = json.dumps(report, separators=(",", ":"))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferator validate", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the serving pod, e.g. http://10.0.0.5:8000")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--tokenizer", required=True, help="the model's directory (for prompt lengths)")
    parser.add_argument("--concurrency", required=True, help="comma-separated levels, e.g. 1,4,16")
    parser.add_argument("--requests", type=int, required=True, help="requests per level (at least the level)")
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--metrics-path", default="/metrics")
    parser.add_argument(
        "--termination-log", default=os.environ.get("INFERATOR_TERMINATION_LOG", TERMINATION_LOG)
    )
    args = parser.parse_args(argv)
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    sampler = KvSampler(args.url.rstrip("/") + args.metrics_path)
    report: dict[str, Any] = {"kvCacheIdle": sampler.sample(), "levels": []}
    with contextlib.suppress(OSError, ValueError):
        report["kvCacheTokens"] = kv_cache_tokens(_get(sampler.metrics_url))
    sampler.peak = None  # the peak is taken under load only
    status = 0
    try:
        with sampler.running():
            for level in levels:
                argv_level = bench_argv(args.url.rstrip("/"), args.model, args.tokenizer, level,
                                        max(args.requests, level), args.input_tokens, args.output_tokens)  # fmt: skip
                started = time.monotonic()
                summary = summarize(level, run_level(argv_level))
                report["levels"].append(summary)
                print(f"validate: concurrency {level}: {json.dumps(summary)} ({time.monotonic() - started:.0f} s)",
                      flush=True)  # fmt: skip
    except Exception as exc:  # the message goes to status: the type and text, never the environment
        report["error"] = f"{type(exc).__name__}: {exc}"[:500]
        status = 1
    report["kvCachePeak"] = sampler.peak
    report = {k: v for k, v in report.items() if v is not None}
    message = termination_message(report)
    print(f"validate: {message}", flush=True)
    with contextlib.suppress(OSError), open(args.termination_log, "w") as log:
        log.write(message)
    return status


if __name__ == "__main__":
    sys.exit(main())
