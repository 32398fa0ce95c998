"""A real Kubernetes control plane on loopback, with KWOK nodes that look like GPU machines.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the KWOK controller run as
plain processes (no containers: these machines have no Docker engine). Everything a test needs
from Kubernetes is real: admission (Pod Security), the scheduler's decisions, the Job and
Deployment controllers, garbage collection. Only kubelets are simulated, by KWOK.

The processes are started in their own sessions and recorded in pid files, so `inferator dev up`
can leave a cluster running for a user and `inferator dev down` (or a test's finaliser) stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferator.dev import toolchain
from inferator.dev.nodes import DEFAULT_NODES, NodeSpec, node_manifest
from inferator.dev.pki import Pki, ensure_pki

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
ADMIN_USER = "inferator-admin"
FRONT_PROXY = "front-proxy-client"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
PSA_RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}


# KWOK's volume stages provision and bind PVCs of this class; default so a PVC without a
# class (as users write them) binds too.
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": "kwok-volume",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": "kwok.x-k8s.io/volume",
    "volumeBindingMode": "Immediate",
    "reclaimPolicy": "Delete",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubeconfig(server: str, pki: Pki, user: str) -> dict[str, Any]:
    crt, key = pki.client_cert(user)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "inferator-dev",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "inferator-dev", "context": {"cluster": "inferator-dev", "user": user}}],
        "current-context": "inferator-dev",
    }


AUDITED_READS = [
    {"group": "", "resources": ["pods", "nodes", "services"]},
    {"group": "apps", "resources": ["deployments"]},
    {"group": "networking.k8s.io", "resources": ["networkpolicies"]},
    {"group": "policy", "resources": ["poddisruptionbudgets"]},
    {"group": "autoscaling", "resources": ["horizontalpodautoscalers"]},
    {"group": "inferator.dev", "resources": ["inferenceservices", "modelcaches"]},
]


@dataclass
class LocalCluster:
    """One local control plane, its state in `state_dir` (certs, etcd data, logs, pids, ports)."""

    state_dir: Path
    nodes: Sequence[NodeSpec] = DEFAULT_NODES
    ports: dict[str, int] = field(default_factory=dict)
    # IMAGE_PREFIX -> bin dir; when set, the runner node (inferator.dev.runner) really runs
    # the pods bound to it. Needs root (mount namespaces), as the kubelet does.
    runner_images: dict[str, str] | None = None
    # Audit every request, reads and watches too (the reconcile benchmark counts them); by
    # default only writes are audited, which is what tests count.
    audit_reads: bool = False
    # KWOK's stages (how simulated pods and volumes move through their lifecycle); default the
    # upstream set extracted by toolchain, which marks every readiness gate of a pod True.
    kwok_stages: Path | None = None

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        saved = self.state_dir / "ports.json"
        if saved.exists():
            self.ports = json.loads(saved.read_text())
        if not self.ports:
            self.ports = {
                name: free_port()
                for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
            }
            saved.write_text(json.dumps(self.ports))

    # -- paths -------------------------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def audit_log(self) -> Path:
        """Every write request (who, what, user agent), for tests that count writes; every request
        with `audit_reads`."""
        return self.logs / "audit.jsonl"

    def _audit_policy(self) -> Path:
        path = self.state_dir / "audit-policy.yaml"
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata"}]
            if self.audit_reads
            else [
                {"level": "Metadata", "verbs": list(WRITE_VERBS)},
                # Reads of what an InferenceService's reconcile needs: tests assert the
                # operator takes them from its watches, and that none of its reads is refused.
                {"level": "Metadata", "verbs": ["get", "list", "watch"], "resources": AUDITED_READS},
                {"level": "None"},
            ],
        }
        path.write_text(yaml.safe_dump(policy))
        return path

    def audit_events(self, since: float, user_agent_prefix: str) -> list[dict[str, Any]]:
        """Audit events (one per request: the RequestReceived stage is omitted) after `since`
        (epoch seconds) from clients whose user agent starts with `user_agent_prefix`."""
        import datetime

        if not self.audit_log.exists():
            return []
        found = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            if not event.get("userAgent", "").startswith(user_agent_prefix):
                continue
            stamp = datetime.datetime.fromisoformat(
                event["stageTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if stamp >= since:
                found.append(event)
        return found

    def write_requests(self, since: float, user_agent_prefix: str) -> list[dict[str, Any]]:
        """Write requests after `since` from one client (see `audit_events`)."""
        return [e for e in self.audit_events(since, user_agent_prefix) if e.get("verb") in WRITE_VERBS]

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    def _pid_file(self, component: str) -> Path:
        return self.state_dir / "pids" / f"{component}.pid"

    # -- processes -----------------------------------------------------------------------------
    def _command(self, component: str) -> list[str]:
        pki, p, state = self.pki, self.ports, self.state_dir
        bin_ = toolchain.binary
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        if component == "etcd":
            peer = f"http://127.0.0.1:{p['etcd-peer']}"
            return [
                str(bin_("etcd")), "--name=testbed", f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testbed={peer}",
                # A test bed, not a database: skip fsync so 2 cores spend time on the operator.
                "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn",
            ]  # fmt: skip
        if component == "kube-apiserver":
            return [
                str(bin_("kube-apiserver")), f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p['apiserver']}",
                # Loopback cannot be advertised through the endpoint reconciler; nothing in the
                # test bed reaches the API through the `kubernetes` Service anyway.
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                # The aggregation layer (APIService), so an extension API such as custom metrics
                # can be served: the API server proxies to it as front-proxy-client.
                f"--requestheader-client-ca-file={pki.ca_cert}", f"--requestheader-allowed-names={FRONT_PROXY}",
                "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.client_cert(FRONT_PROXY)[0]}",
                f"--proxy-client-key-file={pki.client_cert(FRONT_PROXY)[1]}",
                f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC", "--allow-privileged=true",
                # What production clusters run on top of the defaults, so tests meet them:
                # OwnerReferencesPermissionEnforcement (OpenShift's default) checks blockOwnerDeletion.
                "--enable-admission-plugins=ExtendedResourceToleration,OwnerReferencesPermissionEnforcement,"
                "NodeRestriction,ResourceQuota,LimitRanger",
                "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
                f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-maxsize=200",
                "--profiling=false", "--v=1",
            ]  # fmt: skip
        kcfg = str(self.state_dir / f"{component}.kubeconfig")
        if component == "kube-controller-manager":
            return [
                str(bin_("kube-controller-manager")), f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1", f"--secure-port={p['controller-manager']}",
                f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=true", "--leader-elect=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
                "--concurrent-job-syncs=10", "--horizontal-pod-autoscaler-sync-period=5s",
                "--kube-api-qps=200", "--kube-api-burst=400", "--v=1",
            ]  # fmt: skip
        if component == "kube-scheduler":
            return [
                str(bin_("kube-scheduler")), f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}", "--leader-elect=false", "--v=1",
            ]  # fmt: skip
        if component == "runner":
            images = [f"--image-map={k}={v}" for k, v in (self.runner_images or {}).items()]
            return [sys.executable, "-m", "inferator.dev.runner", f"--state-dir={state / 'runner'}",
                    f"--apiserver-port={p['apiserver']}", *images]  # fmt: skip
        if component == "kwok":
            return [
                str(bin_("kwok")), f"--kubeconfig={kcfg}", f"--config={self.kwok_stages or toolchain.kwok_stages_path()}",
                "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                # Pod and node IPs on loopback: anything that dials a simulated pod (the
                # operator's warm-up) reaches this machine only, and is refused at once.
                "--cidr=127.100.0.1/16", "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40",
                f"--node-port={p['kwok']}", "--server-address=127.0.0.1:0",
            ]  # fmt: skip
        raise KeyError(component)

    def pid(self, component: str) -> int | None:
        path = self._pid_file(component)
        if not path.exists():
            return None
        pid = int(path.read_text())
        try:  # reap it if it is our exited child, or a zombie would look alive
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start_component(self, component: str) -> None:
        if self.pid(component):
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        self._pid_file(component).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        with open(self.logs / f"{component}.log", "ab") as log:
            proc = subprocess.Popen(
                self._command(component),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.state_dir,
                env=env,
            )
        self._pid_file(component).write_text(str(proc.pid))

    def stop_component(self, component: str, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        pid = self.pid(component)
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self._pid_file(component).unlink(missing_ok=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        crt, key = self.pki.client_cert(ADMIN_USER)
        ctx.load_cert_chain(str(crt), str(key))
        return ctx

    def _wait_http(
        self, url: str, timeout_s: float, component: str, context: ssl.SSLContext | None = None
    ) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.pid(component) is None:
                raise RuntimeError(
                    f"{component} exited; see {self.logs / (component + '.log')}:\n{self.tail(component)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as r:  # noqa: S310 (loopback)
                    if r.status == 200:
                        return
            except Exception as exc:
                last = str(exc)
            time.sleep(0.3)
        raise TimeoutError(
            f"{component} not healthy at {url} after {timeout_s}s ({last}):\n{self.tail(component)}"
        )

    def tail(self, component: str, lines: int = 30) -> str:
        path = self.logs / f"{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def up(self, timeout_s: float = 180) -> None:
        """Start (or resume) the control plane and register the simulated nodes. Idempotent."""
        clients: dict[str, str | None] = {
            ADMIN_USER: "system:masters",
            "system:kube-controller-manager": None,
            "system:kube-scheduler": None,
            "kwok-controller": "system:masters",
            FRONT_PROXY: None,
        }
        ensure_pki(self.pki.directory, clients)
        for user, filename in (
            (ADMIN_USER, "kubeconfig"),
            ("system:kube-controller-manager", "kube-controller-manager.kubeconfig"),
            ("system:kube-scheduler", "kube-scheduler.kubeconfig"),
            ("kwok-controller", "kwok.kubeconfig"),
        ):
            (self.state_dir / filename).write_text(yaml.safe_dump(_kubeconfig(self.server, self.pki, user)))
        self.start_component("etcd")
        self._wait_http(f"http://127.0.0.1:{self.ports['etcd']}/health", 60, "etcd")
        self.start_component("kube-apiserver")
        self._wait_http(f"{self.server}/readyz", timeout_s, "kube-apiserver", self._ssl_context())
        for component in self.components[2:]:
            self.start_component(component)
        self.apply([node_manifest(n) for n in self.nodes] + [STORAGE_CLASS])
        self.wait_nodes_ready(timeout_s)

    @property
    def components(self) -> tuple[str, ...]:
        return COMPONENTS + (("runner",) if self.runner_images is not None else ())

    def down(self) -> None:
        for component in reversed(self.components):
            self.stop_component(component)

    def is_up(self) -> bool:
        return all(self.pid(c) for c in self.components)

    def restart_apiserver(self) -> None:
        self.stop_component("kube-apiserver")
        self.start_component("kube-apiserver")
        self._wait_http(f"{self.server}/readyz", 120, "kube-apiserver", self._ssl_context())

    # -- kubectl ------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(toolchain.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(objects)
        )

    def wait_nodes_ready(self, timeout_s: float) -> None:
        names = {n.name for n in self.nodes} | ({"runner-0"} if self.runner_images is not None else set())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid("kwok") is None:
                raise RuntimeError(f"kwok exited:\n{self.tail('kwok')}")
            out = self.kubectl("get", "nodes", "-o", "json").stdout
            ready = {
                item["metadata"]["name"]
                for item in json.loads(out)["items"]
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in item.get("status", {}).get("conditions", [])
                )
            }
            if names <= ready:
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"nodes not Ready after {timeout_s}s: {sorted(names - ready)}\n{self.tail('kwok')}"
        )

    def create_namespace(self, name: str, restricted: bool = True) -> None:
        """A namespace with Pod Security `restricted` enforced, and wait for its default ServiceAccount."""
        labels = PSA_RESTRICTED if restricted else {}
        self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"no default ServiceAccount in namespace {name}")
