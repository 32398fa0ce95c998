"""Real KEDA in the test bed: its operator compiled from the Go module proxy, its CRDs from the module.

Only the operator (github.com/kedacore/keda/v2/cmd/operator) is built: it is the part that scales
a ScaledObject's target between 0 and 1 replicas (activation), creates and owns the HPA, and
writes the ScaledObject's status. The metrics adapter (cmd/adapter, the external.metrics.k8s.io
APIService the HPA reads for 1 -> N) and the admission webhooks are not run.

KEDA's go.mod carries `replace` and `exclude` directives, which Go ignores in a dependency's
go.mod; the wrapper module repeats them so the build uses exactly KEDA's module graph.

`inferator dev build` builds it with the rest of the test bed (toolchain.BUILDERS); cold, it is
the largest part: about 17 minutes on 2 cores and 4 GB of Go caches.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from inferator.dev import toolchain
from inferator.dev.cluster import LocalCluster, free_port

KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
# Every CRD the operator's controllers watch: without one, its informer never syncs.
KEDA_CRDS = (
    "keda.sh_scaledobjects.yaml",
    "keda.sh_scaledjobs.yaml",
    "keda.sh_triggerauthentications.yaml",
    "keda.sh_clustertriggerauthentications.yaml",
    "eventing.keda.sh_cloudeventsources.yaml",
    "eventing.keda.sh_clustercloudeventsources.yaml",
)
KEDA = toolchain.Component("keda", KEDA_VERSION, ("keda",))


def crd_paths() -> list[Path]:
    return [KEDA.directory / "crds" / name for name in KEDA_CRDS]


def inherited_directives(go_mod: str) -> list[str]:
    """The single-line `replace` (to a module version, not a local path) and `exclude` lines."""
    exclude = re.compile(r"^exclude\s+\S+\s+v\S+$")
    replace = re.compile(r"^replace\s+\S+(\s+v\S+)?\s+=>\s+[^./\s]\S*\s+v\S+$")
    stripped = (line.split("//")[0].strip() for line in go_mod.splitlines())
    return [line for line in stripped if exclude.match(line) or replace.match(line)]


def _module_dir() -> Path:
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(modcache) / f"{KEDA_MODULE}@{KEDA_VERSION}"


def _extract_crds() -> None:
    if all(p.exists() for p in crd_paths()):
        return
    source = _module_dir() / "config" / "crd" / "bases"
    target = KEDA.directory / "crds"
    target.mkdir(parents=True, exist_ok=True)
    for name in KEDA_CRDS:
        shutil.copyfile(source / name, target / name)


def build_keda() -> None:
    """Build KEDA's operator into the cache and copy its CRDs next to it; a no-op when done.

    Cold, this downloads ~255 modules (~1.5 GB in GOMODCACHE) and compiles for ~20 CPU-minutes.
    """
    if not KEDA.is_built():
        go_mod = "\n".join(
            [
                "module inferator.dev/testbed-keda",
                "",
                "go 1.26.0",
                "",
                f"require {KEDA_MODULE} {KEDA_VERSION}",
                "",
                *inherited_directives(toolchain._fetch_mod(KEDA_MODULE, KEDA_VERSION)),
            ]
        )
        ldflags = (
            f"-s -w -X {KEDA_MODULE}/version.Version={KEDA_VERSION.lstrip('v')}"
            f" -X {KEDA_MODULE}/version.GitCommit={KEDA_VERSION}"
        )
        toolchain._build(KEDA, go_mod + "\n", {"keda": f"{KEDA_MODULE}/cmd/operator"}, ldflags)
    _extract_crds()


def install_keda_crds(cluster: LocalCluster) -> None:
    """Apply KEDA's CRDs (server-side: the ScaledJob CRD is too big for client-side apply)."""
    for path in crd_paths():
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = [p.name.removesuffix(".yaml").split("_", 1) for p in crd_paths()]
    for group, plural in names:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.{group}")


class KedaOperator:
    """KEDA's operator as a local process against `cluster`, for use as a context manager.

    `start()` applies the CRDs, creates `namespace` (where KEDA looks for its own objects and
    cluster-scoped trigger secrets), gives its metrics gRPC server (which no adapter dials here)
    the cluster's CA and loopback serving cert, and waits for the operator's readiness probe.
    `pollingInterval`/`cooldownPeriod` on each ScaledObject set how fast it scales.
    """

    def __init__(
        self, cluster: LocalCluster, namespace: str = "keda", watch_namespaces: tuple[str, ...] = ()
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.watch_namespaces = watch_namespaces
        self.cert_dir = cluster.state_dir / "keda-certs"
        self.log_path = cluster.logs / "keda.log"
        self.pid_file = cluster.state_dir / "pids" / "keda.pid"
        self.probe_port = free_port()
        self.metrics_port = free_port()
        self.grpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(KEDA.directory / "keda"),
            "--leader-elect=false",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            f"--metrics-service-bind-address=127.0.0.1:{self.grpc_port}",
            f"--cert-dir={self.cert_dir}",
            # Extra CAs scalers trust (every file must be a PEM certificate): the test bed's CA.
            f"--ca-dir={self.cert_dir / 'ca'}",
            "--zap-encoder=console",
            "--zap-time-encoding=rfc3339",
        ]

    def _certs(self) -> None:
        pki = self.cluster.pki
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        for source, name in (
            (pki.ca_cert, "ca.crt"),
            (pki.serving_cert, "tls.crt"),
            (pki.serving_key, "tls.key"),
        ):
            shutil.copyfile(source, self.cert_dir / name)
        (self.cert_dir / "tls.key").chmod(0o600)
        (self.cert_dir / "ca").mkdir(exist_ok=True)
        shutil.copyfile(pki.ca_cert, self.cert_dir / "ca" / "ca.crt")

    def start(self, timeout_s: float = 120) -> None:
        if not KEDA.is_built():
            raise FileNotFoundError(f"KEDA {KEDA_VERSION} is not built; call inferator.dev.keda.build_keda()")
        install_keda_crds(self.cluster)
        self.cluster.create_namespace(self.namespace, restricted=False)
        self._certs()
        env = dict(
            os.environ,
            KUBECONFIG=str(self.cluster.kubeconfig),
            WATCH_NAMESPACE=",".join(self.watch_namespaces),
            POD_NAMESPACE=self.namespace,
            KEDA_CLUSTER_OBJECT_NAMESPACE=self.namespace,
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.cluster.state_dir,
                env=env,
            )
        self.pid_file.write_text(str(self.proc.pid))
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        url = f"http://127.0.0.1:{self.probe_port}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"keda exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"keda not ready at {url} after {timeout_s}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> KedaOperator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
