"""Build the test bed's binaries from the Go module proxy, once per version, into a cache.

No machine here can download release tarballs, so etcd, the Kubernetes control plane,
kubectl and KWOK are compiled from their Go modules. k8s.io/kubernetes is not meant to be
used as a dependency: its go.mod points every staging module (k8s.io/api, client-go, ...)
at `./staging/...` with version v0.0.0. A small wrapper module replaces each of them with
the published v0.X.Y, which is what makes `go build k8s.io/kubernetes/cmd/...` work.

This module imports only the standard library: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.37.2"
# etcd 3.7 is what Kubernetes 1.37 pins in its own go.mod (go.etcd.io/etcd/server/v3).
ETCD_VERSION = "v3.7.3"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"
# The Gateway API's CRDs (standard channel), for rendered HTTPRoutes to be validated by a real
# API server: YAML from the module's zip on the proxy, nothing to build.
GATEWAY_API_VERSION = "v1.6.3"
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")

GOPROXY_URL = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]


def cache_root() -> Path:
    """Where built binaries live; shared by every checkout on the machine."""
    base = os.environ.get("INFERATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inferator"
    )
    return Path(base)


@dataclass(frozen=True)
class Component:
    """One group of binaries built from one wrapper module at one version."""

    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}"

    def is_built(self) -> bool:
        return (self.directory / ".complete").exists() and all(
            (self.directory / b).exists() for b in self.binaries
        )


KUBE = Component(
    "kubernetes",
    KUBE_VERSION,
    ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
)
ETCD = Component("etcd", ETCD_VERSION, ("etcd",))
KWOK = Component("kwok", KWOK_VERSION, ("kwok",))
# The "-2" marks a change to how Helm is built (its ldflags): a new key, so caches rebuild it.
HELM = Component("helm", HELM_VERSION + "-2", ("helm",))
GATEWAY_API = Component(
    "gateway-api",
    GATEWAY_API_VERSION,
    tuple(f"gateway.networking.k8s.io_{name}.yaml" for name in GATEWAY_API_CRDS),
)
ALL = (ETCD, KUBE, KWOK, HELM, GATEWAY_API)


def binary(name: str) -> Path:
    """Absolute path of a built test-bed binary (raises if it was never built)."""
    for component in ALL:
        if name in component.binaries:
            path = component.directory / name
            if not component.is_built():
                raise FileNotFoundError(f"{name} {component.version} is not built; run `inferator dev build`")
            return path
    raise KeyError(name)


def _fetch_mod(module: str, version: str) -> str:
    url = f"{GOPROXY_URL}/{module}/@v/{version}.mod"
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (fixed https URL)
        return str(response.read().decode())


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """Staging modules that k8s.io/kubernetes' go.mod points at ./staging."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, re.M)))


def _ldflags_kube(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return "-s -w " + " ".join(flags)


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("+ go " + " ".join(args), flush=True)
    subprocess.run(["go", *args], cwd=cwd, env=env, check=True)


def _build(component: Component, go_mod: str, packages: dict[str, str], ldflags: str) -> None:
    """Build `packages` (binary name -> Go package) from a wrapper module into the cache."""
    if component.is_built():
        return
    out = component.directory
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod -buildvcs=false")
    with tempfile.TemporaryDirectory(prefix=f"inferator-build-{component.name}-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text(go_mod)
        for name, package in packages.items():
            _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(out / name), package], work, env)
    (out / ".complete").write_text(component.version + "\n")


def build_kubernetes() -> None:
    kube_mod = _fetch_mod("k8s.io/kubernetes", KUBE_VERSION)
    staging_version = "v0" + KUBE_VERSION[2:]  # v1.37.2 -> v0.37.2
    lines = [
        "module inferator.dev/testbed-kubernetes",
        "",
        "go 1.26.0",
        "",
        f"require k8s.io/kubernetes {KUBE_VERSION}",
        "",
    ]
    lines += [f"replace {m} => {m} {staging_version}" for m in staging_modules(kube_mod)]
    packages = {b: f"k8s.io/kubernetes/cmd/{b}" for b in KUBE.binaries}
    _build(KUBE, "\n".join(lines) + "\n", packages, _ldflags_kube(KUBE_VERSION))


def build_etcd() -> None:
    go_mod = (
        "module inferator.dev/testbed-etcd\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    )
    ldflags = f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD_VERSION}"
    _build(ETCD, go_mod, {"etcd": "go.etcd.io/etcd/server/v3"}, ldflags)


# KWOK's own stage sets (shipped in its module): nodes become Ready and keep a lease, pods run
# and complete, PVCs of the `kwok-volume` StorageClass get a PersistentVolume and bind.
KWOK_STAGE_DIRS = ("node/fast", "node/heartbeat-with-lease", "pod/fast", "volume/fast")


def kwok_stages_path() -> Path:
    return KWOK.directory / "stages.yaml"


def _extract_kwok_stages() -> None:
    """Collect the Stage documents KWOK ships, so `kwok --config` gets its standard behaviour."""
    if kwok_stages_path().exists():
        return
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = Path(modcache) / f"sigs.k8s.io/kwok@{KWOK_VERSION}/kustomize/stage"
    docs = []
    for sub in KWOK_STAGE_DIRS:
        for path in sorted((root / sub).glob("*.yaml")):
            text = path.read_text()
            if "kind: Stage" in text:
                docs.append(text.strip())
    if not docs:
        raise RuntimeError(f"no KWOK stages found under {root}")
    kwok_stages_path().write_text("\n---\n".join(docs) + "\n")


def build_kwok() -> None:
    go_mod = f"module inferator.dev/testbed-kwok\n\ngo 1.26.0\n\nrequire sigs.k8s.io/kwok {KWOK_VERSION}\n"
    ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}"
    _build(KWOK, go_mod, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, ldflags)
    _extract_kwok_stages()


def build_helm() -> None:
    go_mod = f"module inferator.dev/testbed-helm\n\ngo 1.26.0\n\nrequire helm.sh/helm/v3 {HELM_VERSION}\n"
    # Helm's default capabilities (the Kubernetes version `helm template` and lint assume)
    # are link-time variables too; without them Helm believes it talks to Kubernetes 1.20.
    kube_minor = KUBE_VERSION.split(".")[1]
    ldflags = (
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
        f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={kube_minor}"
        f" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={kube_minor}"
    )
    _build(HELM, go_mod, {"helm": "helm.sh/helm/v3/cmd/helm"}, ldflags)


def fetch_gateway_api() -> None:
    """The standard-channel CRDs out of sigs.k8s.io/gateway-api's module zip."""
    if GATEWAY_API.is_built():
        return
    import io
    import zipfile

    url = f"{GOPROXY_URL}/sigs.k8s.io/gateway-api/@v/{GATEWAY_API_VERSION}.zip"
    with urllib.request.urlopen(url, timeout=300) as response:  # noqa: S310 (fixed https URL)
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    prefix = f"sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}/config/crd/standard/"
    GATEWAY_API.directory.mkdir(parents=True, exist_ok=True)
    for name in GATEWAY_API.binaries:
        (GATEWAY_API.directory / name).write_bytes(archive.read(prefix + name))
    (GATEWAY_API.directory / ".complete").write_text(GATEWAY_API_VERSION + "\n")


def gateway_api_crds() -> list[Path]:
    """The Gateway API CRD files (raises if never fetched)."""
    if not GATEWAY_API.is_built():
        raise FileNotFoundError(
            f"Gateway API {GATEWAY_API_VERSION} CRDs are not fetched; run `inferator dev build`"
        )
    return [GATEWAY_API.directory / name for name in GATEWAY_API.binaries]


def build_keda() -> None:
    """KEDA's operator and CRDs (inferator.dev.keda): the autoscaling tests run the real one."""
    from inferator.dev import keda

    keda.build_keda()


BUILDERS = {"etcd": build_etcd, "kubernetes": build_kubernetes, "kwok": build_kwok, "helm": build_helm,
            "gateway-api": fetch_gateway_api, "keda": build_keda}  # fmt: skip


def build_all(only: list[str] | None = None) -> None:
    """Build whatever is missing from the cache; a no-op when all is built."""
    if shutil.which("go") is None:
        sys.exit("go is not on PATH: the test bed is compiled from the Go module proxy")
    for name, build in BUILDERS.items():
        if only and name not in only:
            continue
        build()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("components", nargs="*", choices=[*BUILDERS, []], default=None)
    parser.add_argument("--print-dir", action="store_true", help="print the cache directory and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(cache_root())
        return
    build_all(args.components or None)


if __name__ == "__main__":
    main()
