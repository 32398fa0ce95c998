"""`inferator dev`: the embedded default — a local control plane, the operator, the examples.

inferator dev build   compile the test-bed binaries into the cache (once per version)
inferator dev up      start the control plane with simulated GPU nodes
inferator dev demo    up + CRDs + operator + examples/ applied + their status printed
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

from inferator.dev import toolchain
from inferator.dev.cluster import LocalCluster, free_port

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
    if (pid := _alive(pid_file)) is not None:
        return pid
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    log = open(cluster.logs / "operator.log", "ab")  # noqa: SIM115 (handed to the child)
    cmd = [sys.executable, "-m", "inferator.cli", "run", "--all-namespaces",
           f"--liveness-port={free_port()}", f"--metrics-port={free_port()}", *(extra_args or [])]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def _alive(pid_file: Path) -> int | None:
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop_operator(cluster: LocalCluster) -> None:
    pid_file = cluster.state_dir / "pids" / "operator.pid"
    if (pid := _alive(pid_file)) is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if _alive(pid_file) is None:
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
    cluster = LocalCluster(_state_dir(args.state_dir))
    if args.action == "down":
        stop_operator(cluster)
        cluster.down()
        print(f"stopped the local control plane in {cluster.state_dir}")
        return 0
    if args.action == "status":
        print_status(cluster)
        return 0
    toolchain.build_all(["etcd", "kubernetes", "kwok"])
    t0 = time.monotonic()
    cluster.up()
    install_crds(cluster)
    print(f"control plane up in {time.monotonic() - t0:.1f}s: export KUBECONFIG={cluster.kubeconfig}")
    if args.action == "demo":
        start_operator(cluster)
        cluster.create_namespace(DEMO_NAMESPACE)
        objects = apply_examples(cluster, args.examples, DEMO_NAMESPACE)
        wait_handled(cluster, objects, timeout_s=90)
        print_status(cluster)
        print(f"\nThe cluster and operator keep running (logs: {cluster.logs}).")
        print(f"  export KUBECONFIG={cluster.kubeconfig}; {toolchain.binary('kubectl')} get infsvc -A")
        print("  stop with: make down")
    return 0
