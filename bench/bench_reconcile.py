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
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
OPERATOR_AGENTS = ("kopf", "inferator/")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def operator_requests(cluster: LocalCluster, since: float, until: float) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    for agent in OPERATOR_AGENTS:
        for event in cluster.audit_events(since, agent):
            stamp = datetime.datetime.fromisoformat(
                event["stageTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if stamp > until or event["auditID"] in seen:
                continue  # a watch logs ResponseStarted and ResponseComplete: count it once
            seen.add(event["auditID"])
            counts[event["verb"]] += 1
    return counts


def service(name: str, cache: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NAMESPACE},
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--caches", type=int, default=10)
    parser.add_argument("--quiet-s", type=int, default=60)
    parser.add_argument("--timeout-s", type=int, default=900)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()
    toolchain.build_all(["etcd", "kubernetes", "kwok"])
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    cluster = LocalCluster(work / "cluster", audit_reads=True)
    operator: OperatorProcess | None = None
    try:
        cluster.up()
        install_crds(cluster)
        cluster.create_namespace(NAMESPACE)
        operator = OperatorProcess(cluster, NAMESPACE, work / "operator.log")
        caches = [f"llama-{i}" for i in range(args.caches)]
        for name in caches:
            ready_cache(cluster, NAMESPACE, name, LLAMA_8B)
        api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        custom = kubernetes.client.CustomObjectsApi(api_client)
        apps = kubernetes.client.AppsV1Api(api_client)

        deadline = time.monotonic() + 300
        while True:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelcaches")["items"]
            if sum((i.get("status") or {}).get("phase") == "Ready" for i in items) == len(caches):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"caches not Ready: {[(i.get('status') or {}).get('phase') for i in items]}")
            time.sleep(1)
        time.sleep(5)  # let the operator go quiet after the caches

        rendered: dict[str, float] = {}
        watch_ready = threading.Event()

        def watch_deployments() -> None:
            watcher = kubernetes.watch.Watch()
            watch_ready.set()
            for event in watcher.stream(
                apps.list_namespaced_deployment, NAMESPACE, timeout_seconds=args.timeout_s
            ):
                name = event["object"].metadata.name
                rendered.setdefault(name, time.monotonic())
                if len(rendered) >= args.services:
                    watcher.stop()

        threading.Thread(target=watch_deployments, daemon=True).start()
        watch_ready.wait()
        time.sleep(1)

        pid = operator.proc.pid
        cpu_before = cpu_seconds(pid)
        created: dict[str, float] = {}
        names = [f"svc-{i:04d}" for i in range(args.services)]
        start_wall, start = time.time(), time.monotonic()

        def create(index: int) -> None:
            name = names[index]
            body = service(name, caches[index % len(caches)])
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "inferenceservices", body)
            created[name] = time.monotonic()

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(args.services)))
        burst_s = time.monotonic() - start

        settle_s = None
        while time.monotonic() - start < args.timeout_s:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "inferenceservices")[
                "items"
            ]
            if len(rendered) >= args.services and sum(map(settled, items)) == args.services:
                settle_s = time.monotonic() - start
                break
            time.sleep(0.5)
        settled_wall = time.time()
        cpu_burst = cpu_seconds(pid) - cpu_before
        rss = peak_rss_mib(pid)
        latencies = [rendered[n] - created[n] for n in names if n in rendered and n in created]
        time.sleep(3)  # the audit log is written asynchronously
        burst_requests = operator_requests(cluster, start_wall, settled_wall + 1)

        # The quiet minute: nothing changes, so the operator must not write, and barely run.
        quiet_from = time.time()
        cpu_quiet_before = cpu_seconds(pid)
        time.sleep(args.quiet_s)
        cpu_quiet = cpu_seconds(pid) - cpu_quiet_before
        time.sleep(3)
        quiet_requests = operator_requests(cluster, quiet_from, quiet_from + args.quiet_s)
        quiet_writes = sum(
            quiet_requests[v] for v in ("create", "update", "patch", "delete", "deletecollection")
        )
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

    lines = [
        f"services created                     {args.services} (16 client threads, {burst_s:.1f} s to create)",
        f"caches                               {args.caches} (Ready before the burst)",
        f"burst settled (rendered + status)    {settle_s:.1f} s" if settle_s else "burst settled        NOT within the timeout",
        f"apply to rendered p50 / p99 / max    {percentile(latencies, 0.5):.2f} / {percentile(latencies, 0.99):.2f} / {max(latencies):.2f} s",
        f"operator CPU during the burst        {cpu_burst:.1f} s",
        f"operator peak RSS                    {rss:.0f} MiB",
        f"operator API requests (burst)        {sum(burst_requests.values())} {dict(sorted(burst_requests.items()))}",
        f"quiet {args.quiet_s} s: operator writes         {quiet_writes}",
        f"quiet {args.quiet_s} s: operator requests       {sum(quiet_requests.values())} {dict(sorted(quiet_requests.items()))}",
        f"quiet {args.quiet_s} s: operator CPU            {cpu_quiet:.2f} s",
        f"children at the end                  {json.dumps(children)}",
    ]  # fmt: skip
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
    return 0 if settle_s is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
