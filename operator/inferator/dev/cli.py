"""`inferator dev`: the embedded default — a local control plane, the operator, the examples.

inferator dev build   compile the test-bed binaries into the cache (once per version)
inferator dev up      start the control plane with simulated GPU nodes
inferator dev demo    up + CRDs + operator + examples/ + a tiny model served and asked (see dev/demo.py)
inferator dev status  print nodes and Inferator resources
inferator dev down    stop everything started by up/demo
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from inferator.dev import demo, toolchain
from inferator.dev.cluster import LocalCluster, free_port
from inferator.dev.tiny_model import vllm_python

DEMO_NAMESPACE = "inferator-demo"


def _state_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("INFERATOR_DEV_DIR") or ".dev/cluster")


def install_crds(cluster: LocalCluster) -> None:
    from inferator.api.crds import KINDS, crd

    cluster.apply([crd(k) for k in KINDS])
    for kind in KINDS:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{kind.plural}.inferator.dev"
        )


def start_operator(cluster: LocalCluster, extra_args: list[str] | None = None) -> int:
    """Run `inferator run` in the background against the cluster; its pid goes next to the others."""
    pid_file = cluster.state_dir / "pids" / "operator.pid"
    if (pid := demo.alive_pid(pid_file)) is not None:
        return pid
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    log = open(cluster.logs / "operator.log", "ab")  # noqa: SIM115 (handed to the child)
    cmd = [sys.executable, "-m", "inferator.cli", "run", "--all-namespaces",
           f"--liveness-port={free_port()}", f"--metrics-port={free_port()}", *(extra_args or [])]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_operator(cluster: LocalCluster) -> None:
    pid_file = cluster.state_dir / "pids" / "operator.pid"
    if (pid := demo.alive_pid(pid_file)) is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if demo.alive_pid(pid_file) is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def apply_examples(cluster: LocalCluster, directory: Path, namespace: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("namespace", namespace)
    cluster.apply(objects)
    return objects


def wait_handled(cluster: LocalCluster, objects: list[dict[str, Any]], timeout_s: float) -> None:
    """Wait until the operator has reported on every example (status.observedGeneration set)."""
    deadline = time.monotonic() + timeout_s
    pending = objects
    while pending and time.monotonic() < deadline:
        still = []
        for obj in pending:
            ref = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
            out = cluster.kubectl("get", ref, "-n", obj["metadata"]["namespace"], "-o", "json", check=False)
            live = json.loads(out.stdout) if out.returncode == 0 else {}
            if live.get("status", {}).get("observedGeneration") != live.get("metadata", {}).get("generation"):
                still.append(obj)
        pending = still
        if pending:
            time.sleep(1)


def print_status(cluster: LocalCluster) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(cluster.kubectl(
        "get", "nodes", "-L", "nvidia.com/gpu.product", "-L", "nvidia.com/gpu.count"
    ).stdout)  # fmt: skip
    console.print(cluster.kubectl("get", "mcache,infsvc", "-A", "-o", "wide").stdout)
    table = Table(title="Conditions")
    for column in ("Resource", "Type", "Status", "Reason", "Message"):
        table.add_column(column, overflow="fold")
    for plural in ("modelcaches", "inferenceservices"):
        items = json.loads(cluster.kubectl("get", plural, "-A", "-o", "json").stdout)["items"]
        for item in items:
            name = f"{item['kind']}/{item['metadata']['namespace']}/{item['metadata']['name']}"
            for cond in item.get("status", {}).get("conditions", []):
                table.add_row(
                    name, cond["type"], cond["status"], cond.get("reason", ""), cond.get("message", "")
                )
    console.print(table)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inferator dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("action", choices=["build", "up", "demo", "status", "down"])
    parser.add_argument("--state-dir", help="default: $INFERATOR_DEV_DIR or .dev/cluster")
    parser.add_argument("--examples", type=Path, default=Path("examples"))
    args = parser.parse_args(argv)

    if args.action == "build":
        toolchain.build_all()
        return 0
    # The runner node (pods that really run) is part of every cluster these commands manage,
    # so `down` stops it too.
    state_dir = _state_dir(args.state_dir)
    cluster = LocalCluster(state_dir, runner_images=demo.runner_images())
    if args.action == "down":
        stop_operator(cluster)
        demo.stop_mirror(cluster)
        cluster.down()
        print(
            f"stopped the local control plane, its runner node, the operator and the model mirror in {cluster.state_dir}"
        )
        return 0
    if args.action == "status":
        print_status(cluster)
        return 0
    progress = demo.StepLog()
    with progress.step("Test bed binaries (first run: about 30 min of Go builds on 2 cores, then cached)"):
        toolchain.build_all(["etcd", "kubernetes", "kwok"])
    if args.action == "demo":
        try:
            vllm_python()
        except FileNotFoundError as exc:
            print(f"inferator dev demo: {exc}", file=sys.stderr)
            return 2
    with progress.step("Control plane, KWOK GPU nodes and the runner node"):
        cluster.kwok_stages = demo.kwok_stages(cluster.state_dir)
        cluster.up()
        install_crds(cluster)
    progress.say(f"export KUBECONFIG={cluster.kubeconfig}")
    if args.action == "demo":
        return _demo(cluster, args.examples, progress)
    return 0


def _demo(cluster: LocalCluster, examples: Path, progress: demo.StepLog) -> int:
    cluster.create_namespace(DEMO_NAMESPACE)
    # The GPU examples first, and their simulated prefetch reports, before the operator runs.
    objects = apply_examples(cluster, examples, DEMO_NAMESPACE)
    simulated = demo.report_simulated_prefetch(cluster, examples, objects)
    start_operator(cluster)
    progress.say(f"operator running (log: {cluster.logs / 'operator.log'}); examples/ applied")
    try:
        svc, answer = demo.serve_tiny_model(cluster, DEMO_NAMESPACE, progress, cluster.state_dir / "demo")
    except (RuntimeError, TimeoutError) as exc:
        print_status(cluster)
        print(
            f"\ninferator dev demo: {exc}\n  operator log: {cluster.logs / 'operator.log'}", file=sys.stderr
        )
        return 1
    wait_handled(cluster, objects, timeout_s=60)
    kubectl = toolchain.binary("kubectl")
    print(f"\n$ kubectl get infsvc,mcache -n {DEMO_NAMESPACE}")
    print(cluster.kubectl("get", "infsvc,mcache", "-n", DEMO_NAMESPACE).stdout)
    print_status(cluster)
    if simulated:
        print(f"{', '.join(simulated)}: {demo.SIMULATED_NOTE}. Their profiles are selected against the")
        print(
            "simulated GPU pools; they stay Deploying because no engine runs on a simulated node to warm up.\n"
        )
    print(
        f"{demo.TINY} is Ready: {svc['status']['profile']} on {svc['status'].get('pool') or 'the runner node'}"
    )
    print(f"\n$ {demo.curl_command(answer)}")
    print(f"answer ({answer.completion_tokens} tokens, random weights): {answer.text!r}")
    print(f"\nThe cluster, the operator and the model mirror keep running (logs: {cluster.logs}).")
    print(f"  export KUBECONFIG={cluster.kubeconfig}; {kubectl} get infsvc,mcache -A")
    print("  stop with: make down")
    return 0
