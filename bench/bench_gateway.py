"""Benchmark: what an OpenAI-compatible API gateway costs in front of an inference server.

Run: .venv/bin/python bench/bench_gateway.py [--rate 1000] [--duration 10]
         [--targets direct,litellm,vllm-router,inferator] [--out bench/results/gateway-DATE.md]

Issue #17 puts a gateway (API keys, token quotas, audit log, hold-at-zero) in the path of
every token a user streams. Its cost is what this measures, with the model taken out of the
picture: a fake OpenAI backend (started from this file, `--serve-backend PORT`, pinned to one
core) answers POST /v1/chat/completions and /v1/completions at once, as JSON with `usage` or,
for `"stream": true`, as 16 SSE chunks of one token each (written one by one, as an engine
would), a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`.

Each target is driven by vegeta (built once from the Go module proxy into the tool cache,
like the test bed's binaries) at a fixed rate with streaming chat requests carrying an
`Authorization: Bearer` key:

  - direct: the backend itself, the baseline every gateway is compared with;
  - litellm: the LiteLLM proxy with a static config (one model, `tiny`) and a master key;
  - vllm-router: the Rust vLLM router (PyPI `vllm-router`) with the backend as its only worker;
  - inferator: our gateway (`inferator gateway`, a static route to the backend, one key with a
    quota, usage read from every stream, one audit line per request: its production path).

Per target: p50/p99 latency (vegeta measures until the last byte of the stream), the latency
added over direct, success %, bytes per response (a gateway that answers 200 with an error
inside the stream shows up here), and requests per second per core: requests served divided
by the CPU seconds (utime + stime from /proc, the whole process tree, so multi-process
proxies count every worker) the gateway used during the attack. A fixed rate shows latency at
a realistic load; CPU per request only means something when the process is busy, so a second
attack at a rate beyond what one core can serve (--sat-rate, default 3000/s) gives the
saturated requests/s per core (a gateway that collapses under overload serves ~0 there: its
per-core cost then comes from a run at a rate it can sustain, e.g. `--rate 10 --sat-rate 0`).
Before each attack one streaming and one plain request check that tokens and `usage` pass
through, and one request with a wrong key shows whether the gateway enforces its key at all.
Also recorded: the gateway's peak RSS, and the CPU of the backend and of vegeta.

CPU layout on a small machine: the backend and vegeta share one core, the gateway gets the
other (--backend-cpu, --gateway-cpu, --vegeta-cpu). On 2 cores that shared core, not a fast
gateway, can be what limits the rate (vegeta reading 18 chunks per response costs about as
much as the backend writing them); the report flags rows where it was over 90% busy (from
/proc/stat, so other work on the machine counts too: the "cores busy" column). The
requests/s per core figure stays valid there: it divides by the gateway's own CPU time.
Pinning does not reserve a core, so other work on the machine shows in latency first.

The gateways are not part of the project's environment; install each into a virtualenv of
its own (they pin conflicting dependencies) and point --litellm-bin / --vllm-router-bin at
it, e.g. (1.108.7 is the newest litellm whose [proxy] extra resolves from the registry here):

    python3.11 -m venv /tmp/gweval/litellm-venv
    /tmp/gweval/litellm-venv/bin/pip install 'litellm[proxy]==1.108.7'
    python3.11 -m venv /tmp/gweval/router-venv
    /tmp/gweval/router-venv/bin/pip install 'vllm-router==0.1.17'

Those two paths are also the defaults, after $PATH. A target that is not installed is skipped
with its reason. Writes the results, with the machine and the date, to
bench/results/gateway-<date>.md (--out to change, --no-write to skip). Not a timed test: the
numbers depend on the machine and on what else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferator.dev.toolchain import cache_root

REPO_ROOT = Path(__file__).resolve().parents[1]
VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
VEGETA_VERSION = "v12.13.0"
MODEL = "tiny"
STREAM_TOKENS = 16
# LiteLLM wants master keys to start with "sk-"; the others take any bearer token.
API_KEY = "sk-inferator-bench-0123456789"
WRONG_KEY = "sk-inferator-bench-wrong"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_RATE = 25
# Where the evaluation made the candidates' virtualenvs (see above); looked at after $PATH.
EVAL_ROOT = Path("/tmp/gweval")
CHAT_BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello to the gateway benchmark, one token at a time."}],
    "max_tokens": STREAM_TOKENS,
    "stream": True,
    "stream_options": {"include_usage": True},
}
PLAIN_BODY = {k: v for k, v in CHAT_BODY.items() if k not in ("stream", "stream_options")}


# --------------------------------------------------------------------------- fake backend


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _prompt_tokens(body: dict[str, Any]) -> int:
    """A word count stands in for a tokenizer: gateways only need a plausible `usage`."""
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", ""))
    return max(1, len(text.split()))


class FakeBackend:
    """An OpenAI-compatible server that costs as little as possible per request.

    The chunks are encoded once; a request parses its JSON body (a gateway's upstream must
    see a real request) and writes the prepared bytes, one write per token so that proxies
    relay a real event stream rather than one buffer.
    """

    def __init__(self, tokens: int = STREAM_TOKENS) -> None:
        self.tokens = tokens
        self.created = int(time.time())
        self.chat_chunks = [self._chat_chunk(i, last=False) for i in range(tokens)]
        self.chat_last = self._chat_chunk(tokens - 1, last=True)
        self.text_chunks = [self._text_chunk(last=False) for _ in range(tokens)]
        self.text_last = self._text_chunk(last=True)

    def _chat_chunk(self, index: int, *, last: bool) -> bytes:
        delta: dict[str, str] = {"content": " tok" if index else "tok"}
        if index == 0:
            delta["role"] = "assistant"
        return _sse(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
            }
        )

    def _text_chunk(self, *, last: bool) -> bytes:
        return _sse(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                "created": self.created,
                "model": MODEL,
                "choices": [{"index": 0, "text": " tok", "finish_reason": "stop" if last else None}],
            }
        )

    def _usage(self, body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
        prompt = _prompt_tokens(body)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def app(self) -> Any:
        """The aiohttp application (typed Any: aiohttp is imported only in the server process)."""
        from aiohttp import web

        async def answer(request: web.Request, *, chat: bool) -> web.StreamResponse:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
            if not isinstance(body, dict):
                return web.json_response({"error": {"message": "body is not an object"}}, status=400)
            n = max(1, min(self.tokens, int(body.get("max_tokens") or self.tokens)))
            usage = self._usage(body, n)
            if not body.get("stream"):
                if chat:
                    choice: dict[str, Any] = {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok" + " tok" * (n - 1)},
                        "finish_reason": "stop",
                    }
                    kind, ident = "chat.completion", "chatcmpl-bench"
                else:
                    choice = {"index": 0, "text": " tok" * n, "finish_reason": "stop"}
                    kind, ident = "text_completion", "cmpl-bench"
                return web.json_response(
                    {
                        "id": ident,
                        "object": kind,
                        "created": self.created,
                        "model": MODEL,
                        "choices": [choice],
                        "usage": usage,
                    }
                )
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            chunks, last = (self.chat_chunks, self.chat_last) if chat else (self.text_chunks, self.text_last)
            for chunk in chunks[: n - 1]:
                await response.write(chunk)
            await response.write(last)
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(
                    _sse(
                        {
                            "id": "chatcmpl-bench" if chat else "cmpl-bench",
                            "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": self.created,
                            "model": MODEL,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                )
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        async def chat_completions(request: web.Request) -> web.StreamResponse:
            return await answer(request, chat=True)

        async def completions(request: web.Request) -> web.StreamResponse:
            return await answer(request, chat=False)

        async def models(_: web.Request) -> web.StreamResponse:
            return web.json_response(
                {
                    "object": "list",
                    "data": [{"id": MODEL, "object": "model", "created": self.created, "owned_by": "bench"}],
                }
            )

        async def health(_: web.Request) -> web.StreamResponse:
            return web.Response(text="")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat_completions)
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", health)  # vLLM's liveness path; routers probe it
        return app


def serve_backend(port: int) -> None:
    """Run the fake backend in this process until SIGTERM (no access log: it costs CPU)."""
    from aiohttp import web

    web.run_app(FakeBackend().app(), host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


# --------------------------------------------------------------------------- processes


@dataclass
class Settings:
    """Set once from the command line; read by the start_* functions, whose signature is fixed."""

    workdir: Path = Path(tempfile.gettempdir())
    gateway_cpu: str = "1"
    litellm_bin: str | None = None
    vllm_router_bin: str | None = None


SETTINGS = Settings()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cmd: list[str], cpu: str) -> list[str]:
    """Prefix with taskset, so that one process's CPU time is one core's and noisy neighbours stay off it."""
    return ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") else cmd


def spawn(
    cmd: list[str], name: str, env: dict[str, str | None] | None = None, cpu: str | None = None
) -> subprocess.Popen[bytes]:
    """Start a server pinned to `cpu` (default: the gateway core), in its own process group.

    taskset execs the command, so the returned pid is the server's own. `env` adds to this
    process's environment; a None value removes the variable. Output goes to
    <workdir>/<name>.log, shown when it fails to come up.
    """
    environment = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    with (SETTINGS.workdir / f"{name}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            pinned(cmd, cpu or SETTINGS.gateway_cpu),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this script started, SIGKILL after 10 s.

    The group, not just the pid: a proxy's workers may outlive a leader that already exited.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def log_tail(name: str, lines: int = 15) -> str:
    path = SETTINGS.workdir / f"{name}.log"
    if not path.exists():
        return ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))  # colour codes
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _stat(pid: int) -> list[str] | None:
    try:
        # The command name may hold spaces and parentheses: split after the last ")".
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_tree(root: int) -> list[int]:
    """The root and all its live descendants (uvicorn workers, multiprocessing children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of the live tree, plus the root's cutime + cstime for children already reaped."""
    total = 0
    for pid in process_tree(root):
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
            if pid == root:
                total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def tree_peak_rss_mib(root: int) -> float:
    """Peak resident memory (VmHWM) summed over the live tree: what a pod's memory request must cover."""
    total_kib = 0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def wait_ready(base_url: str, proc: subprocess.Popen[bytes] | None, name: str, timeout: float) -> None:
    """Poll GET /v1/models with the key until it answers 200 (gateways load their config first)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_tail(name)}")
        request = urllib.request.Request(  # noqa: S310 (loopback URL)
            f"{base_url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback URL)
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s ({last}):\n{log_tail(name)}")


def find_tool(name: str, explicit: str | None, fallback: Path) -> Path:
    """--<name>-bin, else $PATH, else the evaluation venv; FileNotFoundError means: skip the target."""
    for candidate in (explicit,) if explicit else (shutil.which(name), str(fallback)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise FileNotFoundError(f"`{name}` not found ({explicit or f'$PATH, {fallback}'})")


def dist_version(binary: Path, dist: str) -> str:
    """The version of `dist` in the virtualenv that holds `binary` (its sibling python)."""
    python = binary.parent / "python"
    if not python.exists():
        return "?"
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


# --------------------------------------------------------------------------- targets


def start_litellm(backend_url: str, port: int, key: str) -> subprocess.Popen[bytes]:
    """LiteLLM proxy: static config, one model, master key; no database, so no virtual keys.

    LITELLM_LOCAL_MODEL_COST_MAP keeps it from fetching its price list from the internet at
    import (no network here; it would wait for a timeout). One worker: the per-core figure
    is what we compare, and more workers would only share the same pinned core.
    """
    binary = find_tool("litellm", SETTINGS.litellm_bin, EVAL_ROOT / "litellm-venv" / "bin" / "litellm")
    config = SETTINGS.workdir / "litellm.yaml"
    config.write_text(  # JSON is YAML; no YAML library needed here
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": backend_url,
                            "api_key": "none",
                        },
                    }
                ],
                "general_settings": {"master_key": key},
                "litellm_settings": {"telemetry": False},
            },
            indent=2,
        )
    )
    env: dict[str, str | None] = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",  # do not read a .env found above the install folder
        "DATABASE_URL": None,  # set but empty is an error; unset means: no database
    }
    cmd = [
        str(binary),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    return spawn(cmd, "litellm", env)


def start_vllm_router(backend_url: str, port: int, key: str) -> subprocess.Popen[bytes]:
    """The Rust vLLM router (PyPI vllm-router) with the backend as its one static worker.

    Its --api-key is the key it sends to workers; whether it also checks clients' keys is
    what the wrong-key probe reports. Round robin: with one worker the policy only costs.
    """
    binary = find_tool(
        "vllm-router", SETTINGS.vllm_router_bin, EVAL_ROOT / "router-venv" / "bin" / "vllm-router"
    )
    worker = backend_url.removesuffix("/v1")
    cmd = [
        str(binary),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        worker,
        "--policy",
        "round_robin",
        "--api-key",
        key,
        "--log-level",
        "warning",
        "--prometheus-port",
        str(free_port()),
    ]
    return spawn(cmd, "vllm-router", {"RUST_LOG": "warn"})


def start_inferator(backend_url: str, port: int, key: str) -> subprocess.Popen[bytes]:
    """Inferator's gateway (`inferator gateway`) with a static route to the backend.

    The same process and code path as in an InferenceGateway's pod, with the key checked,
    the quota counted (a limit far above the run), usage read from the stream and one audit
    line per request written to its log, as in production; only discovery is static.
    """
    key_file = SETTINGS.workdir / "inferator-key"
    key_file.write_text(key)
    config = {
        "keys": [{"id": "bench", "file": str(key_file), "models": ["*"], "tokens_per_minute": 10**12}],
        "static_routes": {"tiny": {"upstreams": [backend_url.removesuffix("/v1").rstrip("/")]}},
    }
    path = SETTINGS.workdir / "inferator-gateway.json"
    path.write_text(json.dumps(config))
    return spawn([sys.executable, "-m", "inferator.cli", "gateway", "--config", str(path), "--host", "127.0.0.1",
                  "--port", str(port)], "inferator")  # fmt: skip


@dataclass(frozen=True)
class Gateway:
    """A target behind which the backend sits; `start` raises FileNotFoundError when not installed."""

    name: str
    start: Callable[[str, int, str], subprocess.Popen[bytes]]
    version: Callable[[], str]
    ready_timeout_s: float = 120.0


def _version_of(
    name: str, explicit: Callable[[], str | None], fallback: Path, dist: str
) -> Callable[[], str]:
    def version() -> str:
        try:
            return dist_version(find_tool(name, explicit(), fallback), dist)
        except FileNotFoundError:
            return "-"

    return version


GATEWAYS = {
    "litellm": Gateway(
        "litellm",
        start_litellm,
        _version_of(
            "litellm", lambda: SETTINGS.litellm_bin, EVAL_ROOT / "litellm-venv/bin/litellm", "litellm"
        ),
        ready_timeout_s=180.0,
    ),
    "vllm-router": Gateway(
        "vllm-router",
        start_vllm_router,
        _version_of(
            "vllm-router",
            lambda: SETTINGS.vllm_router_bin,
            EVAL_ROOT / "router-venv/bin/vllm-router",
            "vllm-router",
        ),
    ),
    "inferator": Gateway("inferator", start_inferator, lambda: "dev"),
}
ALL_TARGETS = ("direct", *GATEWAYS)


# --------------------------------------------------------------------------- checks


def _post(url: str, body: dict[str, Any], key: str) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 (loopback URL)
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback URL)
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def smoke_check(base_url: str) -> str:
    """One streaming request, one plain one, one with a wrong key: what passes through the gateway.

    A gateway that drops the usage chunk or the [DONE] line cannot meter tokens or breaks
    clients; one that accepts any key is no gateway for issue #17. Reported, not asserted.
    """
    notes = []
    status, body = _post(f"{base_url}/v1/chat/completions", CHAT_BODY, API_KEY)
    if status != 200:
        notes.append(f"stream: HTTP {status} {body[:120]!r}")
    else:
        events = [
            line[6:] for line in body.decode(errors="replace").splitlines() if line.startswith("data: ")
        ]
        tokens, usage = 0, False
        for event in events:
            if event.strip() == "[DONE]":
                continue
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError, AttributeError):
                chunk = json.loads(event)
                usage = usage or bool((chunk.get("usage") or {}).get("completion_tokens"))
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    tokens += 1
        done = bool(events) and events[-1].strip() == "[DONE]"
        notes.append(
            f"stream: {tokens} token chunks, usage {'yes' if usage else 'NO'}, [DONE] {'yes' if done else 'NO'}"
        )
    status, body = _post(f"{base_url}/v1/chat/completions", PLAIN_BODY, API_KEY)
    try:
        plain_usage = json.loads(body).get("usage") or {}
    except ValueError:
        plain_usage = {}
    notes.append(f"plain: HTTP {status}, usage {'yes' if plain_usage.get('total_tokens') else 'NO'}")
    status, _ = _post(f"{base_url}/v1/chat/completions", PLAIN_BODY, WRONG_KEY)
    notes.append(f"wrong key: HTTP {status}")
    return "; ".join(notes)


# --------------------------------------------------------------------------- load generator


def vegeta_binary() -> Path:
    """vegeta, built from the Go module proxy once per version (no release downloads here)."""
    path = cache_root() / "bin" / f"vegeta-{VEGETA_VERSION}"
    if path.exists():
        return path
    if shutil.which("go") is None:
        raise SystemExit("building vegeta needs Go (`go` on $PATH)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inferator-build-vegeta-") as tmp:
        env = dict(os.environ, CGO_ENABLED="0", GOBIN=tmp, GOFLAGS="-buildvcs=false")
        cmd = ["go", "install", "-ldflags=-s -w", f"{VEGETA_MODULE}@{VEGETA_VERSION}"]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=tmp, env=env, check=True)
        partial = path.parent / (path.name + ".partial")
        shutil.move(str(Path(tmp) / "vegeta"), partial)
        partial.replace(path)  # atomic: a half-written binary never looks built
    return path


@dataclass
class Attack:
    """vegeta's JSON report, the parts we use (latencies in ms)."""

    offered_rate: int
    requests: int
    success: float
    throughput: float
    rate: float
    p50_ms: float
    p99_ms: float
    bytes_per_response: float
    status_codes: dict[str, int]
    errors: list[str]
    loadgen_cpu_s: float

    @property
    def served(self) -> int:
        return round(self.requests * self.success)


def attack(
    vegeta: Path, url: str, rate: int, duration_s: float, args: argparse.Namespace, tag: str
) -> Attack:
    """A fixed-rate open-loop attack: vegeta keeps the rate while the target slows, up to
    --max-workers requests in flight (beyond that it falls behind: the achieved rate shows it)."""
    target = {
        "method": "POST",
        "url": url,
        "body": base64.b64encode(json.dumps(CHAT_BODY).encode()).decode(),
        "header": {"Authorization": [f"Bearer {API_KEY}"], "Content-Type": ["application/json"]},
    }
    targets = SETTINGS.workdir / "targets.json"
    targets.write_text(json.dumps(target) + "\n")
    results = SETTINGS.workdir / f"results-{tag}.bin"
    cmd = [
        str(vegeta),
        "attack",
        "-format=json",
        f"-targets={targets}",
        f"-rate={rate}/1s",
        f"-duration={duration_s}s",
        f"-timeout={args.timeout}s",
        f"-max-workers={args.max_workers}",
        f"-output={results}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(pinned(cmd, args.vegeta_cpu), check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # vegeta itself: taskset execs it
    report = json.loads(
        subprocess.run(
            [str(vegeta), "report", "-type=json", str(results)], capture_output=True, text=True, check=True
        ).stdout
    )
    requests = int(report["requests"])
    latencies = report["latencies"]
    return Attack(
        offered_rate=rate,
        requests=requests,
        success=float(report["success"]),
        throughput=float(report["throughput"]),
        rate=float(report["rate"]),
        p50_ms=latencies["50th"] / 1e6,
        p99_ms=latencies["99th"] / 1e6,
        bytes_per_response=report["bytes_in"]["total"] / requests if requests else 0.0,
        status_codes={str(k): int(v) for k, v in (report.get("status_codes") or {}).items()},
        errors=list(report.get("errors") or [])[:3],
        loadgen_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


@dataclass
class Measurement:
    """One attack on one target with the CPU its gateway (and the backend) used meanwhile."""

    attack: Attack
    gateway_cpu_s: float
    backend_cpu_s: float
    wall_s: float
    loadgen_core_busy: float  # % of the backend/vegeta core busy with anything, neighbours included
    gateway_core_busy: float

    @property
    def per_core(self) -> float:
        return self.attack.served / self.gateway_cpu_s if self.gateway_cpu_s > 0 else float("nan")


def measure(
    vegeta: Path,
    url: str,
    gateway_pid: int,
    backend_pid: int,
    rate: int,
    duration_s: float,
    args: argparse.Namespace,
    tag: str,
) -> Measurement:
    """CPU seconds are read around the whole attack, including vegeta's wait for late answers."""
    gateway_before, backend_before = tree_cpu_seconds(gateway_pid), tree_cpu_seconds(backend_pid)
    cores_before = core_jiffies()
    start = time.monotonic()
    result = attack(vegeta, url, rate, duration_s, args, tag)
    wall = time.monotonic() - start
    cores_after = core_jiffies()
    return Measurement(
        attack=result,
        gateway_cpu_s=tree_cpu_seconds(gateway_pid) - gateway_before,
        backend_cpu_s=tree_cpu_seconds(backend_pid) - backend_before,
        wall_s=wall,
        loadgen_core_busy=core_busy(cores_before, cores_after, args.backend_cpu),
        gateway_core_busy=core_busy(cores_before, cores_after, args.gateway_cpu),
    )


def core_jiffies() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat: pinning does not keep other work off a core."""
    cores = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
            cores[name[3:]] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return cores


def core_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], core: str) -> float:
    """Percent busy of one core between two samples (NaN for a core list such as '0-1')."""
    if core not in before or core not in after:
        return float("nan")
    busy, total = (after[core][0] - before[core][0]), (after[core][1] - before[core][1])
    return 100 * busy / total if total > 0 else float("nan")


@dataclass
class TargetResult:
    name: str
    version: str = "-"
    skipped: str | None = None
    checks: str = ""
    fixed: Measurement | None = None
    saturated: Measurement | None = None
    loadavg: str = ""
    peak_rss_mib: float = float("nan")
    notes: list[str] = field(default_factory=list)


def run_target(
    name: str, vegeta: Path, backend_url: str, backend: subprocess.Popen[bytes], args: argparse.Namespace
) -> TargetResult:
    """Start the target (unless direct), check it, warm it up, then the two attacks; always stop it."""
    result = TargetResult(name)
    proc: subprocess.Popen[bytes] | None = None
    if name == "direct":
        base_url, pid, result.version = backend_url.removesuffix("/v1"), backend.pid, "aiohttp fake"
    else:
        gateway = GATEWAYS[name]
        result.version = gateway.version()
        port = free_port()
        try:
            proc = gateway.start(backend_url, port, API_KEY)
        except NotImplementedError as error:
            result.skipped = f"not available: {error}"
            return result
        except FileNotFoundError as error:
            result.skipped = f"not installed: {error}"
            return result
        base_url, pid = f"http://127.0.0.1:{port}", proc.pid
    try:
        started = time.monotonic()
        try:
            wait_ready(base_url, proc, name, GATEWAYS[name].ready_timeout_s if proc else 30.0)
        except RuntimeError as error:
            result.skipped = f"failed to start: {error}"
            return result
        print(f"[{name}] ready in {time.monotonic() - started:.1f} s", flush=True)
        result.checks = smoke_check(base_url)
        print(f"[{name}] {result.checks}", flush=True)
        url = f"{base_url}/v1/chat/completions"
        if args.warmup > 0:
            # Gentle: a slow gateway must not still be draining a warm-up backlog when measured.
            attack(vegeta, url, min(args.rate, WARMUP_RATE), args.warmup, args, f"{name}-warmup")
        result.loadavg = Path("/proc/loadavg").read_text().split(" ", 3)[0]
        result.fixed = measure(vegeta, url, pid, backend.pid, args.rate, args.duration, args, f"{name}-fixed")
        print(f"[{name}] fixed: {describe(result.fixed)}", flush=True)
        if args.sat_rate > 0:
            result.saturated = measure(
                vegeta, url, pid, backend.pid, args.sat_rate, args.sat_duration, args, f"{name}-saturated"
            )
            print(f"[{name}] saturated: {describe(result.saturated)}", flush=True)
        result.peak_rss_mib = tree_peak_rss_mib(pid)
        return result
    finally:
        if proc is not None:
            stop(proc)


def describe(m: Measurement) -> str:
    a = m.attack
    return (
        f"{a.requests} requests at {a.rate:.0f}/s, success {a.success:.1%}, p50 {a.p50_ms:.2f} ms, "
        f"p99 {a.p99_ms:.2f} ms, gateway CPU {m.gateway_cpu_s:.2f} s -> {m.per_core:.0f} req/s per core, "
        f"backend CPU {m.backend_cpu_s:.2f} s, vegeta CPU {a.loadgen_cpu_s:.2f} s"
        + (f", errors {a.errors}" if a.errors else "")
    )


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _added(value: float, base: float | None) -> str:
    return "-" if base is None else f"{value - base:+.2f}"


def render(results: list[TargetResult], args: argparse.Namespace, vegeta: Path) -> str:
    info = machine()
    today = datetime.date.today().isoformat()
    direct = next((r for r in results if r.name == "direct" and r.fixed), None)
    base50 = direct.fixed.attack.p50_ms if direct and direct.fixed else None
    base99 = direct.fixed.attack.p99_ms if direct and direct.fixed else None
    lines = [
        f"# Gateway overhead, {today}",
        "",
        "`.venv/bin/python bench/bench_gateway.py` " + " ".join(sys.argv[1:]),
        "",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} memory, Linux {info['kernel']}, "
        f"Python {info['python']}",
        f"- load: vegeta {VEGETA_VERSION} ({vegeta}), open loop, streaming chat requests "
        f"({STREAM_TOKENS} one-token SSE chunks + usage chunk + [DONE]) with a bearer key; "
        f"{args.rate}/s for {args.duration} s"
        + (f", saturation at {args.sat_rate}/s for {args.sat_duration} s" if args.sat_rate > 0 else "")
        + f"; warm-up {args.warmup} s at {min(args.rate, WARMUP_RATE)}/s; at most {args.max_workers} requests "
        f"in flight, {args.timeout} s timeout",
        f"- cores: backend on {args.backend_cpu}, gateway on {args.gateway_cpu}, vegeta on {args.vegeta_cpu} "
        "(taskset); latency is to the last byte of the stream",
        "- req/s per core: requests served / CPU seconds (utime + stime of the gateway's process tree) "
        "during the attack; for `direct` that is the fake backend itself",
        "",
        f"## Fixed rate ({args.rate}/s)",
        "",
        "| target | version | achieved req/s | success | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| bytes/resp | gateway CPU s | gateway CPU % | req/s per core | peak RSS MiB | backend CPU s "
        "| vegeta CPU s | cores busy % (load/gw) | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.fixed is None:
            continue
        m, a = r.fixed, r.fixed.attack
        lines.append(
            f"| {r.name} | {r.version} | {a.rate:.0f} | {a.success:.2%} | {_ms(a.p50_ms)} | {_ms(a.p99_ms)} "
            f"| {_added(a.p50_ms, base50 if r.name != 'direct' else None)} "
            f"| {_added(a.p99_ms, base99 if r.name != 'direct' else None)} | {a.bytes_per_response:.0f} "
            f"| {m.gateway_cpu_s:.2f} | {100 * m.gateway_cpu_s / m.wall_s:.0f} | {m.per_core:.0f} "
            f"| {r.peak_rss_mib:.0f} | {m.backend_cpu_s:.2f} | {a.loadgen_cpu_s:.2f} "
            f"| {m.loadgen_core_busy:.0f}/{m.gateway_core_busy:.0f} | {r.loadavg} |"
        )
    if args.sat_rate > 0:
        lines += [
            "",
            f"## Saturation ({args.sat_rate}/s offered)",
            "",
            "| target | served req/s | success | p50 ms | p99 ms | gateway CPU s | gateway CPU % "
            "| req/s per core | backend CPU s | vegeta CPU s | cores busy % (load/gw) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            if r.saturated is None:
                continue
            m, a = r.saturated, r.saturated.attack
            lines.append(
                f"| {r.name} | {a.throughput:.0f} | {a.success:.2%} | {_ms(a.p50_ms)} | {_ms(a.p99_ms)} "
                f"| {m.gateway_cpu_s:.2f} | {100 * m.gateway_cpu_s / m.wall_s:.0f} | {m.per_core:.0f} "
                f"| {m.backend_cpu_s:.2f} | {a.loadgen_cpu_s:.2f} "
                f"| {m.loadgen_core_busy:.0f}/{m.gateway_core_busy:.0f} |"
            )
    warnings = [
        f"- {r.name} ({kind}): core {args.backend_cpu} (backend + vegeta) was {run.loadgen_core_busy:.0f}% busy "
        f"({100 * (run.backend_cpu_s + run.attack.loadgen_cpu_s) / run.wall_s:.0f}% ours)"
        + (
            ""
            if r.name == "direct"
            else f", core {args.gateway_cpu} {run.gateway_core_busy:.0f}% "
            f"({100 * run.gateway_cpu_s / run.wall_s:.0f}% the gateway's)"
        )
        + "; that core (the load generator, or other work on the machine), not the gateway, "
        "may have set this row's rate and latency"
        for r in results
        for kind, run in (("fixed", r.fixed), ("saturation", r.saturated))
        if run is not None and run.loadgen_core_busy > 90
    ]
    if warnings:
        lines += ["", "## Load generator limits", "", *warnings]
    lines += ["", "## Checks and skipped targets", ""]
    for r in results:
        if r.skipped:
            reason = " / ".join(line.strip() for line in r.skipped.splitlines() if line.strip())
            lines.append(f"- {r.name}: skipped, {reason[:600]}")
        else:
            lines.append(f"- {r.name} ({r.version}): {r.checks}")
        for run in (r.fixed, r.saturated):
            if run is not None and (run.attack.errors or set(run.attack.status_codes) - {"200"}):
                lines.append(f"  - status codes {run.attack.status_codes}, errors {run.attack.errors}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    today = datetime.date.today().isoformat()
    two_cores = (os.cpu_count() or 1) >= 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=1000, help="requests per second of the fixed-rate attack")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the fixed-rate attack")
    parser.add_argument(
        "--sat-rate", type=int, default=3000, help="offered rate of the saturation attack (0: skip)"
    )
    parser.add_argument("--sat-duration", type=float, default=10.0, help="seconds of the saturation attack")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--max-workers", type=int, default=512, help="vegeta's cap on requests in flight")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before vegeta gives up on a request"
    )
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma-separated, of {ALL_TARGETS}")
    parser.add_argument("--backend-cpu", default="0")
    parser.add_argument("--gateway-cpu", default="1" if two_cores else "0")
    parser.add_argument("--vegeta-cpu", default="0")
    parser.add_argument("--litellm-bin", help="the `litellm` script of a virtualenv with litellm[proxy]")
    parser.add_argument("--vllm-router-bin", help="the `vllm-router` script of a virtualenv with vllm-router")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / f"gateway-{today}.md")
    parser.add_argument("--no-write", action="store_true", help="print the results only")
    parser.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.targets.split(",")) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {ALL_TARGETS}")
    return args


@contextlib.contextmanager
def backend_process(cpu: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The fake backend as its own process, pinned: its CPU is not the gateway's or this script's."""
    port = free_port()
    proc = spawn(
        [sys.executable, str(Path(__file__).resolve()), "--serve-backend", str(port)], "backend", cpu=cpu
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, "backend", 30.0)
        yield f"{base}/v1", proc
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    SETTINGS.workdir = Path(tempfile.mkdtemp(prefix="inferator-bench-gateway-"))
    SETTINGS.gateway_cpu = args.gateway_cpu
    SETTINGS.litellm_bin = args.litellm_bin
    SETTINGS.vllm_router_bin = args.vllm_router_bin
    vegeta = vegeta_binary()
    names = [t for t in ALL_TARGETS if t in args.targets.split(",")]
    results: list[TargetResult] = []
    for name in names:
        # A fresh backend per target: one that times out (LiteLLM) leaves hundreds of abandoned
        # streams behind, which slowed whichever target came next.
        with backend_process(args.backend_cpu) as (backend_url, backend):
            print(f"[{name}] starting", flush=True)
            result = run_target(name, vegeta, backend_url, backend, args)
            if result.skipped:
                print(f"[{name}] skipped: {result.skipped}", flush=True)
            results.append(result)
    report = render(results, args, vegeta)
    print(report)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}")
    if any(r.skipped and r.skipped.startswith("failed") for r in results):
        print(f"logs kept in {SETTINGS.workdir}")
    else:
        shutil.rmtree(SETTINGS.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
