"""The simulated nodes of the test bed: the labels NVIDIA GPU Feature Discovery would set.

Values are what GFD reports on real machines (DESIGN.md, "Facts worth knowing"): product
names are NVML names with spaces as dashes, memory in MiB as NVML reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class GpuModel:
    product: str
    memory_mib: int  # nvidia.com/gpu.memory as GFD reports it
    compute_major: int
    compute_minor: int
    family: str


H100_SXM = GpuModel("NVIDIA-H100-80GB-HBM3", 81559, 9, 0, "hopper")
A100_SXM_40 = GpuModel("NVIDIA-A100-SXM4-40GB", 40960, 8, 0, "ampere")
L4 = GpuModel("NVIDIA-L4", 23034, 8, 9, "ada-lovelace")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpu: GpuModel | None
    gpu_count: int
    cpu: int
    memory_gi: int
    instance_type: str
    zone: str = "zone-a"


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("gpu-h100-0", H100_SXM, 8, 192, 2048, "p5.48xlarge"),
    NodeSpec("gpu-h100-1", H100_SXM, 8, 192, 2048, "p5.48xlarge", zone="zone-b"),
    NodeSpec("gpu-a100-0", A100_SXM_40, 4, 96, 1152, "a2-highgpu-4g"),
    NodeSpec("gpu-l4-0", L4, 1, 8, 32, "g6.2xlarge"),
    NodeSpec("gpu-l4-1", L4, 1, 8, 32, "g6.2xlarge", zone="zone-b"),
    NodeSpec("cpu-0", None, 0, 16, 64, "m7i.4xlarge"),
)


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    """A Node object that KWOK will keep alive, with GFD labels and `nvidia.com/gpu` capacity."""
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": spec.instance_type,
        "topology.kubernetes.io/zone": spec.zone,
        "type": "kwok",
    }
    capacity: dict[str, str] = {
        "cpu": str(spec.cpu),
        "memory": f"{spec.memory_gi}Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
    }
    taints: list[dict[str, str]] = []
    if spec.gpu is not None:
        gpu = spec.gpu
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": gpu.product,
            "nvidia.com/gpu.memory": str(gpu.memory_mib),
            "nvidia.com/gpu.count": str(spec.gpu_count),
            "nvidia.com/gpu.compute.major": str(gpu.compute_major),
            "nvidia.com/gpu.compute.minor": str(gpu.compute_minor),
            "nvidia.com/gpu.family": gpu.family,
            "nvidia.com/gpu.replicas": "1",
            "nvidia.com/gpu.sharing-strategy": "none",
            "nvidia.com/mig.capable": "true"
            if gpu.compute_major >= 8 and "L4" not in gpu.product
            else "false",
            "nvidia.com/cuda.driver-version.major": "580",
        }
        capacity["nvidia.com/gpu"] = str(spec.gpu_count)
        # Managed GPU pools commonly taint GPU nodes so only GPU pods land there; the API
        # server's ExtendedResourceToleration plugin adds the toleration to pods that ask for GPUs.
        taints.append({"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok",
            },
        },
    }
