"""The operator's selection settings and GPU catalog, as the chart's ConfigMap mounts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferator.controllers.settings import load_selection_config
from inferator.profiles.catalog import BUILTIN_CATALOG, normalise_product


def test_missing_files_mean_the_defaults(tmp_path: Path) -> None:
    config = load_selection_config(tmp_path)
    assert config.settings.engine_order[0] == "trtllm"
    assert config.catalog == dict(BUILTIN_CATALOG)


def test_chart_files_extend_the_catalog_and_set_the_order(tmp_path: Path) -> None:
    (tmp_path / "selection.yaml").write_text("engines: [vllm, sglang]\nengineOrder: [sglang, vllm]\n")
    (tmp_path / "catalog.yaml").write_text(
        "NVIDIA-RTX-PRO-6000:\n  memoryMiB: 97887\n  computeCapability: '12.0'\n"
    )
    config = load_selection_config(tmp_path)
    assert config.settings.engines == ["vllm", "sglang"]
    assert config.settings.engine_order == ["sglang", "vllm"]
    assert config.catalog[normalise_product("NVIDIA-RTX-PRO-6000").key].memory_mib == 97887


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("selection.yaml", "engineOrdr: [vllm]\n", "engineOrdr"),
        ("selection.yaml", "- vllm\n", "expected a mapping"),
        ("catalog.yaml", "NVIDIA-X1:\n  memoryMiB: 1000\n", "computeCapability is required"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_selection_config(tmp_path)
    assert str(tmp_path / name) in str(err.value)
