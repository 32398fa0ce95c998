"""Which engine runs which precision on which GPU generation: natively, weight-only, or not at all.

One row per (engine, precision). `native_from` is the first compute capability with tensor-core
support for the format (the kernels the engine picks by default); `weight_only_from` the first
where the engine still loads the checkpoint through weight-only kernels that dequantise on the
fly (Marlin and friends: correct, slower than native, ranked after every native candidate);
None where the engine has no path at all, with the reason in `note`.

Sources (late 2026): vLLM docs "Quantization > Supported Hardware" table and its gpt-oss recipe
(MXFP4 on Hopper via Triton/Marlin kernels, native on Blackwell; Ampere through Marlin), vLLM's
NVFP4 Marlin fallback for SM80+; TensorRT-LLM docs "Numerical Precision" and its support matrix
(FP8 on SM89+, NVFP4 on SM100+, W4A8-MXFP4 for gpt-oss on Hopper/Blackwell; the PyTorch
backend loads ModelOpt and DeepSeek-style FP8 checkpoints, not AutoAWQ/AutoGPTQ/bitsandbytes
or llm-compressor integer formats); SGLang docs "Quantization" (FP8 from SM89, AWQ/GPTQ through
Marlin from SM80, MXFP4 for gpt-oss from SM90, NVFP4 on SM100).
"""

from __future__ import annotations

from dataclasses import dataclass

CC = tuple[int, int]


@dataclass(frozen=True, slots=True)
class PrecisionSupport:
    native_from: CC | None
    weight_only_from: CC | None = None
    note: str = ""


_ANY: CC = (7, 0)
_AMPERE: CC = (8, 0)
_ADA: CC = (8, 9)
_HOPPER: CC = (9, 0)
_BLACKWELL: CC = (10, 0)
_TURING: CC = (7, 5)

_DENSE = {
    "fp32": PrecisionSupport(_ANY),
    "fp16": PrecisionSupport(_ANY),
    "bf16": PrecisionSupport(_AMPERE, note="bf16 needs compute capability 8.0+ (fp16 would change numerics)"),
}

COMPATIBILITY: dict[str, dict[str, PrecisionSupport]] = {
    "vllm": {
        **_DENSE,
        "fp8": PrecisionSupport(
            _ADA, _AMPERE, "fp8 needs compute capability 8.9+ (8.0+ weight-only via Marlin)"
        ),
        "mxfp4": PrecisionSupport(
            _BLACKWELL, _AMPERE, "mxfp4 needs compute capability 8.0+ (native on 10.0+)"
        ),
        "nvfp4": PrecisionSupport(
            _BLACKWELL, _AMPERE, "nvfp4 needs compute capability 8.0+ (native on 10.0+)"
        ),
        "awq": PrecisionSupport(_TURING, note="AWQ kernels need compute capability 7.5+"),
        "gptq": PrecisionSupport(_TURING, note="GPTQ kernels need compute capability 7.5+"),
        "int4": PrecisionSupport(_TURING, note="int4 weight-only kernels need compute capability 7.5+"),
        "int8": PrecisionSupport(_TURING, note="int8 kernels need compute capability 7.5+"),
    },
    "sglang": {
        **_DENSE,
        "fp8": PrecisionSupport(_ADA, note="SGLang's fp8 kernels need compute capability 8.9+"),
        "mxfp4": PrecisionSupport(_BLACKWELL, _HOPPER, "SGLang serves mxfp4 from compute capability 9.0"),
        "nvfp4": PrecisionSupport(_BLACKWELL, note="SGLang's nvfp4 kernels need compute capability 10.0+"),
        "awq": PrecisionSupport(_AMPERE, note="SGLang's AWQ (Marlin) kernels need compute capability 8.0+"),
        "gptq": PrecisionSupport(_AMPERE, note="SGLang's GPTQ (Marlin) kernels need compute capability 8.0+"),
        "int4": PrecisionSupport(_AMPERE, note="SGLang's int4 kernels need compute capability 8.0+"),
        "int8": PrecisionSupport(_AMPERE, note="SGLang's int8 kernels need compute capability 8.0+"),
    },
    "trtllm": {
        **_DENSE,
        "fp8": PrecisionSupport(_ADA, note="TensorRT-LLM's fp8 needs compute capability 8.9+"),
        "mxfp4": PrecisionSupport(
            _BLACKWELL, _HOPPER, "TensorRT-LLM serves mxfp4 (gpt-oss) from compute capability 9.0"
        ),
        "nvfp4": PrecisionSupport(
            _BLACKWELL, note="TensorRT-LLM's nvfp4 needs compute capability 10.0+ (Blackwell)"
        ),
        "awq": PrecisionSupport(
            None, note="trtllm-serve cannot load AutoAWQ checkpoints (it takes ModelOpt W4A16)"
        ),
        "gptq": PrecisionSupport(None, note="trtllm-serve cannot load AutoGPTQ checkpoints"),
        "int4": PrecisionSupport(
            None, note="trtllm-serve cannot load bitsandbytes / llm-compressor int4 checkpoints"
        ),
        "int8": PrecisionSupport(
            None, note="trtllm-serve cannot load bitsandbytes / llm-compressor int8 checkpoints"
        ),
    },
    "vllm-cpu": {
        "fp32": PrecisionSupport(_ANY),
        "bf16": PrecisionSupport(_ANY),
    },
}


def support(engine: str, precision: str, compute_capability: CC) -> tuple[bool, bool, str]:
    """(runs at all, runs natively, reason when it does not run) for one engine, precision and GPU."""
    row = COMPATIBILITY.get(engine, {}).get(precision)
    if row is None:
        return False, False, f"{engine} has no {precision} profiles"
    cc = f"{compute_capability[0]}.{compute_capability[1]}"
    if row.native_from is not None and compute_capability >= row.native_from:
        return True, True, ""
    if row.weight_only_from is not None and compute_capability >= row.weight_only_from:
        return True, False, ""
    return False, False, f"{row.note or precision + ' is not supported'}; this GPU has {cc}"
