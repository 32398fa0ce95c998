"""What the serving container asserts before it starts the engine: the GPUs it landed on and the cache.

`check_gpus` is pure (hardware in, problems out); `check_cache` only stats the files the
manifest lists. Neither re-selects anything: a mismatch is a refusal, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from inferator.api.cache_manifest import MANIFEST_PATH, CacheManifest
from inferator.api.inferenceservice import Serving
from inferator.api.profile import ServingProfile
from inferator.profiles.catalog import normalise_product
from inferator.profiles.engines import ENGINES
from inferator.runtime.gpus import GpuInfo

GIB = 2**30

# Flags by which an engine claims a share of each GPU's *total* memory when it starts (vLLM
# --gpu-memory-utilization; SGLang --mem-fraction-static). vLLM itself refuses to start when
# less than that share is free. trtllm-serve sizes its KV cache from what is free after the
# weights load, so it names no such share.
_MEMORY_FRACTION_FLAGS = ("--gpu-memory-utilization", "--mem-fraction-static")
# The profile does not carry the utilization it was sized with; the spec's default stands in.
_DEFAULT_UTILIZATION: float = Serving.model_fields["gpu_memory_utilization"].default


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def describe_gpu(gpu: GpuInfo) -> str:
    major, minor = gpu.compute_capability
    return (
        f"{gpu.index}: {gpu.name}, {gib(gpu.total_bytes)} ({gib(gpu.free_bytes)} free), "
        f"compute {major}.{minor}"
    )


@dataclass(frozen=True, slots=True)
class GpuVerdict:
    used: tuple[GpuInfo, ...]  # the first `gpu_count` visible GPUs: the ones the engine takes
    unused: tuple[GpuInfo, ...]
    problems: tuple[str, ...]


def claimed_memory_fraction(command: Sequence[str]) -> float | None:
    """The share of each GPU's total memory the engine claims at start, from its argv (the last flag wins)."""
    fraction = None
    for position, arg in enumerate(command):
        name, has_value, inline = arg.partition("=")
        if name not in _MEMORY_FRACTION_FLAGS:
            continue
        text = inline if has_value else (command[position + 1] if position + 1 < len(command) else "")
        try:
            fraction = float(text)
        except ValueError:
            continue
    return fraction


def check_gpus(profile: ServingProfile, gpus: Sequence[GpuInfo]) -> GpuVerdict:
    """Compare the visible GPUs with what the profile was selected for; each problem is one sentence.

    The engine uses the first `gpu_count` visible GPUs; more visible than needed is fine. Each
    used GPU must be the profile's product (matched by normalised name: NVML's spaces are
    GFD's dashes), offer at least `required_gpu_memory_bytes` in total, and have free what the
    engine will claim. Several problems are folded into one line, the first named.
    """
    need = profile.gpu_count
    wanted = normalise_product(profile.gpu_product).key if profile.gpu_product else None
    what = f"{need} x {wanted}" if wanted else f"{need} GPU(s)"
    if len(gpus) < need:
        seen = "; ".join(describe_gpu(g) for g in gpus) or "none"
        return GpuVerdict(
            (),
            tuple(gpus),
            (
                f"profile {profile.name} needs {what}, this container sees {len(gpus)} ({seen}): "
                "check the pod's nvidia.com/gpu limit and CUDA_VISIBLE_DEVICES",
            ),
        )
    used, unused = tuple(gpus[:need]), tuple(gpus[need:])
    fraction = claimed_memory_fraction(profile.command)
    problems: list[str] = []
    for gpu in used:
        found = normalise_product(gpu.name).key
        if wanted and found != wanted:
            problems.append(
                f"GPU {gpu.index} is {gpu.name} ({found}), profile {profile.name} was selected for {wanted}: "
                "the node's nvidia.com/gpu.product label does not match its GPUs, or the pod was "
                "scheduled outside the profile's pool"
            )
            continue
        if gpu.total_bytes < profile.required_gpu_memory_bytes:
            problems.append(
                f"GPU {gpu.index} ({gpu.name}) has {gib(gpu.total_bytes)}, profile {profile.name} needs "
                f"{gib(profile.required_gpu_memory_bytes)} per GPU: the node's nvidia.com/gpu.memory label "
                "overstates it, or this is a smaller MIG slice"
            )
            continue
        if fraction is not None:
            claim, how = fraction * gpu.total_bytes, f"the engine claims {fraction:.2f} of it"
        else:
            claim, how = _DEFAULT_UTILIZATION * profile.required_gpu_memory_bytes, "the profile needs"
        if gpu.free_bytes < claim:
            problems.append(
                f"GPU {gpu.index} ({gpu.name}) has {gib(gpu.free_bytes)} free of {gib(gpu.total_bytes)}, "
                f"{how}: {gib(claim)}; another process holds memory on this GPU"
            )
    if len(problems) > 1:  # one line for the termination log; the first says what to fix
        problems = [f"{problems[0]} (and {len(problems) - 1} more GPUs with problems)"]
    return GpuVerdict(used, unused, tuple(problems))


@dataclass(frozen=True, slots=True)
class CacheVerdict:
    manifest: CacheManifest | None
    problems: tuple[str, ...]


def check_cache(model_dir: Path) -> CacheVerdict:
    """Is the cache complete? The manifest (written last by the prefetch Job) and every file it lists, by size.

    Sizes only: checksums were verified when the files were downloaded, and hashing hundreds of
    gigabytes at every start would cost minutes. Only the first missing or short file is
    named, with a count of the others.
    """
    manifest_path = model_dir / MANIFEST_PATH
    try:
        manifest = CacheManifest.model_validate_json(manifest_path.read_bytes())
    except FileNotFoundError:
        return CacheVerdict(
            None,
            (f"cache incomplete: {manifest_path} missing — the ModelCache's prefetch has not finished",),
        )
    except (OSError, ValidationError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        return CacheVerdict(
            None,
            (f"cache manifest {manifest_path} is unreadable ({first}): re-run the ModelCache's prefetch",),
        )
    problems = []
    for entry in manifest.files:
        relative = PurePosixPath(entry.path)
        if relative.is_absolute() or ".." in relative.parts:
            problems.append(f"cache manifest lists {entry.path!r}, outside the cache")
            continue
        path = model_dir / relative
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"cache incomplete: {path} is missing (the manifest lists {entry.size} bytes)")
            continue
        if size != entry.size:
            problems.append(f"cache incomplete: {path} has {size} bytes, the manifest says {entry.size}")
    if len(problems) > 1:
        problems = [f"{problems[0]} (and {len(problems) - 1} more files missing or wrong)"]
    return CacheVerdict(manifest, tuple(problems))


def check_cache_in_place(model_dir: Path) -> tuple[int, int, tuple[str, ...]]:
    """pvc:// caches have no manifest: (files, bytes, problems) from the directory itself.

    config.json must be there and every safetensors file as long as its header says: the same
    structural check the prefetch Job ran, cheap enough for every start (headers only).
    """
    from inferator.prefetch.errors import VerificationError
    from inferator.prefetch.verify import check_safetensors

    if not (model_dir / "config.json").is_file():
        return 0, 0, (f"cache incomplete: {model_dir / 'config.json'} missing (pvc:// model directory)",)
    problems: list[str] = []
    files = total = 0
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        files += 1
        total += path.stat().st_size
        try:
            check_safetensors(relative.as_posix(), path)
        except VerificationError as exc:
            problems.append(f"cache incomplete: {exc}")
    if len(problems) > 1:
        problems = [f"{problems[0]} (and {len(problems) - 1} more files wrong)"]
    return files, total, tuple(problems)


def engine_environment(profile: ServingProfile, environ: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: the container's, with offline mode and telemetry off forced on.

    Forced, not defaulted: the cache is read-only and the pod has no egress, so a hub lookup
    or a usage report could only hang or fail. GPU profiles also get CUDA_DEVICE_ORDER=PCI_BUS_ID
    (unless set) so CUDA numbers the GPUs as NVML does and "using GPUs 0,1" is true.
    """
    env = dict(environ)
    env.update(ENGINES[profile.engine].env)
    if profile.gpu_count:
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env
