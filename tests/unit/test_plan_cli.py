"""`inferator plan`: JSON output, exit codes, the table a newcomer reads, input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inferator.profiles.plan import main, nodes_from_documents

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "plan" / "llama-3.1-8b-config.json"
EXAMPLE_NODES = ROOT / "examples" / "plan" / "nodes.yaml"

LLAMA_70B = json.loads(EXAMPLE_CONFIG.read_text()) | {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}


def test_example_plan_selects_fp8_on_the_h100_pool(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(EXAMPLE_CONFIG), "--nodes", str(EXAMPLE_NODES), "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["selected"] is True
    # 8B fits one H100 (weights and the full 131072-token context): latency takes two, not eight.
    assert out["profile"]["name"] == "vllm-h100-fp8-tp2-latency"
    assert out["pool"]["key"] == "h100-x8"
    assert out["pool"]["nodes"] == ["gpu-h100-0", "gpu-h100-1"]
    assert out["deployment"]["gpuRequest"] == 2
    assert out["deployment"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert out["estimates"]["requiredBytesPerGpu"] <= out["estimates"]["availableBytesPerGpu"]
    assert out["failure"] is None
    assert {p["key"] for p in out["pools"]} == {"h100-x8", "a100-40gb-x4", "l4-x1", "cpu"}
    assert out["candidates"][0]["name"] == out["profile"]["name"]
    assert [c["rank"] for c in out["candidates"]] == list(range(1, len(out["candidates"]) + 1))
    assert out["model"]["parameterCount"] == 8_030_261_248


def test_nothing_fits_exits_1_with_reasons_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_70B))
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(
        yaml.safe_dump(
            {
                "nodes": [
                    {
                        "name": "a100",
                        "product": "NVIDIA-A100-SXM4-40GB",
                        "gpus": 1,
                        "memoryMiB": 40960,
                        "compute": "8.0",
                    }
                ]
            }
        )
    )
    code = main([str(config), "--nodes", str(nodes), "-o", "json"])
    captured = capsys.readouterr()
    assert code == 1
    out = json.loads(captured.out)
    assert out["selected"] is False
    assert out["profile"] is None
    assert out["failure"]["reasons"]
    assert "no compatible profile" in captured.err
    assert "tp1: needs" in captured.err
    assert "NVIDIA-A100-SXM4-40GB offers 36.0" in captured.err


def test_table_output_names_the_choice_and_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inferator.cli", "plan", str(EXAMPLE_CONFIG), "--nodes", str(EXAMPLE_NODES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Candidates (best first)" in result.stdout
    assert "Selected vllm-h100-fp8-tp2-latency on pool h100-x8" in result.stdout
    assert "--tensor-parallel-size 2" in result.stdout
    assert "gpu-h100-0" in result.stdout


def test_yaml_output_and_constraints(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            str(EXAMPLE_CONFIG),
            "--nodes",
            str(EXAMPLE_NODES),
            "--engine",
            "vllm",
            "--gpu",
            "l4",
            "--max-model-len",
            "8192",
            "--min-concurrency",
            "4",
            "-o",
            "yaml",
        ]
    )
    out = yaml.safe_load(capsys.readouterr().out)
    assert code == 0
    assert out["profile"]["name"] == "vllm-l4-fp8-tp1-latency"
    assert out["maxModelLen"] == 8192
    assert out["estimates"]["maxConcurrentSequences"] >= 4


def test_pinned_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            str(EXAMPLE_CONFIG),
            "--nodes",
            str(EXAMPLE_NODES),
            "--profile",
            "vllm-cpu-cpu-fp32-tp1-latency",
            "-o",
            "json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["profile"]["engine"] == "vllm-cpu"
    assert out["deployment"]["env"]["VLLM_CPU_KVCACHE_SPACE"]
    assert out["deployment"]["gpuRequest"] == 0


def test_model_directory_and_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(EXAMPLE_CONFIG.read_text())
    settings = tmp_path / "settings.yaml"
    settings.write_text("selection:\n  engines: [sglang]\n")
    code = main([str(tmp_path), "--nodes", str(EXAMPLE_NODES), "--settings", str(settings), "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["profile"]["engine"] == "sglang"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", str(EXAMPLE_NODES)], "give a model"),
        ([str(EXAMPLE_CONFIG), "--nodes", "/nonexistent/nodes.yaml"], "cannot read"),
        (
            [str(EXAMPLE_CONFIG), "--nodes", str(EXAMPLE_NODES), "--profile", "x", "--engine", "vllm"],
            "excludes",
        ),
        (["/nonexistent/config.json", "--nodes", str(EXAMPLE_NODES)], "cannot read model"),
    ],
)
def test_bad_input_exits_2_with_an_actionable_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_settings_typo_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("engiens: [vllm]\n")
    assert main([str(EXAMPLE_CONFIG), "--nodes", str(EXAMPLE_NODES), "--settings", str(settings)]) == 2
    assert "invalid selection settings" in capsys.readouterr().err


def test_nodes_file_forms() -> None:
    node = {"kind": "Node", "metadata": {"name": "n"}, "status": {"allocatable": {}}}
    assert len(nodes_from_documents([{"kind": "NodeList", "items": [node, node]}])) == 2
    assert len(nodes_from_documents([node, node])) == 2
    short = nodes_from_documents(
        [{"nodes": [{"name": "h", "product": "NVIDIA-H200", "gpus": 8, "count": 3}]}]
    )
    assert [n["metadata"]["name"] for n in short] == ["h-0", "h-1", "h-2"]
    assert short[0]["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_no_cluster_and_no_nodes_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-kubeconfig"
    assert main([str(EXAMPLE_CONFIG), "--kubeconfig", str(missing)]) == 2
    assert "pass --nodes FILE" in capsys.readouterr().err
