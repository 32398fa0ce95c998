"""GPU pools: schedulable nodes grouped by normalised GPU product and GPU count per node.

A profile runs on one node (tensor parallelism does not cross nodes), so what matters is
"how many GPUs of which product can one pod get". Nodes are plain dicts as the API returns
them (`kubectl get nodes -o yaml`, or the kubernetes client's `.to_dict()` after
`sanitize_for_serialization`), so this module needs no client.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferator.profiles.catalog import (
    COMPUTE_MAJOR_LABEL,
    COMPUTE_MINOR_LABEL,
    FAMILY_LABEL,
    GPU_RESOURCE,
    MEMORY_LABEL,
    PRODUCT_LABEL,
    GpuSpec,
    describe_gpu,
    normalise_product,
)

CPU_POOL_KEY = "cpu"
REPLICAS_LABEL = "nvidia.com/gpu.replicas"  # GFD: > 1 when the device plugin time-slices each GPU
# The labels describe_gpu reads; equal values mean an equal GpuSpec.
GPU_DESCRIPTION_LABELS = (
    PRODUCT_LABEL,
    MEMORY_LABEL,
    COMPUTE_MAJOR_LABEL,
    COMPUTE_MINOR_LABEL,
    FAMILY_LABEL,
    REPLICAS_LABEL,
)
# Node Feature Discovery labels that say the CPU runs BF16 natively (AVX512-BF16 or AMX).
CPU_BF16_LABELS = (
    "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
    "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
)
# Taint keys a GPU serving pod tolerates by default: the NVIDIA GPU Operator's convention.
DEFAULT_TOLERATED_TAINT_KEYS = ("nvidia.com/gpu",)

_QUANTITY = re.compile(r"^(?P<num>[0-9.]+)(?P<suffix>[a-zA-Z]*)$")
_SUFFIX_BYTES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str | None
    effect: str

    def toleration(self) -> dict[str, str]:
        """The toleration a pod needs for this taint."""
        if self.value is None:
            return {"key": self.key, "operator": "Exists", "effect": self.effect}
        return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}


# Labels that name a topology domain, most specific first: NVIDIA's NVLink clique (GB200 NVL72
# racks), then the zone. A multi-node group stays within the first one every node of its pool
# carries (a group across zones would run its pipeline over the slowest links there are).
TOPOLOGY_KEYS = ("nvidia.com/gpu.clique", "topology.kubernetes.io/zone")


def topology_domains(labels: Sequence[Mapping[str, str]]) -> tuple[str | None, tuple[tuple[str, int], ...]]:
    """The first TOPOLOGY_KEYS label all these nodes carry, and its values with their node counts
    (most nodes first, then by name); (None, ()) when they share none."""
    for key in TOPOLOGY_KEYS:
        values = [node.get(key) for node in labels]
        if values and all(values):
            counts = Counter(str(v) for v in values)
            return key, tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return None, ()


@dataclass(frozen=True, slots=True)
class GpuPool:
    """Nodes that can give a pod `gpus_per_node` GPUs of one product.

    `gpu` is None for the CPU pool. `memory_bytes_per_node` is the smallest allocatable memory
    among the nodes (what a CPU engine can count on). `product_label_values` are the raw label
    spellings seen, for node affinity.
    """

    key: str
    gpu: GpuSpec | None
    gpus_per_node: int
    node_names: tuple[str, ...]
    product_label_values: tuple[str, ...]
    memory_bytes_per_node: int
    cpu_bf16: bool = False
    taints: tuple[Taint, ...] = ()
    # The topology label every node of the pool carries (TOPOLOGY_KEYS), and how many of the
    # pool's nodes each of its values holds, most first: where a multi-node group fits.
    topology_key: str | None = None
    domains: tuple[tuple[str, int], ...] = ()

    @property
    def largest_domain(self) -> int:
        """Nodes of the pool a multi-node group can span while staying in one topology domain."""
        return self.domains[0][1] if self.topology_key else self.node_count

    @property
    def node_count(self) -> int:
        return len(self.node_names)

    @property
    def display_name(self) -> str:
        return self.gpu.display_name if self.gpu else "CPU"

    def node_selector(self) -> dict[str, str]:
        """A nodeSelector for the pool when one label value names it; otherwise empty (use node_affinity)."""
        if self.gpu is not None and len(self.product_label_values) == 1:
            return {PRODUCT_LABEL: self.product_label_values[0]}
        return {}

    def node_affinity(self) -> dict[str, Any]:
        """requiredDuringSchedulingIgnoredDuringExecution for the pool (all spellings of its product)."""
        if self.gpu is None:
            expression: dict[str, Any] = {"key": PRODUCT_LABEL, "operator": "DoesNotExist"}
        else:
            expression = {"key": PRODUCT_LABEL, "operator": "In", "values": list(self.product_label_values)}
        return {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expression]}]
            }
        }


@dataclass(frozen=True, slots=True)
class ExcludedNode:
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class PoolScan:
    pools: tuple[GpuPool, ...]
    excluded: tuple[ExcludedNode, ...] = field(default=())


def parse_quantity_bytes(value: Any) -> int:
    """A Kubernetes memory quantity ("64Gi", "65536Ki", 1000) in bytes; 0 when absent or unreadable."""
    if value is None:
        return 0
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group("suffix") not in _SUFFIX_BYTES:
        return 0
    return int(float(match.group("num")) * _SUFFIX_BYTES[match.group("suffix")])


def _gpu_count(allocatable: Mapping[str, Any]) -> int:
    value = allocatable.get(GPU_RESOURCE)
    if value is None:
        return 0
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def _taints(node: Mapping[str, Any]) -> tuple[Taint, ...]:
    taints = []
    for item in (node.get("spec") or {}).get("taints") or []:
        effect = str(item.get("effect", ""))
        if effect in ("NoSchedule", "NoExecute"):
            value = item.get("value")
            taints.append(
                Taint(str(item.get("key", "")), None if value in (None, "") else str(value), effect)
            )
    return tuple(taints)


def _tolerated(taint: Taint, tolerations: Sequence[Mapping[str, Any]], tolerated_keys: Iterable[str]) -> bool:
    if taint.key in tolerated_keys:
        return True
    for tol in tolerations:
        effect = tol.get("effect")
        if effect not in (None, "", taint.effect):
            continue
        key = tol.get("key")
        if tol.get("operator") == "Exists":
            if key in (None, "", taint.key):
                return True
        elif key == taint.key and (tol.get("value") or None) == taint.value:
            return True
    return False


def _describe_unshared_gpu(
    labels: Mapping[str, str], catalog: Mapping[str, GpuSpec] | None
) -> tuple[GpuSpec | None, str]:
    """describe_gpu, refusing time-sliced GPUs: they share memory without isolation."""
    raw_product = labels.get(PRODUCT_LABEL, "")
    replicas = str(labels.get(REPLICAS_LABEL, "1"))
    if normalise_product(raw_product).shared or replicas not in ("", "1"):
        return None, (
            f"time-sliced GPUs ({raw_product}, {REPLICAS_LABEL}={replicas}) share memory without "
            "isolation, and an engine reserves most of a GPU's memory: serve from unshared GPUs"
        )
    return describe_gpu(labels, catalog)


def gpu_pools(
    nodes: Iterable[Mapping[str, Any]],
    catalog: Mapping[str, GpuSpec] | None = None,
    *,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    tolerated_taint_keys: Iterable[str] = DEFAULT_TOLERATED_TAINT_KEYS,
) -> PoolScan:
    """Group schedulable nodes into pools, keeping the reason each other node was left out.

    A node is left out when it is cordoned, does not match `node_selector` (the user's
    `spec.scheduling.nodeSelector`), carries a NoSchedule/NoExecute taint that neither the
    user's tolerations nor `tolerated_taint_keys` cover, has a GPU product the catalog and
    its labels cannot describe, or time-slices its GPUs (`-SHARED`, `gpu.replicas` > 1). Nodes without GPUs form the `cpu` pool (for vllm-cpu).
    """
    tolerated_keys = frozenset(tolerated_taint_keys)
    groups: dict[tuple[str, int], list[tuple[str, GpuSpec | None, str, int, bool, tuple[Taint, ...]]]] = {}
    excluded: list[ExcludedNode] = []
    described: dict[tuple[str | None, ...], tuple[GpuSpec | None, str]] = {}
    node_labels: dict[str, Mapping[str, str]] = {}
    for node in nodes:
        metadata = node.get("metadata") or {}
        name = str(metadata.get("name", "?"))
        labels: Mapping[str, str] = metadata.get("labels") or {}
        node_labels[name] = labels
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        allocatable: Mapping[str, Any] = status.get("allocatable") or {}
        if spec.get("unschedulable"):
            excluded.append(ExcludedNode(name, "cordoned (spec.unschedulable)"))
            continue
        if node_selector and any(labels.get(k) != v for k, v in node_selector.items()):
            excluded.append(
                ExcludedNode(name, f"does not match spec.scheduling.nodeSelector {dict(node_selector)}")
            )
            continue
        taints = _taints(node)
        blocking = [t for t in taints if not _tolerated(t, tolerations, tolerated_keys)]
        if blocking:
            t = blocking[0]
            excluded.append(
                ExcludedNode(
                    name,
                    f"taint {t.key}{'=' + t.value if t.value else ''}:{t.effect} not tolerated "
                    "(add a toleration in spec.scheduling.tolerations)",
                )
            )
            continue
        gpus = _gpu_count(allocatable)
        memory_bytes = parse_quantity_bytes(allocatable.get("memory"))
        raw_product = labels.get(PRODUCT_LABEL)
        cpu_bf16 = any(str(labels.get(label, "")).lower() == "true" for label in CPU_BF16_LABELS)
        if gpus <= 0:
            if raw_product:
                excluded.append(
                    ExcludedNode(
                        name,
                        f"{raw_product} node has no allocatable {GPU_RESOURCE} (is the device plugin running?)",
                    )
                )
                continue
            groups.setdefault((CPU_POOL_KEY, 0), []).append((name, None, "", memory_bytes, cpu_bf16, taints))
            continue
        # Nodes of one pool carry the same GPU labels: describe each distinct set once.
        gpu_key = tuple(labels.get(k) for k in GPU_DESCRIPTION_LABELS)
        if gpu_key not in described:
            described[gpu_key] = _describe_unshared_gpu(labels, catalog)
        gpu, reason = described[gpu_key]
        if gpu is None:
            excluded.append(ExcludedNode(name, reason))
            continue
        groups.setdefault((gpu.short_name, gpus), []).append(
            (name, gpu, str(raw_product), memory_bytes, cpu_bf16, taints)
        )
    pools = []
    for (short, count), members in sorted(groups.items()):
        members.sort(key=lambda m: m[0])
        first_gpu = members[0][1]
        if first_gpu is not None:
            # Nodes of one product may report slightly different memory (driver reserves): use the least.
            least = min(m[1].memory_mib for m in members if m[1] is not None)
            if least != first_gpu.memory_mib:
                first_gpu = GpuSpec(
                    first_gpu.product,
                    first_gpu.short_name,
                    least,
                    first_gpu.memory_bandwidth_gb_per_s,
                    first_gpu.compute_capability,
                    first_gpu.family,
                    first_gpu.nvlink,
                    first_gpu.mig_slice,
                )
        key = CPU_POOL_KEY if first_gpu is None else f"{short}-x{count}"
        taints = tuple(sorted({t for m in members for t in m[5]}, key=lambda t: (t.key, t.effect)))
        topology_key, domains = topology_domains([node_labels[m[0]] for m in members])
        pools.append(
            GpuPool(
                key=key,
                gpu=first_gpu,
                gpus_per_node=count,
                node_names=tuple(m[0] for m in members),
                product_label_values=tuple(sorted({m[2] for m in members if m[2]})),
                memory_bytes_per_node=min(m[3] for m in members),
                cpu_bf16=all(m[4] for m in members),
                taints=taints,
                topology_key=topology_key,
                domains=domains,
            )
        )
    return PoolScan(tuple(pools), tuple(sorted(excluded, key=lambda e: e.name)))
