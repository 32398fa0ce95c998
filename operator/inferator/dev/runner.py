"""A test-only node whose pods really run: a minimal kubelet stand-in for the test bed.

KWOK pretends pods run; the end-to-end tests need some that do (the prefetch Job really
downloading, vLLM-CPU really serving). This runner registers a Node (`runner-0`, tainted so
only pods that ask land there), watches the pods bound to it and runs each container's
command as a local process:

- inside a private mount namespace, with every volume bind-mounted at its real mountPath
  (PVCs map to a directory per PersistentVolume, emptyDir to a per-pod directory, Secrets,
  ConfigMaps and projected service-account tokens written as files, as a kubelet would);
- as the pod's runAsUser/runAsGroup/fsGroup, with fsGroup applied to writable volumes unless
  the PersistentVolume is annotated as ignoring it (`inferator.dev/test-volume: root-squash`
  simulates NFS with root squash: no fsGroup, and root in the pod acts as nobody);
- with env, envFrom, Secrets and $(VAR) expansion resolved, and the pod IP 127.0.0.1;
- the container's image picks the program set (PATH) through `--image-map PREFIX=BIN_DIR`,
  since there are no images here: the image is a virtualenv on this machine.

Probes (http, tcp), readiness gates, restart policies, termination messages and graceful
deletion follow the kubelet's rules closely enough for an operator to be tested against them.
Exec probes run the command with the container's mounts, user and environment.
Out of scope: networking between pods (all share loopback), resource limits.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiException

log = logging.getLogger("inferator.runner")

NODE_NAME = "runner-0"
RUNNER_LABEL = "inferator.dev/runner"
RUNNER_TAINT = {"key": RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}
POD_IP = "127.0.0.1"
TEST_VOLUME_ANNOTATION = "inferator.dev/test-volume"
KWOK_HOSTPATH_PREFIX = "/tmp/kwok-local-path-provisioner/"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NOBODY = 65534
SMP = "application/strategic-merge-patch+json"
# Where the `inferator` package is imported from (a checkout, in an editable install): part of
# the "image" a runner container sees, like the virtualenv itself.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _in_container(spec_path: Path) -> list[str]:
    """The argv that runs a container spec (inferator.dev.container) in a private mount namespace."""
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        sys.executable,
        "-m",
        "inferator.dev.container",
        str(spec_path),
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def runner_node_manifest(name: str = NODE_NAME) -> dict[str, Any]:
    capacity = {"cpu": str(os.cpu_count() or 2), "memory": "24Gi", "pods": "20", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                RUNNER_LABEL: "true",
            },
        },
        "spec": {"taints": [RUNNER_TAINT]},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    started_at: str
    termination_log: Path
    restarts: int = 0
    ready: bool = False
    started: bool = False
    probe_failures: dict[str, int] = field(default_factory=dict)
    last_probe: dict[str, float] = field(default_factory=dict)
    spec_path: Path | None = None  # the container's launch spec: exec probes run with its mounts and env


class PodWorker(threading.Thread):
    """Runs one pod: init containers in order, then its containers, until deleted."""

    def __init__(self, runner: Runner, pod: Any) -> None:
        super().__init__(daemon=True, name=f"pod-{pod.metadata.name}")
        self.runner = runner
        self.core: Any = runner.core
        self.namespace: str = pod.metadata.namespace
        self.name: str = pod.metadata.name
        self.uid: str = pod.metadata.uid
        self.pod = pod
        self.dir = runner.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.deleting = threading.Event()
        self.procs: dict[str, Proc] = {}
        self.terminated: dict[str, dict[str, Any]] = {}
        # The previous run of a restarted container, as the kubelet reports it in lastState (an
        # operator reads a crash-looping container's termination message there).
        self.last_terminated: dict[str, dict[str, Any]] = {}
        self.last_status: dict[str, Any] = {}

    # -- volumes ------------------------------------------------------------------------------
    def _pv_dir(self, claim: str) -> tuple[Path, bool]:
        """Host directory of a claim's volume, and whether it honours fsGroup."""
        deadline = time.monotonic() + 60
        while True:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
            if pvc.spec.volume_name:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PVC {claim} is not bound")
            time.sleep(0.5)
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        honours_fsgroup = (pv.metadata.annotations or {}).get(TEST_VOLUME_ANNOTATION) != "root-squash"
        host = pv.spec.host_path.path if pv.spec.host_path else None
        if host and not host.startswith(KWOK_HOSTPATH_PREFIX):
            return Path(host), honours_fsgroup
        path = self.runner.state_dir / "volumes" / pv.metadata.name
        path.mkdir(parents=True, exist_ok=True)
        return path, honours_fsgroup

    def _write_files(self, target: Path, files: dict[str, bytes], mode: int = 0o644) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for key, data in files.items():
            (target / key).write_bytes(data)
            (target / key).chmod(mode)

    def _volume(self, vol: Any, fs_group: int | None) -> tuple[Path, bool, bool]:
        """Return (host dir, honours fsGroup, root squash) for one pod volume."""
        path = self.dir / "volumes" / vol.name
        if vol.persistent_volume_claim:
            host, honours = self._pv_dir(vol.persistent_volume_claim.claim_name)
            return host, honours, not honours
        if vol.empty_dir is not None:
            path.mkdir(parents=True, exist_ok=True)
            return path, True, False
        if vol.secret:
            secret = self.core.read_namespaced_secret(vol.secret.secret_name, self.namespace)
            data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            if vol.secret.items:  # only the keys asked for, under their paths, as a kubelet does
                missing = [i.key for i in vol.secret.items if i.key not in data]
                if missing and not vol.secret.optional:
                    raise RuntimeError(
                        f"volume {vol.name}: secret {vol.secret.secret_name} has no key {missing[0]}"
                    )
                data = {i.path: data[i.key] for i in vol.secret.items if i.key in data}
            self._write_files(path, data, 0o640)
            return path, True, False
        if vol.config_map:
            cm = self.core.read_namespaced_config_map(vol.config_map.name, self.namespace)
            self._write_files(path, {k: v.encode() for k, v in (cm.data or {}).items()})
            return path, True, False
        if vol.projected:
            files: dict[str, bytes] = {}
            for source in vol.projected.sources:
                if source.service_account_token:
                    token = self.core.create_namespaced_service_account_token(
                        self.pod.spec.service_account_name or "default",
                        self.namespace,
                        {"spec": {"audiences": None, "expirationSeconds": 3600,
                                  "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name, "uid": self.uid}}},
                    )  # fmt: skip
                    files[source.service_account_token.path] = token.status.token.encode()
                if source.config_map:
                    cm = self.core.read_namespaced_config_map(source.config_map.name, self.namespace)
                    for item in source.config_map.items or [{"key": k, "path": k} for k in (cm.data or {})]:
                        key = item["key"] if isinstance(item, dict) else item.key
                        rel = item["path"] if isinstance(item, dict) else item.path
                        files[rel] = (cm.data or {}).get(key, "").encode()
                if source.downward_api:
                    for item in source.downward_api.items or []:
                        if item.field_ref and item.field_ref.field_path == "metadata.namespace":
                            files[item.path] = self.namespace.encode()
            self._write_files(path, files)
            return path, True, False
        raise RuntimeError(
            f"volume {vol.name}: this runner supports PVC, emptyDir, secret, configMap, projected"
        )

    def _apply_fs_group(self, path: Path, fs_group: int, policy: str | None) -> None:
        """What the kubelet does for fsGroup: group-own the tree, setgid directories."""
        try:
            if policy == "OnRootMismatch" and path.stat().st_gid == fs_group:
                return
        except FileNotFoundError:
            return
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files, ""]:
                p = Path(root) / name
                os.chown(p, -1, fs_group, follow_symlinks=False)
                mode = p.stat().st_mode
                p.chmod(mode | 0o060 | (0o2010 if p.is_dir() else 0))

    # -- env ----------------------------------------------------------------------------------
    def _env(self, container: Any, image_bin: str | None) -> dict[str, Any]:
        env: dict[str, Any] = {
            "PATH": (f"{image_bin}:" if image_bin else "") + os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": self.name,
            "HOME": str(self.dir / "home"),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.runner.apiserver_port),
            "LANG": "C.UTF-8",
        }
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.secret_ref:
                data = self.core.read_namespaced_secret(source.secret_ref.name, self.namespace).data or {}
                env |= {prefix + k: base64.b64decode(v).decode() for k, v in data.items()}
            if source.config_map_ref:
                data = (
                    self.core.read_namespaced_config_map(source.config_map_ref.name, self.namespace).data
                    or {}
                )
                env |= {prefix + k: v for k, v in data.items()}
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = re.sub(
                    r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var.value or ""
                )
                continue
            ref = var.value_from
            if ref.secret_key_ref:
                data = self.core.read_namespaced_secret(ref.secret_key_ref.name, self.namespace).data or {}
                if ref.secret_key_ref.key in data:
                    env[var.name] = base64.b64decode(data[ref.secret_key_ref.key]).decode()
            elif ref.config_map_key_ref:  # ConfigMap values are str already
                data = (
                    self.core.read_namespaced_config_map(ref.config_map_key_ref.name, self.namespace).data
                    or {}
                )
                if ref.config_map_key_ref.key in data:
                    env[var.name] = data[ref.config_map_key_ref.key]
            elif ref.field_ref:
                fields = {
                    "metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
                    "status.podIP": POD_IP, "status.hostIP": POD_IP, "spec.nodeName": self.runner.node_name,
                    "spec.serviceAccountName": self.pod.spec.service_account_name or "default",
                }  # fmt: skip
                env[var.name] = fields.get(ref.field_ref.field_path, "")
        return env

    # -- processes ----------------------------------------------------------------------------
    def _start(self, container: Any, mounts: dict[str, tuple[Path, bool, bool]], restarts: int = 0) -> Proc:
        pod_sc = self.pod.spec.security_context
        sc = container.security_context
        uid = (sc.run_as_user if sc and sc.run_as_user is not None else None) or (
            pod_sc.run_as_user if pod_sc else None
        )
        gid = (sc.run_as_group if sc and sc.run_as_group is not None else None) or (
            pod_sc.run_as_group if pod_sc else None
        )
        uid = 0 if uid is None else uid
        gid = uid if gid is None else gid
        groups = list(pod_sc.supplemental_groups or []) if pod_sc else []
        if pod_sc and pod_sc.fs_group is not None:
            groups.append(pod_sc.fs_group)
        bind: list[list[Any]] = []
        squashed = False
        for vm in container.volume_mounts or []:
            host, _, root_squash = mounts[vm.name]
            squashed |= root_squash
            bind.append([str(host / (vm.sub_path or "")), vm.mount_path, bool(vm.read_only)])
        if squashed and uid == 0:
            uid, gid = NOBODY, NOBODY  # root squash: the server maps root to nobody
        term_dir = self.dir / "termination" / container.name
        term_dir.mkdir(parents=True, exist_ok=True)
        term = term_dir / f"log-{restarts}"
        term.write_text("")
        term.chmod(0o666)
        bind.append([str(term), container.termination_message_path or "/dev/termination-log", False])
        image_bin = self.runner.image_bin(container.image)
        env = self._env(container, image_bin)
        argv = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                for a in [*(container.command or []), *(container.args or [])]]  # fmt: skip
        if not argv:
            raise RuntimeError(
                f"container {container.name}: the runner needs an explicit command (no images here)"
            )
        (self.dir / "home").mkdir(parents=True, exist_ok=True)
        os.chown(self.dir / "home", uid, gid)
        spec_path = self.dir / f"{container.name}-{restarts}.json"
        spec_path.write_text(json.dumps({
            "mounts": bind, "uid": uid, "gid": gid, "groups": groups, "cwd": container.working_dir,
            "argv": argv, "env": env,
            "expose": [sys.base_prefix, *([str(Path(image_bin).parent), PACKAGE_ROOT] if image_bin else [])],
        }))  # fmt: skip
        spec_path.chmod(0o600)
        out = open(self.dir / f"{container.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        popen = subprocess.Popen(
            _in_container(spec_path),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        out.close()
        log.info(
            "started %s/%s container %s pid %d: %s",
            self.namespace,
            self.name,
            container.name,
            popen.pid,
            argv,
        )
        return Proc(container.name, popen, _now(), term, restarts=restarts, spec_path=spec_path)

    def _stop(self, proc: Proc, grace_s: float) -> None:
        if proc.popen.poll() is not None:
            return
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
        except ProcessLookupError:
            pass

    # -- probes -------------------------------------------------------------------------------
    def _exec_probe(self, command: list[str], proc: Proc, timeout_s: float) -> bool:
        """`command` as the container would run it: its mounts, user and environment (a kubelet
        runs it in the container's namespaces; here a sibling process gets the same view)."""
        if proc.spec_path is None:
            return False
        spec = json.loads(proc.spec_path.read_text())
        spec["argv"] = list(command)
        probe_spec = proc.spec_path.with_name(f"{proc.spec_path.stem}-probe.json")
        probe_spec.write_text(json.dumps(spec))
        probe_spec.chmod(0o600)
        try:
            done = subprocess.run(
                _in_container(probe_spec),
                capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _probe(self, probe: Any, container: Any, proc: Proc | None = None) -> bool:
        def port_of(port: Any) -> int:
            if isinstance(port, int) or str(port).isdigit():
                return int(port)
            return int(next(p.container_port for p in container.ports or [] if p.name == port))

        try:
            if probe.http_get:
                url = f"http://{POD_IP}:{port_of(probe.http_get.port)}{probe.http_get.path or '/'}"
                with urllib.request.urlopen(url, timeout=probe.timeout_seconds or 1) as r:
                    return bool(200 <= r.status < 400)
            if probe._exec is not None and probe._exec.command and proc is not None:
                return self._exec_probe(probe._exec.command, proc, probe.timeout_seconds or 1)
            if probe.tcp_socket:
                with socket.create_connection(
                    (POD_IP, port_of(probe.tcp_socket.port)), timeout=probe.timeout_seconds or 1
                ):
                    return True
        except Exception:
            return False
        return False

    def _run_probe(self, kind: str, probe: Any, container: Any, proc: Proc) -> bool | None:
        """None while the probe is not due; else whether the probe's state is passing.

        As the kubelet: a probe starts failing for readiness and startup, flips to passing on a
        success, and back to failing only after `failureThreshold` consecutive failures.
        """
        if probe is None:
            return True
        now = time.monotonic()
        started = proc.last_probe.setdefault("start", now)
        if now - started < (probe.initial_delay_seconds or 0):
            return None
        if now - proc.last_probe.get(kind, 0) < (probe.period_seconds or 10):
            return None
        proc.last_probe[kind] = now
        passing_key = f"{kind}-passing"
        if self._probe(probe, container, proc):
            proc.probe_failures[kind] = 0
            proc.last_probe[passing_key] = 1
            return True
        proc.probe_failures[kind] = proc.probe_failures.get(kind, 0) + 1
        if proc.probe_failures[kind] >= (probe.failure_threshold or 3):
            proc.last_probe[passing_key] = 0
            return False
        # Below the threshold: liveness keeps passing; readiness/startup keep their last state.
        return kind == "liveness" or bool(proc.last_probe.get(passing_key, 0))

    # -- status -------------------------------------------------------------------------------
    def _patch_status(self, status: dict[str, Any]) -> None:
        if status == self.last_status:
            return
        try:
            self.core.patch_namespaced_pod_status(
                self.name, self.namespace, {"status": status}, _content_type=SMP
            )
            self.last_status = status
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s status: %s", self.name, exc.reason)

    def _status(self, phase: str, containers: list[Any]) -> dict[str, Any]:
        statuses = []
        for c in containers:
            proc = self.procs.get(c.name)
            state: dict[str, Any]
            if c.name in self.terminated:
                state = {"terminated": self.terminated[c.name]}
            elif proc:
                state = {"running": {"startedAt": proc.started_at}}
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            statuses.append({
                "name": c.name, "image": c.image, "imageID": "", "containerID": f"runner://{proc.popen.pid}" if proc else "",
                "ready": bool(proc and proc.ready and c.name not in self.terminated), "started": bool(proc and proc.started),
                "restartCount": proc.restarts if proc else 0, "state": state,
                "lastState": {"terminated": self.last_terminated[c.name]} if c.name in self.last_terminated else {},
            })  # fmt: skip
        containers_ready = all(s["ready"] for s in statuses)
        gates = [g.condition_type for g in self.pod.spec.readiness_gates or []]
        live = {c.type: c.status for c in (self.pod.status.conditions or [])}
        gates_ok = all(live.get(g) == "True" for g in gates)

        def cond(type_: str, ok: bool) -> dict[str, Any]:
            return {"type": type_, "status": "True" if ok else "False"}

        return {
            "phase": phase, "podIP": POD_IP, "podIPs": [{"ip": POD_IP}], "hostIP": POD_IP,
            "startTime": self.last_status.get("startTime") or _now(),
            "conditions": [cond("PodReadyToStartContainers", True), cond("Initialized", True),
                           cond("ContainersReady", containers_ready), cond("Ready", containers_ready and gates_ok)],
            "containerStatuses": statuses,
        }  # fmt: skip

    # -- main loop ----------------------------------------------------------------------------
    def update(self, pod: Any) -> None:
        self.pod = pod
        if pod.metadata.deletion_timestamp:
            self.deleting.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            log.exception("pod %s/%s failed in the runner", self.namespace, self.name)
            self._patch_status({"phase": "Failed", "reason": "RunnerError", "message": str(exc)[:1000]})
        finally:
            self.runner.forget(self.uid)

    def _run(self) -> None:
        spec = self.pod.spec
        self.dir.mkdir(parents=True, exist_ok=True)
        pod_sc = spec.security_context
        fs_group = pod_sc.fs_group if pod_sc else None
        mounts = {v.name: self._volume(v, fs_group) for v in spec.volumes or []}
        for host, honours, _ in mounts.values():
            if fs_group is not None and honours:
                self._apply_fs_group(host, fs_group, pod_sc.fs_group_change_policy if pod_sc else None)
        restart_policy = spec.restart_policy or "Always"
        for init in spec.init_containers or []:
            proc = self._start(init, mounts)
            while proc.popen.poll() is None and not self.deleting.is_set():
                time.sleep(0.2)
            if self.deleting.is_set():
                self._stop(proc, 5)
                return self._finish_deletion()
            if proc.popen.returncode != 0:
                message = proc.termination_log.read_text(errors="replace")[:4096]
                self._patch_status({"phase": "Failed", "reason": "InitContainerFailed",
                                    "message": f"init container {init.name} exited {proc.popen.returncode}: {message}"})  # fmt: skip
                return self._wait_deletion()
        containers = list(spec.containers)
        for c in containers:
            self.procs[c.name] = self._start(c, mounts)
        grace = min(spec.termination_grace_period_seconds or 30, 30)
        while not self.deleting.is_set():
            for c in containers:
                proc = self.procs[c.name]
                if c.name in self.terminated:
                    continue
                code = proc.popen.poll()
                if code is None:
                    if not proc.started:
                        verdict = self._run_probe("startup", c.startup_probe, c, proc)
                        if verdict and (
                            c.startup_probe is None or proc.probe_failures.get("startup", 0) == 0
                        ):
                            proc.started = True
                        elif verdict is False and proc.probe_failures.get("startup", 0) >= (
                            c.startup_probe.failure_threshold or 3
                        ):
                            self._stop(proc, grace)
                            code = proc.popen.returncode
                    if proc.started:
                        ready = self._run_probe("readiness", c.readiness_probe, c, proc)
                        if ready is not None:
                            proc.ready = ready
                        if (
                            c.liveness_probe
                            and self._run_probe("liveness", c.liveness_probe, c, proc) is False
                        ):
                            self._stop(proc, grace)
                            code = proc.popen.returncode
                if code is not None:
                    message = proc.termination_log.read_text(errors="replace")[:4096]
                    record = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                              "startedAt": proc.started_at, "finishedAt": _now()}  # fmt: skip
                    if restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0):
                        self.last_terminated[c.name] = record
                        backoff = min(10 * 2**proc.restarts, 60)
                        self._patch_status(self._status("Running", containers) | {})
                        time.sleep(min(backoff, 5))
                        self.procs[c.name] = self._start(c, mounts, restarts=proc.restarts + 1)
                        self.procs[c.name].restarts = proc.restarts + 1
                    else:
                        self.terminated[c.name] = record
            if len(self.terminated) == len(containers):
                ok = all(t["exitCode"] == 0 for t in self.terminated.values())
                self._patch_status(self._status("Succeeded" if ok else "Failed", containers))
                return self._wait_deletion()
            self._patch_status(self._status("Running", containers))
            time.sleep(0.5)
        for proc in self.procs.values():
            self._stop(proc, grace)
        self._finish_deletion()

    def _wait_deletion(self) -> None:
        self.deleting.wait()
        self._finish_deletion()

    def _finish_deletion(self) -> None:
        try:
            self.core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)


class Runner:
    def __init__(
        self, state_dir: Path, apiserver_port: int, image_map: dict[str, str], node_name: str = NODE_NAME
    ) -> None:
        # The client's models are typed, but this stand-in speaks plain dicts to the API,
        # as kubectl would: treat the client as untyped here.
        client: Any = kubernetes.client
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        self.core: Any = client.CoreV1Api()
        self.coordination: Any = client.CoordinationV1Api()
        self.state_dir = state_dir
        self.apiserver_port = apiserver_port
        self.image_map = image_map
        self.node_name = node_name
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()

    def image_bin(self, image: str | None) -> str | None:
        for prefix, bin_dir in sorted(self.image_map.items(), key=lambda kv: -len(kv[0])):
            if (image or "").startswith(prefix) or prefix == "*":
                return bin_dir
        return None

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def register(self) -> None:
        body = runner_node_manifest(self.node_name)
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.core.patch_node_status(self.node_name, {"status": body["status"]})
        self.heartbeat()

    def heartbeat(self) -> None:
        now = _now()
        ready = {"type": "Ready", "status": "True", "reason": "RunnerReady", "message": "inferator test runner",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}  # fmt: skip
        self.core.patch_node_status(
            self.node_name,
            {"status": {"conditions": [ready], "addresses": [{"type": "InternalIP", "address": POD_IP},
                                                            {"type": "Hostname", "address": self.node_name}]}},
            _content_type=SMP,
        )  # fmt: skip
        lease = {"metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40,
                          "renewTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}  # fmt: skip
        try:
            self.coordination.patch_namespaced_lease(self.node_name, "kube-node-lease", lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease)

    def _heartbeats(self) -> None:
        while True:
            time.sleep(10)
            try:
                self.heartbeat()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    def shutdown(self, *_: Any) -> None:
        """Stop every container process: a test bed leaves nothing running behind it."""
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            for proc in worker.procs.values():
                worker._stop(proc, 5)
        os._exit(0)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.shutdown)
        signal.signal(signal.SIGINT, self.shutdown)
        self.register()
        threading.Thread(target=self._heartbeats, daemon=True).start()
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in pods.items:
                    self._dispatch(pod)
                watch: Any = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                stream = watch.stream(
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=pods.metadata.resource_version, timeout_seconds=300,
                )  # fmt: skip
                for event in stream:
                    self._dispatch(event["object"], deleted=event["type"] == "DELETED")
            except Exception:
                log.warning("pod watch failed; re-listing", exc_info=True)
                time.sleep(1)

    def _dispatch(self, pod: Any, deleted: bool = False) -> None:
        uid = pod.metadata.uid
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None and not deleted and pod.status.phase not in ("Succeeded", "Failed"):
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        if worker is not None:
            worker.update(pod)
            if deleted:
                worker.deleting.set()
        elif pod.metadata.deletion_timestamp and not deleted:
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--apiserver-port", type=int, required=True)
    parser.add_argument(
        "--image-map", action="append", default=[], help="IMAGE_PREFIX=BIN_DIR (or *=BIN_DIR)"
    )
    parser.add_argument("--node-name", default=NODE_NAME)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    image_map = dict(item.split("=", 1) for item in args.image_map)
    Runner(args.state_dir, args.apiserver_port, image_map, args.node_name).run()


if __name__ == "__main__":
    main()
