"""GPU catalog and pools: normalised product matching, label fallbacks, MIG, ConfigMap extension, node grouping."""

from __future__ import annotations

from typing import Any

import pytest

from inferator.profiles.catalog import BUILTIN_CATALOG, catalog_from_config, describe_gpu, normalise_product
from inferator.profiles.pools import gpu_pools, parse_quantity_bytes


@pytest.mark.parametrize(
    ("label", "key", "shared", "mig"),
    [
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB-HBM3", False, None),
        ("H100-80GB-HBM3", "H100-80GB-HBM3", False, None),
        ("nvidia-h100-80gb-hbm3", "H100-80GB-HBM3", False, None),
        ("NVIDIA-H100-80GB-HBM3-SHARED", "H100-80GB-HBM3", True, None),
        ("A100-SXM4-40GB", "A100-SXM4-40GB", False, None),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "A100-SXM4-40GB", False, "1G.5GB"),
        ("NVIDIA-H100-PCIe", "H100-PCIE", False, None),
        ("NVIDIA-A100-80GB-PCIe", "A100-80GB-PCIE", False, None),
        ("NVIDIA H100 80GB HBM3", "H100-80GB-HBM3", False, None),
        ("Tesla-T4", "TESLA-T4", False, None),
    ],
)
def test_products_match_by_normalised_name(label: str, key: str, shared: bool, mig: str | None) -> None:
    norm = normalise_product(label)
    assert (norm.key, norm.shared, norm.mig_slice) == (key, shared, mig)


@pytest.mark.parametrize(
    ("product", "short", "bf16", "fp8", "fp4"),
    [
        ("H100-80GB-HBM3", "h100", True, True, False),
        ("H200", "h200", True, True, False),
        ("A100-SXM4-40GB", "a100-40gb", True, False, False),
        ("L4", "l4", True, True, False),
        ("L40S", "l40s", True, True, False),
        ("A10G", "a10g", True, False, False),
        ("B200", "b200", True, True, True),
        ("GB200", "gb200", True, True, True),
        ("TESLA-T4", "t4", False, False, False),
    ],
)
def test_catalog_precisions_follow_compute_capability(
    product: str, short: str, bf16: bool, fp8: bool, fp4: bool
) -> None:
    gpu = BUILTIN_CATALOG[product]
    assert (gpu.short_name, gpu.supports_bf16, gpu.supports_fp8, gpu.supports_fp4) == (short, bf16, fp8, fp4)
    assert gpu.memory_mib > 0
    assert gpu.memory_bandwidth_gb_per_s > 0


def test_short_names_are_unique() -> None:
    shorts = [g.short_name for g in BUILTIN_CATALOG.values()]
    assert len(shorts) == len(set(shorts))


def test_node_memory_label_wins_over_the_catalog() -> None:
    gpu, reason = describe_gpu(
        {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "80000"}
    )
    assert gpu is not None, reason
    assert gpu.memory_mib == 80000
    assert gpu.short_name == "h100"


def test_unknown_product_is_described_from_its_labels() -> None:
    labels = {
        "nvidia.com/gpu.product": "NVIDIA-RTX-PRO-6000-Blackwell",
        "nvidia.com/gpu.memory": "97887",
        "nvidia.com/gpu.compute.major": "12",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/gpu.family": "blackwell",
    }
    gpu, reason = describe_gpu(labels)
    assert gpu is not None, reason
    assert gpu.short_name == "rtx-pro-6000-blackwell"
    assert gpu.memory_mib == 97887
    assert gpu.supports_fp8
    assert gpu.supports_fp4
    assert gpu.family == "blackwell"


def test_unknown_product_without_memory_label_says_how_to_fix_it() -> None:
    gpu, reason = describe_gpu({"nvidia.com/gpu.product": "NVIDIA-Mystery-9000"})
    assert gpu is None
    assert "ConfigMap" in reason
    assert "nvidia.com/gpu.memory" in reason


def test_mig_slice_is_a_gpu_with_the_slice_memory() -> None:
    labels = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", "nvidia.com/gpu.memory": "19968"}
    gpu, _ = describe_gpu(labels)
    assert gpu is not None
    assert gpu.mig_slice == "3G.20GB"
    assert gpu.memory_mib == 19968
    assert gpu.short_name == "a100-40gb-mig-3g.20gb"


def test_catalog_extends_from_configmap_data() -> None:
    data = {
        "gpus.yaml": "NVIDIA-RTX-6000-Ada-Generation:\n  memoryMiB: 49140\n  computeCapability: '8.9'\n"
        "  shortName: rtx6000-ada\n  memoryBandwidthGBps: 960\n",
        "NVIDIA-L4": {"memoryMiB": 22000},
    }
    catalog = catalog_from_config(data)
    assert catalog["RTX-6000-ADA-GENERATION"].short_name == "rtx6000-ada"
    assert catalog["RTX-6000-ADA-GENERATION"].supports_fp8
    assert catalog["L4"].memory_mib == 22000
    assert catalog["L4"].short_name == "l4"
    gpu, _ = describe_gpu({"nvidia.com/gpu.product": "NVIDIA-RTX-6000-Ada-Generation"}, catalog)
    assert gpu is not None
    assert gpu.memory_bandwidth_gb_per_s == 960


def test_catalog_entry_without_compute_capability_is_refused() -> None:
    with pytest.raises(ValueError, match="computeCapability is required"):
        catalog_from_config({"NVIDIA-New-GPU": {"memoryMiB": 1000}})


def _node(name: str, labels: dict[str, str], gpus: int = 0, **extra: Any) -> dict[str, Any]:
    allocatable = {"memory": "64Gi", "cpu": "16"} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": extra,
        "status": {"allocatable": allocatable},
    }


H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}


def test_pools_group_by_product_and_gpu_count() -> None:
    nodes = [
        _node("a", H100, 8),
        _node("b", H100 | {"nvidia.com/gpu.product": "H100-80GB-HBM3"}, 8),
        _node("c", H100, 4),
        _node("cpu", {}),
    ]
    scan = gpu_pools(nodes)
    assert [(p.key, p.node_names) for p in scan.pools] == [
        ("cpu", ("cpu",)),
        ("h100-x4", ("c",)),
        ("h100-x8", ("a", "b")),
    ]
    x8 = scan.pools[2]
    # Two spellings of one product: affinity lists both, a single nodeSelector cannot.
    assert x8.product_label_values == ("H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3")
    assert x8.node_selector() == {}
    values = x8.node_affinity()["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert values["matchExpressions"][0]["values"] == ["H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3"]
    assert (
        scan.pools[0].node_affinity()["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
            0
        ]["matchExpressions"][0]["operator"]
        == "DoesNotExist"
    )


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (_node("n", H100, 8, unschedulable=True), "cordoned"),
        (
            _node("n", H100, 8, taints=[{"key": "dedicated", "value": "training", "effect": "NoSchedule"}]),
            "taint dedicated=training:NoSchedule not tolerated",
        ),
        (_node("n", H100, 0), "no allocatable nvidia.com/gpu"),
        (_node("n", {"nvidia.com/gpu.product": "NVIDIA-Unknown"}, 2), "unknown GPU product"),
        (
            _node("n", H100 | {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED"}, 32),
            "time-sliced GPUs",
        ),
        (_node("n", H100 | {"nvidia.com/gpu.replicas": "4"}, 32), "nvidia.com/gpu.replicas=4"),
    ],
)
def test_unusable_nodes_are_left_out_with_a_reason(node: dict[str, Any], reason: str) -> None:
    scan = gpu_pools([node])
    assert scan.pools == ()
    assert len(scan.excluded) == 1
    assert reason in scan.excluded[0].reason


def test_gpu_taint_and_user_tolerations_are_honoured() -> None:
    gpu_taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    other = [{"key": "dedicated", "value": "llm", "effect": "NoSchedule"}]
    assert gpu_pools([_node("n", H100, 8, taints=gpu_taint)]).pools
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]
    assert gpu_pools([_node("n", H100, 8, taints=other)], tolerations=tolerations).pools
    assert gpu_pools([_node("n", H100, 8, taints=other)], tolerations=[{"operator": "Exists"}]).pools
    # PreferNoSchedule never blocks.
    soft = [{"key": "x", "effect": "PreferNoSchedule"}]
    assert gpu_pools([_node("n", H100, 8, taints=soft)]).pools


def test_node_selector_narrows_the_pools() -> None:
    nodes = [_node("a", H100 | {"zone": "a"}, 8), _node("b", H100 | {"zone": "b"}, 8)]
    scan = gpu_pools(nodes, node_selector={"zone": "b"})
    assert scan.pools[0].node_names == ("b",)
    assert scan.excluded[0].name == "a"


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("64Gi", 64 * 2**30), ("65536Ki", 64 * 2**20), ("1G", 10**9), (1000, 1000), ("bogus", 0), (None, 0)],
)
def test_memory_quantities(quantity: Any, value: int) -> None:
    assert parse_quantity_bytes(quantity) == value
