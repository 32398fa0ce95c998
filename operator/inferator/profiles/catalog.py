"""GPU catalog: what a `nvidia.com/gpu.product` label means in memory, bandwidth and precisions.

GPU Feature Discovery writes the NVML product name with spaces turned into `-`. The same GPU
shows up under several spellings (older drivers omit the `NVIDIA-` prefix, time-slicing adds
`-SHARED`, MIG's single strategy appends `-MIG-<slice>`), so every lookup goes through
`normalise_product`. Products the catalog does not know are described from the node's own
labels (`nvidia.com/gpu.memory`, `gpu.compute.major/minor`, `gpu.family`), and an operator
ConfigMap can add or override entries (`catalog_from_config`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, as NVML reports total memory
COUNT_LABEL = "nvidia.com/gpu.count"
COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
FAMILY_LABEL = "nvidia.com/gpu.family"
GPU_RESOURCE = "nvidia.com/gpu"

# Compute capability thresholds (CUDA programming guide, "Compute Capabilities" tables).
BF16_MIN_COMPUTE = (8, 0)  # Ampere introduced BF16 tensor cores
FP8_MIN_COMPUTE = (8, 9)  # Ada (8.9) and Hopper (9.0) introduced FP8 tensor cores
FP4_MIN_COMPUTE = (10, 0)  # Blackwell introduced FP4 tensor cores

_MIG_SUFFIX = re.compile(r"-MIG-(?P<slice>\d+G\.\d+GB)$")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU product. `product` is the normalised key (`H100-80GB-HBM3`)."""

    product: str
    short_name: str
    memory_mib: int
    memory_bandwidth_gb_per_s: int
    compute_capability: tuple[int, int]
    family: str
    nvlink: bool = False
    mig_slice: str | None = None

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability >= BF16_MIN_COMPUTE

    @property
    def supports_fp8(self) -> bool:
        """Native FP8 tensor cores; Ampere runs FP8 weights only through slower weight-only kernels."""
        return self.compute_capability >= FP8_MIN_COMPUTE

    @property
    def supports_fp4(self) -> bool:
        return self.compute_capability >= FP4_MIN_COMPUTE

    @property
    def display_name(self) -> str:
        """The product as GPU Feature Discovery spells it today (`NVIDIA-H100-80GB-HBM3`)."""
        base = f"NVIDIA-{self.product}"
        return f"{base}-MIG-{self.mig_slice}" if self.mig_slice else base


def _gpu(
    product: str, short: str, memory_mib: int, bandwidth: int, cc: tuple[int, int], family: str, nvlink: bool
) -> GpuSpec:
    return GpuSpec(product, short, memory_mib, bandwidth, cc, family, nvlink)


# memory_mib is what NVML reports as total memory (the value of nvidia.com/gpu.memory); where a
# node carries that label, the label wins over this table. Bandwidths are the datasheet figures.
BUILTIN_CATALOG: dict[str, GpuSpec] = {
    g.product: g
    for g in (
        # NVIDIA H100 datasheet (SXM5: 80 GB HBM3, 3.35 TB/s); 81559 MiB from GFD on H100 SXM nodes
        _gpu("H100-80GB-HBM3", "h100", 81559, 3350, (9, 0), "hopper", True),
        # NVIDIA H100 datasheet (PCIe: 80 GB HBM2e, 2.0 TB/s)
        _gpu("H100-PCIE", "h100-pcie", 81559, 2000, (9, 0), "hopper", False),
        # NVIDIA H100 NVL datasheet (94 GB HBM3, 3.9 TB/s); 95830 MiB as nvidia-smi reports it
        _gpu("H100-NVL", "h100-nvl", 95830, 3900, (9, 0), "hopper", True),
        # NVIDIA H200 datasheet (SXM: 141 GB HBM3e, 4.8 TB/s); 143771 MiB as nvidia-smi reports it
        _gpu("H200", "h200", 143771, 4800, (9, 0), "hopper", True),
        # NVIDIA H200 NVL datasheet (141 GB HBM3e, 4.8 TB/s, PCIe with NVLink bridges)
        _gpu("H200-NVL", "h200-nvl", 143771, 4800, (9, 0), "hopper", True),
        # NVIDIA A100 datasheet (SXM4 40 GB HBM2, 1555 GB/s)
        _gpu("A100-SXM4-40GB", "a100-40gb", 40960, 1555, (8, 0), "ampere", True),
        # NVIDIA A100 datasheet (SXM4 80 GB HBM2e, 2039 GB/s)
        _gpu("A100-SXM4-80GB", "a100-80gb", 81920, 2039, (8, 0), "ampere", True),
        # NVIDIA A100 datasheet (PCIe 40 GB HBM2, 1555 GB/s)
        _gpu("A100-PCIE-40GB", "a100-pcie-40gb", 40960, 1555, (8, 0), "ampere", False),
        # NVIDIA A100 datasheet (PCIe 80 GB HBM2e, 1935 GB/s)
        _gpu("A100-80GB-PCIE", "a100-pcie-80gb", 81920, 1935, (8, 0), "ampere", False),
        # NVIDIA L40S datasheet (48 GB GDDR6, 864 GB/s); 46068 MiB from GFD
        _gpu("L40S", "l40s", 46068, 864, (8, 9), "ada-lovelace", False),
        # NVIDIA L40 datasheet (48 GB GDDR6, 864 GB/s)
        _gpu("L40", "l40", 46068, 864, (8, 9), "ada-lovelace", False),
        # NVIDIA L4 datasheet (24 GB GDDR6, 300 GB/s); 23034 MiB from GFD
        _gpu("L4", "l4", 23034, 300, (8, 9), "ada-lovelace", False),
        # AWS G5 documentation (A10G: 24 GB GDDR6, 600 GB/s); 23028 MiB from GFD
        _gpu("A10G", "a10g", 23028, 600, (8, 6), "ampere", False),
        # NVIDIA A10 datasheet (24 GB GDDR6, 600 GB/s)
        _gpu("A10", "a10", 23028, 600, (8, 6), "ampere", False),
        # NVIDIA T4 datasheet (16 GB GDDR6, 320 GB/s); Turing has no BF16
        _gpu("TESLA-T4", "t4", 15360, 320, (7, 5), "turing", False),
        # NVIDIA DGX B200 datasheet (1,440 GB for 8 GPUs = 180 GB each, 8 TB/s); 180e9 bytes in MiB
        _gpu("B200", "b200", 171661, 8000, (10, 0), "blackwell", True),
        # NVIDIA GB200 NVL72 datasheet (186 GB HBM3e per GPU, 8 TB/s); 186e9 bytes in MiB
        _gpu("GB200", "gb200", 177383, 8000, (10, 0), "blackwell", True),
    )
}

# Spellings seen in the wild that mean a catalog entry (normalised -> catalog key).
_ALIASES: dict[str, str] = {
    "H100-SXM5-80GB": "H100-80GB-HBM3",
    "H100-80GB-PCIE": "H100-PCIE",
    "TESLA-T4": "TESLA-T4",
    "T4": "TESLA-T4",
    "A100-SXM-80GB": "A100-SXM4-80GB",
}


@dataclass(frozen=True, slots=True)
class NormalisedProduct:
    """A product label split into its parts."""

    key: str  # H100-80GB-HBM3
    shared: bool  # time-sliced (-SHARED)
    mig_slice: str | None  # 1G.10GB


def normalise_product(label: str) -> NormalisedProduct:
    """Normalise a `nvidia.com/gpu.product` value: upper case, no `NVIDIA-` prefix, no `-SHARED`, MIG split off.

    Spaces and underscores become `-`, so a product typed by hand in a ConfigMap or a
    selector (`nvidia h100 80gb hbm3`) matches the label GFD writes.
    """
    key = re.sub(r"[\s_]+", "-", label.strip()).upper()
    shared = key.endswith("-SHARED")
    if shared:
        key = key[: -len("-SHARED")]
    mig_slice = None
    match = _MIG_SUFFIX.search(key)
    if match:
        mig_slice = match.group("slice")
        key = key[: match.start()]
    if key.startswith("NVIDIA-"):
        key = key[len("NVIDIA-") :]
    key = _ALIASES.get(key, key)
    return NormalisedProduct(key, shared, mig_slice)


def _short_name_from_key(key: str) -> str:
    """A profile-name-safe short name for a product the catalog does not know."""
    short = re.sub(r"[^a-z0-9.]+", "-", key.lower()).strip("-.")
    return short or "gpu"


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    value = labels.get(key)
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def describe_gpu(
    labels: Mapping[str, str], catalog: Mapping[str, GpuSpec] | None = None
) -> tuple[GpuSpec | None, str]:
    """The GPU a node's labels describe, or None and the reason it cannot be used.

    The catalog supplies bandwidth and a short name; the node's own `gpu.memory` and
    compute capability labels, when present, win (they were measured on that node).
    MIG slices are served as a GPU with the slice's memory: they run one engine each and
    cannot be combined for tensor parallelism (the candidates limit them to TP 1).
    """
    catalog = BUILTIN_CATALOG if catalog is None else catalog
    raw = labels.get(PRODUCT_LABEL)
    if not raw:
        return None, f"no {PRODUCT_LABEL} label (is GPU Feature Discovery running?)"
    norm = normalise_product(raw)
    known = catalog.get(norm.key)
    memory_mib = _int_label(labels, MEMORY_LABEL)
    major = _int_label(labels, COMPUTE_MAJOR_LABEL)
    minor = _int_label(labels, COMPUTE_MINOR_LABEL)
    family = labels.get(FAMILY_LABEL)
    if known is None:
        if memory_mib is None or memory_mib <= 0:
            return None, (
                f"unknown GPU product {raw!r} and no {MEMORY_LABEL} label: describe it in the operator's "
                "GPU catalog ConfigMap (memoryMiB, computeCapability, shortName)"
            )
        if major is None:
            return None, (
                f"unknown GPU product {raw!r} and no {COMPUTE_MAJOR_LABEL} label: describe it in the "
                "operator's GPU catalog ConfigMap (computeCapability)"
            )
        spec = GpuSpec(
            product=norm.key,
            short_name=_short_name_from_key(norm.key),
            memory_mib=memory_mib,
            memory_bandwidth_gb_per_s=0,
            compute_capability=(major, minor or 0),
            family=family or "unknown",
        )
    else:
        spec = known
        if memory_mib is not None and memory_mib > 0:
            spec = replace(spec, memory_mib=memory_mib)
        if major is not None:
            spec = replace(spec, compute_capability=(major, minor or 0))
    if norm.mig_slice:
        slice_mib = _mig_slice_memory_mib(norm.mig_slice)
        # Under the MIG single strategy GFD reports the slice's memory in gpu.memory; prefer it.
        mig_memory = memory_mib if memory_mib else slice_mib
        spec = replace(
            spec,
            memory_mib=mig_memory,
            mig_slice=norm.mig_slice,
            short_name=f"{spec.short_name}-mig-{norm.mig_slice.lower()}",
            nvlink=False,
        )
    return spec, ""


def _mig_slice_memory_mib(mig_slice: str) -> int:
    """Memory of a MIG slice from its name (`1G.10GB` -> 10 GiB); the label is preferred when present."""
    match = re.match(r"\d+G\.(\d+)GB$", mig_slice)
    return int(match.group(1)) * 1024 if match else 0


def catalog_from_config(
    data: Mapping[str, Any], base: Mapping[str, GpuSpec] | None = None
) -> dict[str, GpuSpec]:
    """Extend the catalog from an operator ConfigMap's `data` (or any mapping).

    Each key is a product (any spelling `normalise_product` accepts); each value a mapping or a
    YAML string with `memoryMiB`, `computeCapability` ("9.0"), and optionally `shortName`,
    `memoryBandwidthGBps`, `family`, `nvlink`. A key `gpus.yaml` holding a YAML mapping of such
    entries is also accepted, so the ConfigMap can be one file. Entries override built-ins.
    """
    catalog = dict(BUILTIN_CATALOG if base is None else base)
    entries: dict[str, Any] = {}
    for key, value in data.items():
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        if key.endswith((".yaml", ".yml")) and isinstance(parsed, Mapping):
            entries.update(parsed)
        else:
            entries[key] = parsed
    for product, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"GPU catalog entry {product!r}: expected a mapping, found {type(entry).__name__}"
            )
        norm = normalise_product(str(product))
        known = catalog.get(norm.key)
        memory_mib = entry.get("memoryMiB", known.memory_mib if known else None)
        cc_text = entry.get("computeCapability")
        if cc_text is None and known is None:
            raise ValueError(f"GPU catalog entry {product!r}: computeCapability is required (e.g. '9.0')")
        if memory_mib is None:
            raise ValueError(f"GPU catalog entry {product!r}: memoryMiB is required (nvidia.com/gpu.memory)")
        if cc_text is not None:
            major_text, _, minor_text = str(cc_text).partition(".")
            cc = (int(major_text), int(minor_text or 0))
        else:
            assert known is not None
            cc = known.compute_capability
        catalog[norm.key] = GpuSpec(
            product=norm.key,
            short_name=str(
                entry.get("shortName", known.short_name if known else _short_name_from_key(norm.key))
            ),
            memory_mib=int(memory_mib),
            memory_bandwidth_gb_per_s=int(
                entry.get("memoryBandwidthGBps", known.memory_bandwidth_gb_per_s if known else 0)
            ),
            compute_capability=cc,
            family=str(entry.get("family", known.family if known else "unknown")),
            nvlink=bool(entry.get("nvlink", known.nvlink if known else False)),
        )
    return catalog


def find_by_short_name_or_product(name: str, catalog: Mapping[str, GpuSpec]) -> str:
    """The normalised key a selector entry means: a short name (`h100`) or any product spelling."""
    lowered = name.strip().lower()
    for spec in catalog.values():
        if spec.short_name == lowered:
            return spec.product
    return normalise_product(name).key
