"""`inferator runtime`: refusals with their messages, the termination log, and the exec of the engine.

NVML is faked only at its seam: a fake `pynvml` module object (`FakeNvml`, the dozen calls
`inferator.runtime.gpus` makes) is put in `sys.modules`, so `detect_gpus` itself runs. The
checks, the cache reading and the exec are real; the exec tests run `inferator runtime` as a
subprocess whose "engine" is a Python one-liner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inferator.api.cache_manifest import MANIFEST_PATH, CachedFile, CacheManifest
from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.api.profile import ServingProfile
from inferator.profiles.model_facts import facts_from_config
from inferator.profiles.plan import short_form_node
from inferator.profiles.select import select_profile
from inferator.runtime import entrypoint
from inferator.runtime.checks import check_gpus, claimed_memory_fraction, engine_environment
from inferator.runtime.gpus import GpuInfo, NvmlUnavailable, apply_cuda_visible_devices, detect_gpus

GIB = 2**30
MIB = 2**20
H100_TOTAL = 81559 * MIB  # what NVML reports on an H100 SXM (and GFD's nvidia.com/gpu.memory)


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = H100_TOTAL
    free: int = H100_TOTAL - 512 * MIB  # the driver keeps a little on an idle GPU
    cc: tuple[int, int] = (9, 0)
    uuid: str = "GPU-00000000"
    mig: list[FakeDevice] | None = None  # slices, when the GPU is in MIG mode


@dataclass
class FakeNvml:
    """The pynvml calls `detect_gpus` makes, over a list of fake devices."""

    devices: list[FakeDevice] = field(default_factory=list)
    init_error: str | None = None
    NVMLError = FakeNvmlError
    NVML_DEVICE_MIG_ENABLE = 1

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNvmlError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetName(self, h: FakeDevice) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeDevice) -> str:
        return h.uuid

    def nvmlDeviceGetMemoryInfo(self, h: FakeDevice) -> SimpleNamespace:
        return SimpleNamespace(total=h.total, free=h.free, used=h.total - h.free)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeDevice) -> tuple[int, int]:
        return h.cc

    def nvmlDeviceGetMigMode(self, h: FakeDevice) -> tuple[int, int]:
        if h.mig is None:
            raise FakeNvmlError("Not Supported")
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeDevice) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeDevice, slot: int) -> FakeDevice:
        if h.mig is None or slot >= len(h.mig):
            raise FakeNvmlError("Not Found")
        return h.mig[slot]


def h100s(count: int, **overrides: Any) -> list[FakeDevice]:
    return [FakeDevice(uuid=f"GPU-{i:08x}", **overrides) for i in range(count)]


def gpu_profile(**overrides: Any) -> ServingProfile:
    values: dict[str, Any] = {
        "name": "vllm-h100-bf16-tp2-latency",
        "engine": "vllm",
        "precision": "bf16",
        "tensor_parallel_size": 2,
        "target": "latency",
        "gpu_product": "H100-80GB-HBM3",
        "gpu_short_name": "h100",
        "gpu_count": 2,
        "required_gpu_memory_bytes": 60 * GIB,
        "command": [
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--gpu-memory-utilization",
            "0.90",
        ],
        "served_model_name": "tiny",
    }
    return ServingProfile(**(values | overrides))


def cpu_profile(command: list[str]) -> ServingProfile:
    return ServingProfile(
        name="vllm-cpu-cpu-fp32-tp1-latency",
        engine="vllm-cpu",
        precision="fp32",
        tensor_parallel_size=1,
        target="latency",
        command=command,
        served_model_name="tiny",
    )


def write_cache(root: Path, files: dict[str, bytes]) -> CacheManifest:
    """A complete cache as the prefetch Job leaves it: the files, then the manifest."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    manifest = CacheManifest(
        source="hf://example/tiny",
        files=[CachedFile(path=name, size=len(data)) for name, data in files.items()],
        total_bytes=sum(len(d) for d in files.values()),
        completed_at="2026-11-01T00:00:00Z",
    )
    (root / MANIFEST_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_PATH).write_text(manifest.model_dump_json(by_alias=True, exclude_none=True))
    return manifest


@dataclass
class Runtime:
    """`inferator runtime` run in-process (it never gets to exec: refusals, --check-only, a recorded exec)."""

    model_dir: Path
    termination_log: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    execs: list[tuple[str, list[str], dict[str, str]]] = field(default_factory=list)

    def run(
        self, profile: ServingProfile | str | None, nvml: FakeNvml | None, *args: str
    ) -> tuple[int, str, str]:
        if profile is None:
            self.monkeypatch.delenv("INFERATOR_PROFILE", raising=False)
        else:
            text = profile if isinstance(profile, str) else profile.model_dump_json(by_alias=True)
            self.monkeypatch.setenv("INFERATOR_PROFILE", text)
        if nvml is not None:
            self.monkeypatch.setitem(sys.modules, "pynvml", nvml)
        code = entrypoint.main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    @property
    def reason(self) -> str:
        return self.termination_log.read_text().strip() if self.termination_log.exists() else ""


@pytest.fixture
def runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Runtime]:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    write_cache(model_dir, {"config.json": b"{}", "model.safetensors": b"x" * 1000})
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("INFERATOR_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("INFERATOR_TERMINATION_LOG", str(termination_log))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    rt = Runtime(model_dir, termination_log, monkeypatch, capsys)

    def fake_exec(file: str, args: list[str], env: dict[str, str]) -> None:
        rt.execs.append((file, list(args), dict(env)))

    monkeypatch.setattr(os, "execvpe", fake_exec)
    yield rt


# --- refusals: GPUs -------------------------------------------------------------------------------


def test_wrong_gpu_product_is_refused_naming_both(runtime: Runtime) -> None:
    a10g = [FakeDevice(name="NVIDIA A10G", total=23028 * MIB, free=22000 * MIB, cc=(8, 6))] * 2
    code, _, err = runtime.run(gpu_profile(), FakeNvml(a10g))
    assert code == entrypoint.EXIT_GPU_MISMATCH
    assert runtime.reason.startswith(
        "GPU 0 is NVIDIA A10G (A10G), profile vllm-h100-bf16-tp2-latency was selected for H100-80GB-HBM3"
    )
    assert "(and 1 more GPUs with problems)" in runtime.reason
    assert runtime.reason in err
    assert runtime.execs == []


def test_too_few_gpus_is_refused_with_what_was_seen(runtime: Runtime) -> None:
    code, _, _ = runtime.run(gpu_profile(), FakeNvml(h100s(1)))
    assert code == entrypoint.EXIT_GPU_MISMATCH
    assert runtime.reason.startswith(
        "profile vllm-h100-bf16-tp2-latency needs 2 x H100-80GB-HBM3, this container sees 1 "
        "(0: NVIDIA H100 80GB HBM3, 79.6 GiB (79.1 GiB free), compute 9.0)"
    )
    assert "nvidia.com/gpu limit" in runtime.reason


def test_too_little_total_memory_is_refused(runtime: Runtime) -> None:
    code, _, _ = runtime.run(gpu_profile(required_gpu_memory_bytes=90 * GIB), FakeNvml(h100s(2)))
    assert code == entrypoint.EXIT_GPU_MISMATCH
    assert runtime.reason.startswith(
        "GPU 0 (NVIDIA H100 80GB HBM3) has 79.6 GiB, profile vllm-h100-bf16-tp2-latency needs 90.0 GiB per GPU"
    )


def test_memory_held_by_another_process_is_refused(runtime: Runtime) -> None:
    devices = h100s(2)
    devices[1].free = 20 * GIB
    code, _, _ = runtime.run(gpu_profile(), FakeNvml(devices))
    assert code == entrypoint.EXIT_GPU_MISMATCH
    assert runtime.reason == (
        "GPU 1 (NVIDIA H100 80GB HBM3) has 20.0 GiB free of 79.6 GiB, the engine claims 0.90 of it: "
        "71.7 GiB; another process holds memory on this GPU"
    )


def test_gpu_profile_on_a_node_without_nvml_is_refused(runtime: Runtime) -> None:
    nvml = FakeNvml(init_error="NVML Shared Library Not Found")
    code, _, _ = runtime.run(gpu_profile(), nvml)
    assert code == entrypoint.EXIT_NO_NVML
    assert runtime.reason.startswith(
        "profile vllm-h100-bf16-tp2-latency needs 2 GPU(s): no NVIDIA driver/NVML on this node "
        "(NVML: NVML Shared Library Not Found)"
    )


def _nvml_loads() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_nvml_loads(), reason="this machine has an NVIDIA driver")
def test_real_nvml_without_a_driver_fails_cleanly(runtime: Runtime) -> None:
    with pytest.raises(NvmlUnavailable, match=r"^no NVIDIA driver/NVML on this node \(NVML: "):
        detect_gpus({})
    code, _, err = runtime.run(gpu_profile(), None)
    assert code == entrypoint.EXIT_NO_NVML
    assert "no NVIDIA driver/NVML on this node" in runtime.reason
    assert "Traceback" not in err


# --- refusals: cache ------------------------------------------------------------------------------


def test_missing_manifest_is_refused(runtime: Runtime) -> None:
    (runtime.model_dir / MANIFEST_PATH).unlink()
    code, _, _ = runtime.run(gpu_profile(), FakeNvml(h100s(2)))
    assert code == entrypoint.EXIT_CACHE_INCOMPLETE
    assert runtime.reason == (
        f"cache incomplete: {runtime.model_dir}/.inferator/manifest.json missing "
        "— the ModelCache's prefetch has not finished"
    )


def test_listed_file_missing_is_named(runtime: Runtime) -> None:
    (runtime.model_dir / "model.safetensors").unlink()
    code, _, _ = runtime.run(gpu_profile(), FakeNvml(h100s(2)))
    assert code == entrypoint.EXIT_CACHE_INCOMPLETE
    assert runtime.reason == (
        f"cache incomplete: {runtime.model_dir}/model.safetensors is missing (the manifest lists 1000 bytes)"
    )


def test_short_file_is_named_with_both_sizes(runtime: Runtime) -> None:
    (runtime.model_dir / "model.safetensors").write_bytes(b"x" * 10)
    (runtime.model_dir / "config.json").unlink()
    code, _, _ = runtime.run(cpu_profile(["true"]), None)
    assert code == entrypoint.EXIT_CACHE_INCOMPLETE
    assert runtime.reason == (
        f"cache incomplete: {runtime.model_dir}/config.json is missing (the manifest lists 2 bytes) "
        "(and 1 more files missing or wrong)"
    )
    write_cache(runtime.model_dir, {"config.json": b"{}"})
    (runtime.model_dir / "config.json").write_bytes(b"{ }")
    runtime.run(cpu_profile(["true"]), None)
    assert (
        runtime.reason
        == f"cache incomplete: {runtime.model_dir}/config.json has 3 bytes, the manifest says 2"
    )


def test_corrupt_manifest_is_refused(runtime: Runtime) -> None:
    (runtime.model_dir / MANIFEST_PATH).write_text("{not json")
    code, _, _ = runtime.run(cpu_profile(["true"]), None)
    assert code == entrypoint.EXIT_CACHE_INCOMPLETE
    assert "is unreadable" in runtime.reason and "re-run the ModelCache's prefetch" in runtime.reason


# --- refusals: profile ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (None, "INFERATOR_PROFILE is not set: the operator sets it on the serving Deployment"),
        ("{not json", "INFERATOR_PROFILE is not a valid ServingProfile: profile: Invalid JSON"),
        ('{"name": "x"}', "INFERATOR_PROFILE is not a valid ServingProfile: engine: Field required"),
    ],
)
def test_missing_or_invalid_profile_is_refused(runtime: Runtime, profile: str | None, expected: str) -> None:
    code, _, _ = runtime.run(profile, None)
    assert code == entrypoint.EXIT_PROFILE_INVALID
    assert runtime.reason.startswith(expected)
    assert "\n" not in runtime.reason


def test_termination_message_is_one_line_under_4_kib(runtime: Runtime) -> None:
    entrypoint.write_termination_log(
        "word\n" * 2000, {"INFERATOR_TERMINATION_LOG": str(runtime.termination_log)}
    )
    text = runtime.termination_log.read_text()
    assert len(text.encode()) < 4096
    assert text.count("\n") == 1 and text.startswith("word word")


def test_default_termination_log_is_left_alone_outside_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(entrypoint, "DEFAULT_TERMINATION_LOG", str(tmp_path / "absent"))
    entrypoint.write_termination_log("reason", {})
    assert not (tmp_path / "absent").exists()


# --- the good cases -------------------------------------------------------------------------------


def test_matching_gpus_exec_the_profile_command_unchanged_offline(runtime: Runtime) -> None:
    profile = gpu_profile()
    runtime.monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    runtime.monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    code, out, _ = runtime.run(profile, FakeNvml(h100s(4)))
    assert code == 0
    assert runtime.reason == ""
    [(file, argv, env)] = runtime.execs
    assert (file, argv) == (profile.command[0], profile.command)
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # the container's own environment is kept
    [line] = out.splitlines()
    assert line.startswith(
        "inferator runtime: profile vllm-h100-bf16-tp2-latency (vllm, tp2) checked: GPUs seen: [0: "
    )
    assert "using 0,1, 2 more visible and unused" in line
    assert "2 files" in line and "exec python3 -m vllm.entrypoints.openai.api_server" in line


def test_check_only_prints_the_verdict_and_does_not_exec(runtime: Runtime) -> None:
    code, out, _ = runtime.run(gpu_profile(), FakeNvml(h100s(2)), "--check-only")
    assert code == 0
    assert "check only, not starting the engine" in out
    assert runtime.execs == []
    (runtime.model_dir / MANIFEST_PATH).unlink()
    code, _, err = runtime.run(gpu_profile(), FakeNvml(h100s(2)), "--check-only")
    assert code == entrypoint.EXIT_CACHE_INCOMPLETE
    assert "manifest.json missing" in err
    assert runtime.reason == ""  # a debugging run leaves the live container's termination log alone


def test_cpu_profile_never_touches_nvml(runtime: Runtime) -> None:
    exploding = FakeNvml()
    exploding.nvmlInit = lambda: pytest.fail("NVML consulted for a CPU profile")  # type: ignore[method-assign]
    code, out, _ = runtime.run(
        cpu_profile(["python3", "-m", "vllm.entrypoints.openai.api_server"]), exploding
    )
    assert code == 0
    assert "GPUs: none needed (vllm-cpu), NVML not consulted" in out
    [(_, _, env)] = runtime.execs
    assert env["VLLM_TARGET_DEVICE"] == "cpu"


def test_profile_selected_for_an_h100_passes_on_an_h100_as_nvml_reports_it(runtime: Runtime) -> None:
    """The operator's own selection (labels from GFD) and the runtime's check (NVML) agree on a real H100."""
    llama_8b = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
    }
    nodes = short_form_node(
        {"name": "gpu", "gpus": 1, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559, "compute": "9.0"}
    )
    spec = InferenceServiceSpec.model_validate(
        {"modelCacheRef": {"name": "llama"}, "serving": {"maxModelLen": 32768}}
    )
    selection = select_profile(facts_from_config(llama_8b), nodes, spec)
    assert selection.profile is not None and selection.profile.gpu_count == 1
    assert check_gpus(selection.profile, detect_with(runtime, FakeNvml(h100s(1)))).problems == ()


def detect_with(runtime: Runtime, nvml: FakeNvml) -> list[GpuInfo]:
    runtime.monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return detect_gpus({})


# --- the pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nvml_name", "profile_product"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-80GB-HBM3"),
        ("NVIDIA H100 PCIe", "H100-PCIE"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("A100-SXM4-40GB", "A100-SXM4-40GB"),  # older drivers: no NVIDIA prefix
        ("Tesla T4", "TESLA-T4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "A100-SXM4-80GB"),
    ],
)
def test_nvml_names_match_gfd_products(nvml_name: str, profile_product: str) -> None:
    gpu = GpuInfo(0, "GPU-0", nvml_name, 80 * GIB, 80 * GIB, (9, 0))
    profile = gpu_profile(gpu_product=profile_product, gpu_count=1, required_gpu_memory_bytes=GIB)
    assert check_gpus(profile, [gpu]).problems == ()


def test_mig_slices_are_detected_as_their_own_devices(runtime: Runtime) -> None:
    slices = [
        FakeDevice(
            name="NVIDIA A100-SXM4-80GB MIG 1g.10gb", total=9728 * MIB, free=9700 * MIB, uuid=f"MIG-{i}"
        )
        for i in range(2)
    ]
    parent = FakeDevice(name="NVIDIA A100-SXM4-80GB", total=81920 * MIB, cc=(8, 0), mig=slices)
    gpus = detect_with(runtime, FakeNvml([parent]))
    assert [(g.index, g.uuid, g.total_bytes, g.compute_capability) for g in gpus] == [
        (0, "MIG-0", 9728 * MIB, (8, 0)),
        (1, "MIG-1", 9728 * MIB, (8, 0)),
    ]


GPUS = [GpuInfo(i, f"GPU-{c * 8}", "NVIDIA H100 80GB HBM3", GIB, GIB, (9, 0)) for i, c in enumerate("abcd")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("2,0", [2, 0]),
        ("GPU-bbbb", [1]),  # a unique UUID prefix, as CUDA accepts
        ("1, GPU-dddddddd", [1, 3]),
        ("0,7,1", [0]),  # CUDA stops at the first invalid entry
        ("-1", []),
        ("", []),
        ("GPU-", []),  # ambiguous prefix
    ],
)
def test_cuda_visible_devices_is_reapplied_over_nvml(value: str | None, expected: list[int]) -> None:
    assert [g.index for g in apply_cuda_visible_devices(GPUS, value)] == expected


def test_detect_gpus_reads_cuda_visible_devices(runtime: Runtime) -> None:
    runtime.monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(h100s(4)))
    assert [g.uuid for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "3,1"})] == ["GPU-00000003", "GPU-00000001"]


@pytest.mark.parametrize(
    ("command", "fraction"),
    [
        (["vllm", "--gpu-memory-utilization", "0.90"], 0.9),
        (["vllm", "--gpu-memory-utilization=0.8"], 0.8),
        (
            ["vllm", "--gpu-memory-utilization", "0.90", "--gpu-memory-utilization", "0.5"],
            0.5,
        ),  # extra_args win
        (["sglang", "--mem-fraction-static", "0.85"], 0.85),
        (["trtllm-serve", "--kv_cache_free_gpu_memory_fraction", "0.9"], None),
        (["vllm", "--gpu-memory-utilization"], None),
    ],
)
def test_claimed_memory_fraction_reads_the_engine_flag(command: list[str], fraction: float | None) -> None:
    assert claimed_memory_fraction(command) == fraction


def test_trtllm_free_memory_is_checked_against_the_profile_need() -> None:
    profile = gpu_profile(
        engine="trtllm", command=["trtllm-serve"], gpu_count=1, required_gpu_memory_bytes=50 * GIB
    )
    idle = GpuInfo(0, "GPU-0", "NVIDIA H100 80GB HBM3", H100_TOTAL, 46 * GIB, (9, 0))
    assert check_gpus(profile, [idle]).problems == ()
    busy = GpuInfo(0, "GPU-0", "NVIDIA H100 80GB HBM3", H100_TOTAL, 44 * GIB, (9, 0))
    [problem] = check_gpus(profile, [busy]).problems
    assert "the profile needs: 45.0 GiB" in problem


def test_engine_environment_forces_offline_and_keeps_the_rest() -> None:
    env = engine_environment(
        cpu_profile(["x"]), {"HF_HUB_OFFLINE": "0", "PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "2"}
    )
    assert env == {
        "PATH": "/bin",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_TARGET_DEVICE": "cpu",
    }


# --- the real exec, in a subprocess ---------------------------------------------------------------


def run_runtime(tmp_path: Path, command: list[str], **popen: Any) -> tuple[subprocess.Popen[str], Path]:
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    write_cache(model_dir, {"config.json": b"{}"})
    env = {
        **os.environ,
        "INFERATOR_PROFILE": cpu_profile(command).model_dump_json(by_alias=True),
        "INFERATOR_MODEL_DIR": str(model_dir),
        "INFERATOR_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferator.cli", "runtime"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    return proc, tmp_path / "termination-log"


def test_engine_exit_code_is_the_containers(tmp_path: Path) -> None:
    proc, log = run_runtime(tmp_path, [sys.executable, "-c", "import sys; sys.exit(7)"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert "exec " in out
    assert not log.exists()


def test_sigterm_reaches_the_engine_because_it_is_the_same_process(tmp_path: Path) -> None:
    engine = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
        "print('engine pid', os.getpid(), os.environ['HF_HUB_OFFLINE'], flush=True)\n"
        "time.sleep(60)\n"
    )
    proc, _ = run_runtime(tmp_path, [sys.executable, "-c", engine])
    assert proc.stdout is not None
    proc.stdout.readline()  # the runtime's own line
    assert proc.stdout.readline().split() == ["engine", "pid", str(proc.pid), "1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42


def test_engine_not_found_is_refused_with_127(tmp_path: Path) -> None:
    proc, log = run_runtime(tmp_path, ["no-such-engine-binary", "--port", "8000"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == entrypoint.EXIT_NOT_FOUND
    assert log.read_text().startswith(
        "profile vllm-cpu-cpu-fp32-tp1-latency: cannot start the engine 'no-such-engine-binary'"
    )
    assert "Traceback" not in err


def test_a_pvc_cache_is_checked_in_place_without_a_manifest(runtime: Runtime, tmp_path: Path) -> None:
    """pvc:// claims are never written: no manifest; config.json and safetensors headers decide."""
    from tests.prefetch_servers import make_model

    model = make_model(tmp_path / "claim" / "llama")
    runtime.monkeypatch.setenv("INFERATOR_MODEL_DIR", str(model.root))
    runtime.monkeypatch.setenv("INFERATOR_CACHE_CHECK", "in-place")
    code, out, err = runtime.run(gpu_profile(), FakeNvml(h100s(2)), "--check-only")
    assert code == 0, (runtime.reason, err)
    assert "checked in place" in out + err

    shard = model.weight_files[0].path
    with open(model.root / shard, "r+b") as handle:
        handle.truncate(100_000)
    code, out, err = runtime.run(gpu_profile(), FakeNvml(h100s(2)), "--check-only")
    assert code == entrypoint.EXIT_CACHE_INCOMPLETE
    said = runtime.reason or out + err
    assert shard in said and "safetensors" in said, said


def test_sglang_gets_its_api_key_at_exec_and_never_in_the_log(runtime: Runtime) -> None:
    profile = gpu_profile().model_copy(
        update={"engine": "sglang", "command": ["python3", "-m", "sglang.launch_server"]}
    )
    runtime.monkeypatch.setenv("INFERATOR_API_KEY", "sk-test-key-0123456789")
    code, out, err = runtime.run(profile, FakeNvml(h100s(2)))
    assert code == 0
    _file, argv, _env = runtime.execs[-1]
    assert argv[-2:] == ["--api-key", "sk-test-key-0123456789"]
    assert "sk-test-key-0123456789" not in out + err
