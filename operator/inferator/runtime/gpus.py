"""The GPUs this container can use, as NVML reports them: the only module that imports `pynvml`.

Visibility, as far as NVML allows:
- `NVIDIA_VISIBLE_DEVICES` is applied by the NVIDIA container runtime before this process
  starts: only the listed devices are mounted, so NVML enumerates only them. It is not
  re-applied here, because inside the container NVML renumbers the mounted devices from 0
  and the variable's indices are the host's. (`none`/`void` leave no device or no NVML.)
- `CUDA_VISIBLE_DEVICES` is ignored by NVML but obeyed by CUDA, so it is re-applied here:
  integers index NVML's order (PCI bus order; the runtime sets `CUDA_DEVICE_ORDER=PCI_BUS_ID`
  for the engine so CUDA numbers the same way), `GPU-…`/`MIG-…` tokens match a UUID or a
  unique UUID prefix, and like CUDA the list stops at the first token that names no device.
  An empty value hides every GPU.
- MIG: a GPU in MIG mode is replaced by the MIG devices NVML lets this process see, each
  with its own name (`NVIDIA A100-SXM4-80GB MIG 1g.10gb`) and memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here: no driver library, no device access, or nvidia-ml-py missing."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int  # position in NVML's enumeration (MIG devices numbered after flattening)
    uuid: str
    name: str  # NVML's product name, e.g. "NVIDIA H100 80GB HBM3"
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mig_handles(nvml: Any, handle: Any) -> list[Any] | None:
    """The MIG devices of a GPU in MIG mode that NVML shows us, or None when MIG is off or unsupported."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # NotSupported on GPUs without MIG
        return None
    if current != nvml.NVML_DEVICE_MIG_ENABLE:
        return None
    handles = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            handles.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
        except nvml.NVMLError:  # empty slot, or a slice that belongs to another container
            continue
    return handles


def _enumerate(nvml: Any) -> list[GpuInfo]:
    gpus: list[GpuInfo] = []
    for position in range(nvml.nvmlDeviceGetCount()):
        parent = nvml.nvmlDeviceGetHandleByIndex(position)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(parent)
        mig = _mig_handles(nvml, parent)
        for handle in [parent] if mig is None else mig:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=len(gpus),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(memory.total),
                    free_bytes=int(memory.free),
                    compute_capability=(int(major), int(minor)),
                )
            )
    return gpus


def apply_cuda_visible_devices(gpus: Sequence[GpuInfo], value: str | None) -> list[GpuInfo]:
    """The GPUs CUDA will show the engine under `CUDA_VISIBLE_DEVICES=value`, in CUDA's order."""
    if value is None:
        return list(gpus)
    visible: list[GpuInfo] = []
    for token in (t.strip() for t in value.split(",")):
        if token.lstrip("-").isdigit():
            found = [gpus[int(token)]] if 0 <= int(token) < len(gpus) else []
        elif token:
            found = [g for g in gpus if g.uuid.startswith(token)]
        else:
            found = []
        if len(found) != 1 or found[0] in visible:
            break  # CUDA ignores the list from the first invalid entry on; a repeat is no second GPU
        visible.append(found[0])
    return visible


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[GpuInfo]:
    """The GPUs the engine will see. Raises NvmlUnavailable with a reason a user can act on."""
    environ = os.environ if environ is None else environ
    try:
        import pynvml as nvml
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed in this image ({exc})") from exc
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(
            f"no NVIDIA driver/NVML on this node (NVML: {exc}); is the pod on a GPU node, "
            "with the NVIDIA container runtime?"
        ) from exc
    try:
        gpus = _enumerate(nvml)
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML could not describe the GPUs: {exc}") from exc
    finally:
        nvml.nvmlShutdown()
    return apply_cuda_visible_devices(gpus, environ.get("CUDA_VISIBLE_DEVICES"))
