"""The embedded default's story: one apply to an answer, next to GPU examples planned for real pools.

`inferator dev demo` (and the cluster-tier test that runs the same functions) does, in order:

1. a tiny Llama checkpoint is generated once (`tiny_model`, under `.venv-vllm`'s torch) and
   served over HTTP on loopback as a file list with sha256s, like an internal mirror;
2. a ModelCache and an InferenceService for it are applied: the operator's prefetch Job
   really downloads and verifies it onto a PVC on the runner node (the test bed's one node
   whose pods really run), the profile is selected (vllm-cpu on that node), vLLM-CPU starts
   from the cache, and the readiness gate opens after the operator's warm-up completion;
3. a chat completion is sent to the server and printed, with the command to repeat it.

The GPU examples in `examples/` are applied too. Their nodes are simulated (KWOK): pods there
are marked running but no container runs, so no prefetch Job can download anything and no
engine can answer. The demo therefore reports for each of their caches what a prefetch Job
would have measured, the facts of the model's real config.json (`examples/plan/`), with no
weights, labelled as such. Their profiles are then selected against the simulated pools for
real, and they stay Deploying: the warm-up has no engine to reach, which the demo says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferator.api.modelcache import Progress
from inferator.dev.cluster import LocalCluster, free_port
from inferator.dev.runner import RUNNER_LABEL
from inferator.dev.tiny_model import VLLM_VENV, write_tiny_llama

API = "inferator.dev/v1alpha1"
TINY = "tiny-llama"
ON_RUNNER: dict[str, Any] = {
    "nodeSelector": {RUNNER_LABEL: "true"},
    "tolerations": [{"key": RUNNER_LABEL, "operator": "Exists"}],
}
# The GPU examples' caches and the config.json whose facts stand in for their prefetch Job.
SIMULATED_SOURCES = {
    "llama-3-1-8b-instruct": "plan/llama-3.1-8b-config.json",
    "qwen2-5-7b-instruct": "plan/qwen2.5-7b-instruct-config.json",
}
SIMULATED_NOTE = (
    "simulated GPU node: no container runs there, so the demo reported the facts of the model's "
    "config.json for its prefetch Job (no weights downloaded)"
)
# vLLM-CPU's first start compiles the model (about 60-150 s on 2 cores); later starts reuse
# ~/.cache/vllm. Prefetch, scheduling and warm-up add seconds.
READY_TIMEOUT_S = 900


# KWOK's upstream pod-ready stage marks a pod Ready and every readiness gate True, so a
# simulated pod would look warmed up. The demo's copy leaves the product's own gate to the
# operator (and so Ready False while it is closed, as a kubelet would): on a simulated node the
# warm-up finds no engine and the service stays Deploying, saying why.
_GATES_ALL = "{{ range .spec.readinessGates }}\n"
_READY_TRUE = 'status: "True"\n        type: Ready\n'


def kwok_stages(state_dir: Path) -> Path:
    """The demo's KWOK stages: upstream's, except that the model-ready gate is not faked."""
    from inferator.dev import toolchain
    from inferator.render.inferenceservice import READINESS_GATE

    upstream = toolchain.kwok_stages_path().read_text()
    stage = upstream.index("name: pod-ready")
    if upstream.count(_GATES_ALL) != 1 or _READY_TRUE not in upstream[stage:]:
        raise RuntimeError(f"unexpected KWOK stages in {toolchain.kwok_stages_path()}: pod-ready")
    start = upstream.index(_GATES_ALL)
    end = upstream.index("{{ end }}", start)
    patched = (
        upstream[:start]
        + '{{ range .spec.readinessGates }}{{ if ne .conditionType "'
        + READINESS_GATE
        + '" }}\n'
        + upstream[start + len(_GATES_ALL) : end]
        + "{{ end }}{{ end }}"
        + upstream[end + len("{{ end }}") :]
    )
    gated = (
        '{{ $gated := false }}{{ range .spec.readinessGates }}{{ if eq .conditionType "'
        + READINESS_GATE
        + '" }}{{ $gated = true }}{{ end }}{{ end }}'
    )
    ready = 'status: {{ if $gated }}"False"{{ else }}"True"{{ end }}\n        type: Ready\n'
    at = patched.index(_READY_TRUE, stage)
    patched = patched[:at] + ready + patched[at + len(_READY_TRUE) :]
    now = patched.index("{{ $now := Now }}\n", stage) + len("{{ $now := Now }}\n")
    patched = patched[:now] + "      " + gated + "\n" + patched[now:]
    target = state_dir / "kwok-stages.yaml"
    target.write_text(patched)
    return target


def runner_images() -> dict[str, str]:
    """What the runner node runs for an image: a virtualenv here (there are no images)."""
    from inferator.settings import OperatorSettings

    vllm_cpu = OperatorSettings().engine_images["vllm-cpu"].rsplit(":", 1)[0]
    return {"*": str(Path(sys.executable).parent), vllm_cpu: str(VLLM_VENV / "bin")}


class StepLog:
    """One line per step with the seconds it took: a slow step never looks like a hang."""

    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self.out = out or (lambda line: print(line, flush=True))
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, line: str) -> None:
        self.out(f"[{time.monotonic() - self.started:6.0f}s] {line}")

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.say(f"{what} ...")
        t0 = time.monotonic()
        yield
        self.timings[what] = time.monotonic() - t0
        self.say(f"{what}: done in {self.timings[what]:.0f} s")


# -- the tiny model and its mirror -------------------------------------------------------------


def tiny_model_source(models: Path) -> Path:
    """The tiny checkpoint as a mirror holds it (no cache manifest) plus its file list; made once."""
    root = models / TINY
    listing = models / f"{TINY}.files"
    if not listing.exists():
        shutil.rmtree(root, ignore_errors=True)
        write_tiny_llama(root)
        shutil.rmtree(root / ".inferator")  # what write_tiny_llama leaves for a cache, not a mirror
        lines = [
            f"{TINY}/{p.name} {_sha256(p)}" for p in sorted(root.iterdir()) if p.is_file()
        ]  # relative URLs: they resolve against the list's own URL
        listing.write_text("\n".join(lines) + "\n")
    return listing


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_mirror(cluster: LocalCluster, root: Path) -> str:
    """A static HTTP server on loopback for `root`, kept running with the cluster; its base URL."""
    pid_file = cluster.state_dir / "pids" / "mirror.pid"
    port_file = cluster.state_dir / "mirror.port"
    if alive_pid(pid_file) is not None and port_file.exists():
        return f"http://127.0.0.1:{port_file.read_text().strip()}"
    # The same port as last time when it is free: the ModelCache's source URL (its spec) stays
    # the same across `make down` / `make demo`, so the cache is not fetched again.
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    log = open(cluster.logs / "mirror.log", "ab")  # noqa: SIM115 (handed to the child)
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    port_file.write_text(str(port))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/", timeout=2):  # noqa: S310 (http on loopback)
                return url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the model mirror did not answer on {url}: see {cluster.logs / 'mirror.log'}")


def stop_mirror(cluster: LocalCluster) -> None:
    pid_file = cluster.state_dir / "pids" / "mirror.pid"
    if (pid := alive_pid(pid_file)) is not None:
        os.kill(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def alive_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process still runs."""
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def tiny_manifests(namespace: str, source_url: str, port: int) -> list[dict[str, Any]]:
    """What a user would apply for the tiny model: a cache from the mirror and a service on it.

    Every pod of the runner node shares this machine's loopback, so the server takes a free
    port instead of the engine's default 8000.
    """
    return [
        {"apiVersion": API, "kind": "ModelCache", "metadata": {"name": TINY, "namespace": namespace},
         "spec": {"source": {"uri": source_url}, "storage": {"size": "1Gi"}, "prefetch": ON_RUNNER}},
        {"apiVersion": API, "kind": "InferenceService", "metadata": {"name": TINY, "namespace": namespace},
         "spec": {"modelCacheRef": {"name": TINY}, "scheduling": ON_RUNNER,
                  "selector": {"engines": ["vllm-cpu"]},
                  "serving": {"maxModelLen": 1024, "servedModelName": TINY,
                              "extraArgs": ["--port", str(port)]}}},
    ]  # fmt: skip


# -- the GPU examples ----------------------------------------------------------------------------


def report_simulated_prefetch(
    cluster: LocalCluster, examples: Path, objects: list[dict[str, Any]]
) -> list[str]:
    """Patch each simulated example cache's status as its prefetch Job would; the names patched.

    Run before the operator first sees the caches, so it never starts a sizing Job that a
    simulated node would "complete" without a report.
    """
    from inferator.api import ModelCacheSpec
    from inferator.prefetch.report import final_status
    from inferator.profiles.model_facts import facts_from_config
    from inferator.render.modelcache import content_hash

    patched = []
    for obj in objects:
        name = obj["metadata"]["name"]
        config = SIMULATED_SOURCES.get(name)
        if obj["kind"] != "ModelCache" or config is None or not (examples / config).exists():
            continue
        facts = facts_from_config(json.loads((examples / config).read_text()))
        spec = ModelCacheSpec.model_validate(obj["spec"])
        done = Progress(
            bytes_done=facts.weight_bytes, bytes_total=facts.weight_bytes, files_done=1, files_total=1
        )
        status = final_status(content_hash(spec), facts.weight_bytes, None, facts, done)
        cluster.kubectl(
            "patch", "mcache", name, "-n", obj["metadata"]["namespace"], "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip
        patched.append(name)
    return patched


# -- waiting and asking --------------------------------------------------------------------------


def get(cluster: LocalCluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    conds = obj.get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == "Ready"), {})


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
            return True
    except OSError:
        return False


def wait_serving(
    cluster: LocalCluster, namespace: str, port: int, progress: StepLog, timeout_s: float = READY_TIMEOUT_S
) -> dict[str, Any]:
    """Until the tiny InferenceService is Ready, printing each change of its or its cache's state."""
    deadline = time.monotonic() + timeout_s
    last: tuple[str, ...] = ()
    while time.monotonic() < deadline:
        cache = get(cluster, "modelcache", TINY, namespace)
        svc = get(cluster, "inferenceservice", TINY, namespace)
        cs, ss = cache.get("status", {}), svc.get("status", {})
        progress_note = ""
        if (p := cs.get("progress")) and cs.get("phase") == "Downloading":
            progress_note = (
                f" ({p.get('bytesDone', 0) / 2**20:.1f} of {p.get('bytesTotal', 0) / 2**20:.1f} MiB)"
            )
        now = (
            f"ModelCache {cs.get('phase', 'Pending')}{progress_note}",
            f"InferenceService {ss.get('phase', 'Pending')}: {_ready(svc).get('message', '')}",
        )
        if now != last:
            progress.say("; ".join(now))
            last = now
        # Ready in status and the server answering: after `make down` and a new `make demo`
        # the status is from before until the operator looks again.
        if _ready(svc).get("status") == "True" and _answers(port):
            return svc
        if ss.get("phase") in ("Failed", "NoCompatibleProfile") or cs.get("phase") == "Failed":
            raise RuntimeError(f"the demo's service did not come up: {now[0]}; {now[1]}")
        time.sleep(2)
    raise TimeoutError(f"the demo's service was not Ready after {timeout_s:.0f} s: {last}")


@dataclass(frozen=True)
class Answer:
    url: str
    request: dict[str, Any]
    text: str
    completion_tokens: int


def ask(port: int, question: str = "Say hello in three words.") -> Answer:
    """One chat completion, as any OpenAI client would send it."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    payload = {"model": TINY, "messages": [{"role": "user", "content": question}], "max_tokens": 16}
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 (http on loopback)
        body = json.loads(response.read())
    return Answer(
        url,
        payload,
        str(body["choices"][0]["message"]["content"]),
        int(body["usage"]["completion_tokens"]),
    )


def curl_command(answer: Answer) -> str:
    return f"curl -s {answer.url} -H 'Content-Type: application/json' -d '{json.dumps(answer.request)}'"


def serve_tiny_model(
    cluster: LocalCluster, namespace: str, progress: StepLog, manifests_dir: Path
) -> tuple[dict[str, Any], Answer]:
    """Steps 1-3 of the module docstring; the Ready InferenceService and its answer."""
    models = cluster.state_dir / "models"
    models.mkdir(exist_ok=True)
    with progress.step("Making the tiny model (once: about 10 s)"):
        listing = tiny_model_source(models)
    url = start_mirror(cluster, models)
    progress.say(f"model mirror: {url}/{listing.name}")
    port_file = cluster.state_dir / "demo-serving.port"
    if not port_file.exists():
        port_file.write_text(str(free_port()))
    port = int(port_file.read_text())
    objects = tiny_manifests(namespace, f"{url}/{listing.name}", port)
    manifests_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifests_dir / f"{TINY}.yaml"
    import yaml

    manifest.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    cluster.apply(objects)
    progress.say(f"applied {manifest}")
    with progress.step("Prefetch, profile selection, vLLM-CPU start and warm-up (first run 1-3 min)"):
        svc = wait_serving(cluster, namespace, port, progress)
    answer = ask(port)
    return svc, answer
