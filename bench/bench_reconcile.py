"""Benchmark: 1,000 InferenceServices applied in one burst to the local control plane.

Run: .venv/bin/python bench/bench_reconcile.py [--services 1000] [--caches 10] [--quiet-s 60]

Starts a fresh test-bed control plane (KWOK GPU nodes, every request audited), the operator
as a real `inferator run` process, and --caches ModelCaches, waits until they are Ready, then
creates --services InferenceServices from 16 client threads as fast as the API server takes
them (services reference the caches round-robin). Measured:

  - settle: from the first create until every service has its Deployment and a status for
    its generation with Ready and Available conditions True (Ready's reason is ScaledToZero:
    the services ask for `replicas: 0`, see below; Available follows the Deployment's rollout);
  - apply to rendered, per service: from its create returning to its Deployment arriving on
    this script's watch (p50, p99, max);
  - the operator's CPU seconds (utime + stime) and peak RSS (VmHWM), from /proc;
  - the operator's API requests during the burst, from the API server's audit log (user agents
    kopf/… and inferator/…), by verb;
  - then a quiet minute: its writes (must be zero) and CPU seconds.

The floor, in the same run, first: bench/floor, a controller written with controller-runtime
(Go, built once per source from the module proxy and cached like the test bed) that does only
the unavoidable work for the same objects: from an informer cache, server-side apply of a
Deployment and a Service, and one status write with Ready and Available. Each controller gets
a fresh control plane brought up the same way (the second must not pay for the first one's
objects in etcd), and both bursts are measured the same way: rendered and settled from watches
(not LIST polling, which loaded the API server more than the controllers), requests from the
audit log by user agent (floor/…), CPU of the controller and of the control plane (etcd,
kube-apiserver, kube-controller-manager). Inferator's figures are reported as ratios to the
floor's (--no-floor skips it). With --profile, py-spy samples the operator during its burst.

`replicas: 0` keeps the 2 cores for the operator: 1,000 KWOK pods would need 125 more nodes
and make the scheduler and controller-manager the subject of the measurement. Selection,
rendering, server-side apply of every child and the status path are the same.

Writes the results, with the machine and the date, to bench/results/reconcile-<date>.md
(--out to change, --no-write to skip). Not a timed test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the operator process fixture lives with the tests

import kubernetes  # noqa: E402
from tests.cluster.conftest import OperatorProcess  # noqa: E402
from tests.cluster.test_inferenceservice_controller import LLAMA_8B, ready_cache  # noqa: E402

from inferator.dev import toolchain  # noqa: E402
from inferator.dev.cli import install_crds  # noqa: E402
from inferator.dev.cluster import LocalCluster  # noqa: E402

GROUP, VERSION = "inferator.dev", "v1alpha1"
NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"
OPERATOR_AGENTS = ("kopf", "inferator/")
FLOOR_AGENTS = ("floor/",)
FLOOR_SRC = REPO_ROOT / "bench" / "floor"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def control_plane_cpu_seconds(cluster: LocalCluster) -> float:
    """etcd, kube-apiserver and kube-controller-manager together: the other side of every request."""
    pids = [cluster.pid(c) for c in ("etcd", "kube-apiserver", "kube-controller-manager")]
    return sum(cpu_seconds(pid) for pid in pids if pid is not None)


def current_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def requests_by_verb(
    cluster: LocalCluster,
    since: float,
    until: float,
    agents: tuple[str, ...],
    by_resource: collections.Counter[str] | None = None,
) -> collections.Counter[str]:
    """Requests by verb; with `by_resource`, also counted there by 'verb resource[/sub]'."""
    counts: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    for agent in agents:
        for event in cluster.audit_events(since, agent):
            stamp = datetime.datetime.fromisoformat(
                event["stageTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if stamp > until or event["auditID"] in seen:
                continue  # a watch logs ResponseStarted and ResponseComplete: count it once
            seen.add(event["auditID"])
            counts[event["verb"]] += 1
            if by_resource is not None:
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "?") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                by_resource[f"{event['verb']} {resource}"] += 1
    return counts


WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list")


def service(name: str, namespace: str, cache: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"modelCacheRef": {"name": cache}, "replicas": 0,
                     "serving": {"maxModelLen": 8192}}}  # fmt: skip


def settled(item: dict[str, Any]) -> bool:
    """Status for the current generation, Ready and Available: the Deployment's own rollout
    (observed through its events) is in the status too, so nothing is left to report."""
    status = item.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return (
        status.get("observedGeneration") == item["metadata"]["generation"]
        and conditions.get("Ready") == "True"
        and conditions.get("Available") == "True"
    )


def floor_binary() -> Path:
    """bench/floor built once per source (its go.mod pins controller-runtime), cached like the test bed."""
    digest = hashlib.sha256(b"".join((FLOOR_SRC / f).read_bytes() for f in ("go.mod", "go.sum", "main.go")))
    binary = toolchain.cache_root() / "bin" / f"floor-{digest.hexdigest()[:12]}" / "floor"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
        subprocess.run(
            ["go", "build", "-trimpath", "-o", str(binary), "."], cwd=FLOOR_SRC, env=env, check=True
        )
    return binary


@dataclass
class Burst:
    """One controller's burst: --services InferenceServices created at once, until all settled."""

    controller: str
    services: int
    create_s: float
    settle_s: float | None
    latencies: list[float]
    cpu_s: float
    control_plane_cpu_s: float
    peak_rss_mib: float
    requests: collections.Counter[str]
    by_resource: collections.Counter[str]
    profile: list[str]

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) if self.latencies else float("nan")

    def per_service(self, verbs: tuple[str, ...]) -> float:
        return sum(self.requests[v] for v in verbs) / self.services


def burst(
    cluster: LocalCluster,
    api_client: Any,
    controller: str,
    pid: int,
    agents: tuple[str, ...],
    namespace: str,
    caches: list[str],
    count: int,
    timeout_s: float,
    profile_to: Path | None = None,
) -> Burst:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    rendered: dict[str, float] = {}
    watch_ready = threading.Event()

    def watch_deployments() -> None:
        watcher = kubernetes.watch.Watch()
        watch_ready.set()
        for event in watcher.stream(apps.list_namespaced_deployment, namespace, timeout_seconds=timeout_s):
            rendered.setdefault(event["object"].metadata.name, time.monotonic())
            if len(rendered) >= count:
                watcher.stop()

    # Settled is followed by a watch too: polling a LIST of 1,000 services every half second
    # loaded the API server (and this client's JSON parser) more than the controllers did.
    settled_names: set[str] = set()
    all_settled = threading.Event()
    services_watch_ready = threading.Event()

    def watch_services() -> None:
        watcher = kubernetes.watch.Watch()
        services_watch_ready.set()
        for event in watcher.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                    "inferenceservices", timeout_seconds=timeout_s):  # fmt: skip
            obj = event["object"]
            if event["type"] != "DELETED" and settled(obj):
                settled_names.add(obj["metadata"]["name"])
            else:
                settled_names.discard(obj["metadata"]["name"])
            if len(settled_names) >= count and len(rendered) >= count:
                all_settled.set()
                watcher.stop()

    threading.Thread(target=watch_deployments, daemon=True).start()
    threading.Thread(target=watch_services, daemon=True).start()
    watch_ready.wait()
    services_watch_ready.wait()
    time.sleep(1)

    spy = None
    if profile_to is not None:
        # py-spy samples the running process (no instrumentation); raw = collapsed stacks.
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
             "--rate", "50", "--nonblocking", "--gil", "--output", str(profile_to)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    cpu_before = cpu_seconds(pid)
    plane_before = control_plane_cpu_seconds(cluster)
    created: dict[str, float] = {}
    names = [f"svc-{i:04d}" for i in range(count)]
    start_wall, start = time.time(), time.monotonic()

    def create(index: int) -> None:
        name = names[index]
        body = service(name, namespace, caches[index % len(caches)])
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "inferenceservices", body)
        created[name] = time.monotonic()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))
    create_s = time.monotonic() - start

    settle_s = None
    if all_settled.wait(timeout=max(0.0, timeout_s - (time.monotonic() - start))):
        settle_s = time.monotonic() - start
    settled_wall = time.time()
    cpu_s = cpu_seconds(pid) - cpu_before
    plane_cpu_s = control_plane_cpu_seconds(cluster) - plane_before
    profile: list[str] = []
    if spy is not None and profile_to is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        profile = summarize_profile(profile_to)
    rss = peak_rss_mib(pid)
    latencies = [rendered[n] - created[n] for n in names if n in rendered and n in created]
    time.sleep(3)  # the audit log is written asynchronously
    by_resource: collections.Counter[str] = collections.Counter()
    requests = requests_by_verb(cluster, start_wall, settled_wall + 1, agents, by_resource)
    return Burst(controller, count, create_s, settle_s, latencies, cpu_s, plane_cpu_s, rss, requests, by_resource,
                 profile)  # fmt: skip


def summarize_profile(path: Path, top: int = 25) -> list[str]:
    """The functions the samples were in (inclusive, each counted once per stack) and at the
    top of (self), from py-spy's collapsed stacks. Sampled with --gil (only the thread holding
    the GIL: where the operator's Python CPU went, not where its threads waited); samples still
    at the top of a wait are counted apart."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = idle = 0
    idle_marks = ("wait (threading.py", "_worker (concurrent", "select (selectors.py", "poll (",
                  "recv_into (", "readinto (socket.py", "_run_once (asyncio", "sleep (")  # fmt: skip
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        if any(frames[-1].startswith(m) for m in idle_marks):
            idle += int(n)
            continue
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    busy = max(total - idle, 1)
    lines = [f"samples {total}, idle (waiting on a queue, lock or socket) {idle}, busy {busy}",
             "inclusive % of busy samples:"]  # fmt: skip
    lines += [f"  {100 * c / busy:5.1f}  {f}" for f, c in inclusive.most_common(top)]
    lines += ["self % of busy samples:"]
    lines += [f"  {100 * c / busy:5.1f}  {f}" for f, c in own.most_common(top)]
    return lines


def describe(b: Burst) -> list[str]:
    settled_line = f"{b.settle_s:.1f} s" if b.settle_s is not None else "NOT within the timeout"
    reads, writes = b.per_service(READ_VERBS), b.per_service(WRITE_VERBS)
    return [
        f"[{b.controller}]",
        f"  services created                   {b.services} (16 client threads, {b.create_s:.1f} s to create)",
        f"  burst settled (rendered + status)  {settled_line}",
        f"  apply to rendered p50 / p99 / max  {b.p(0.5):.2f} / {b.p(0.99):.2f} / {max(b.latencies or [0]):.2f} s",
        f"  CPU during the burst               {b.cpu_s:.1f} s (control plane: {b.control_plane_cpu_s:.1f} s)",
        f"  peak RSS                           {b.peak_rss_mib:.0f} MiB",
        f"  API requests (burst)               {sum(b.requests.values())} {dict(sorted(b.requests.items()))}",
        f"  per service: reads / writes        {reads:.2f} / {writes:.2f}",
        "  requests by verb and resource      "
        + ", ".join(f"{k} {v / b.services:.2f}" for k, v in sorted(b.by_resource.items(), key=lambda kv: -kv[1])),
    ]  # fmt: skip


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--caches", type=int, default=10)
    parser.add_argument("--quiet-s", type=int, default=60)
    parser.add_argument("--timeout-s", type=int, default=900)
    parser.add_argument("--no-floor", action="store_true", help="skip the controller-runtime floor")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator during its burst")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()
    toolchain.build_all(["etcd", "kubernetes", "kwok"])
    floor = None if args.no_floor else floor_binary()
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    operator: OperatorProcess | None = None
    floor_proc: subprocess.Popen[bytes] | None = None
    bursts: list[Burst] = []
    caches = [f"llama-{i}" for i in range(args.caches)]

    def fresh_cluster(name: str) -> tuple[LocalCluster, Any]:
        # Each controller gets a control plane of its own, brought up the same way: the second
        # burst must not pay for the first one's 1,000 Deployments and ReplicaSets in etcd.
        cluster = LocalCluster(work / name, audit_reads=True)
        cluster.up()
        install_crds(cluster)
        return cluster, kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]

    # The floor first, then Inferator, one control plane each, never both at once.
    if floor is not None:
        cluster, api_client = fresh_cluster("cluster-floor")
        try:
            cluster.create_namespace(FLOOR_NAMESPACE)
            env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
            with (work / "floor.log").open("wb") as log:
                floor_proc = subprocess.Popen(
                    [str(floor), "--namespace", FLOOR_NAMESPACE],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            time.sleep(3)  # informers synced
            bursts.append(
                burst(cluster, api_client, "floor (controller-runtime)", floor_proc.pid, FLOOR_AGENTS,
                      FLOOR_NAMESPACE, caches, args.services, args.timeout_s)
            )  # fmt: skip
        finally:
            if floor_proc is not None:
                floor_proc.terminate()
                floor_proc.wait(timeout=30)
            cluster.down()

    cluster, api_client = fresh_cluster("cluster-inferator")
    custom = kubernetes.client.CustomObjectsApi(api_client)
    try:
        cluster.create_namespace(NAMESPACE)
        operator = OperatorProcess(cluster, NAMESPACE, work / "operator.log")
        for name in caches:
            ready_cache(cluster, NAMESPACE, name, LLAMA_8B)
        deadline = time.monotonic() + 300
        while True:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelcaches")["items"]
            if sum((i.get("status") or {}).get("phase") == "Ready" for i in items) == len(caches):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"caches not Ready: {[(i.get('status') or {}).get('phase') for i in items]}")
            time.sleep(1)
        time.sleep(5)  # let the operator go quiet after the caches
        pid = operator.proc.pid
        bursts.append(
            burst(cluster, api_client, "inferator", pid, OPERATOR_AGENTS, NAMESPACE, caches,
                  args.services, args.timeout_s, work / "profile.txt" if args.profile else None)
        )  # fmt: skip

        # The quiet minute: nothing changes, so the operator must not write, and barely run.
        quiet_from = time.time()
        cpu_quiet_before = cpu_seconds(pid)
        time.sleep(args.quiet_s)
        cpu_quiet = cpu_seconds(pid) - cpu_quiet_before
        rss_settled = current_rss_mib(pid)
        time.sleep(3)
        quiet_requests = requests_by_verb(cluster, quiet_from, quiet_from + args.quiet_s, OPERATOR_AGENTS)
        quiet_writes = sum(quiet_requests[v] for v in WRITE_VERBS)
        apps = kubernetes.client.AppsV1Api(api_client)
        children = {
            kind: len(items)
            for kind, items in (
                ("Deployment", apps.list_namespaced_deployment(NAMESPACE).items),
                ("Service", kubernetes.client.CoreV1Api(api_client).list_namespaced_service(NAMESPACE).items),
            )
        }
    finally:
        if operator:
            operator.stop()
        cluster.down()

    lines = [f"caches                               {args.caches} (Ready before Inferator's burst)"]
    for b in bursts:
        lines += describe(b)
    lines += [
        f"quiet {args.quiet_s} s: inferator writes        {quiet_writes}",
        f"quiet {args.quiet_s} s: inferator requests      {sum(quiet_requests.values())} {dict(sorted(quiet_requests.items()))}",
        f"quiet {args.quiet_s} s: inferator CPU           {cpu_quiet:.2f} s",
        f"inferator's RSS, settled               {rss_settled:.0f} MiB ({args.services} services)",
        f"inferator's children at the end      {json.dumps(children)}",
    ]  # fmt: skip
    if len(bursts) == 2:
        fl, inf = bursts
        lines += [
            "inferator / floor",
            f"  burst settled                      {ratio(inf.settle_s, fl.settle_s)}",
            f"  apply to rendered p99              {ratio(inf.p(0.99), fl.p(0.99))}",
            f"  CPU during the burst               {ratio(inf.cpu_s, fl.cpu_s)}",
            f"  peak RSS                           {ratio(inf.peak_rss_mib, fl.peak_rss_mib)}",
            f"  requests per service               {ratio(sum(inf.requests.values()), sum(fl.requests.values()))}",
        ]  # fmt: skip
    if bursts and bursts[-1].profile:
        lines += ["inferator's profile during the burst (py-spy)", *bursts[-1].profile]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        today = datetime.date.today().isoformat()
        out = args.out or REPO_ROOT / "bench" / "results" / f"reconcile-{today}.md"
        command = "bench/bench_reconcile.py " + " ".join(sys.argv[1:])
        machine = (
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB memory, "
            f"Python {platform.python_version()}, {platform.system()} {platform.machine()}"
        )
        out.write_text(
            f"# Reconcile benchmark — {today}\n\n- Command: `.venv/bin/python {command.strip()}`\n"
            f"- Machine: {machine}\n- Load average (1, 5, 15 min) before the run: "
            f"{', '.join(f'{x:.2f}' for x in load_before)}\n\n"
            f"```\n{report}\n```\n"
        )
        print(f"wrote {out}")
    return 0 if all(b.settle_s is not None for b in bursts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
