"""Real config.json files of current open models (tests/data/model_configs, sources in each meta.yaml).

For each: the facts resolve without a traceback, the parameter count is within 2% of the published
count (or of the rounding the publisher used: "1T" is 1e12 +/- 5e10), the estimated checkpoint
bytes within 5% of the published size where one is recorded, the KV per token is the engines'
formula for the model's attention kind, and `inferator plan` answers on the test bed's nodes with a
documented exit code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferator.api.modelcache import ModelFacts
from inferator.profiles.memory import kv_bytes_per_sequence_per_gpu, kv_bytes_per_token
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.plan import EXIT_BAD_INPUT, EXIT_NOTHING_FITS, EXIT_SELECTED, main

CORPUS = Path(__file__).resolve().parents[1] / "data" / "model_configs"
MODELS = sorted(p.name for p in CORPUS.iterdir() if (p / "config.json").is_file())
TEST_BED_NODES = Path(__file__).resolve().parents[2] / "examples" / "plan" / "nodes.yaml"


def meta(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CORPUS / name / "meta.yaml").read_text())
    return data


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / name / "config.json").read_text())
    return data


def published_tolerance(published: int) -> float:
    """2%, or half a unit of the last significant digit when the publisher rounded (1T, 56B)."""
    digits = len(str(published).rstrip("0"))
    unit = 10 ** (len(str(published)) - digits)
    return max(0.02 * published, unit / 2) if digits <= 2 else 0.02 * published


def test_the_corpus_covers_every_family() -> None:
    assert len(MODELS) >= 25
    families = {f for name in MODELS for f in meta(name).get("families") or []}
    for family in ("dense", "moe", "mla", "sliding-window", "multimodal", "mxfp4", "hybrid-linear", "mamba"):
        assert family in families, family
    facts = {name: facts_from_directory(CORPUS / name) for name in MODELS}
    assert {f.task for f in facts.values()} >= {"generate", "embed", "rerank"}
    schemes = {f.quantization.scheme for f in facts.values() if f.quantization}
    assert {"fp8", "mxfp4", "nvfp4", "gptq"} <= schemes
    for name in MODELS:
        source = meta(name).get("config_source")
        assert source, f"{name}: meta.yaml must say where config.json came from"


# Only models whose meta.yaml records a published number with its source are compared; the
# others still get every other test here.
WITH_PARAMETERS = [n for n in MODELS if meta(n).get("published_parameters") is not None]
WITH_BYTES = [n for n in MODELS if meta(n).get("checkpoint_bytes") is not None]


@pytest.mark.parametrize("name", WITH_PARAMETERS)
def test_parameter_count_matches_the_published_count(name: str) -> None:
    published = meta(name)["published_parameters"]
    facts = facts_from_directory(CORPUS / name)
    assert abs(facts.parameter_count - published) <= published_tolerance(int(published)), (
        f"{name}: {facts.parameter_count / 1e9:.3f} B estimated, {published / 1e9:.3f} B published"
    )


@pytest.mark.parametrize("name", WITH_BYTES)
def test_checkpoint_bytes_match_the_published_size(name: str) -> None:
    published = meta(name)["checkpoint_bytes"]
    facts = facts_from_directory(CORPUS / name)
    assert facts.checkpoint_bytes is not None
    assert abs(facts.checkpoint_bytes - published) <= 0.05 * published, (
        f"{name}: {facts.checkpoint_bytes / 1e9:.2f} GB estimated, {published / 1e9:.2f} GB published"
    )


def engine_kv_bytes_per_token(c: dict[str, Any], facts: ModelFacts) -> int:
    """The engines' per-token KV for the layers that keep every token, written from the config directly."""
    text = c.get("text_config") or c
    if facts.task != "generate" or facts.model_type in ("bert", "xlm-roberta", "roberta"):
        return 0
    if text.get("kv_lora_rank"):  # MLA: the compressed latent plus the decoupled RoPE key
        return (
            int(text["num_hidden_layers"]) * (int(text["kv_lora_rank"]) + int(text["qk_rope_head_dim"])) * 2
        )
    full_layers = sum(g.layers for g in facts.attention if g.window is None and g.kind != "mla")
    return 2 * full_layers * facts.num_key_value_heads * facts.head_dim * 2


@pytest.mark.parametrize("name", MODELS)
def test_kv_per_token_is_the_engines_formula(name: str) -> None:
    c = config(name)
    facts = facts_from_directory(CORPUS / name)
    assert kv_bytes_per_token(facts) == engine_kv_bytes_per_token(c, facts)
    # What vLLM reserves per sequence on CUDA (16-token blocks, 8192 tokens per step), from its
    # spec classes: a full layer every token; a sliding layer its window - 1 plus one step, plus a
    # block; a chunked layer one chunk plus one step; a hybrid stack in equal padded groups.
    long = 100_000  # a multiple of the block: full layers keep exactly `long`
    kinds = [g for g in facts.attention if g.kind != "encoder" and g.layers]
    counts = [g.layers for g in kinds]
    size = 1 if len(counts) <= 1 else (max(counts) if max(counts) < 1.5 * min(counts) else min(counts))
    bounded = 0
    for g in kinds:
        if g.window is None:
            continue
        if g.kind == "chunked":
            slots = -(-min(g.window + 8192, long) // 16) * 16
        else:
            slots = (-(-min(g.window - 1 + 8192, long) // 16) + 1) * 16
        padded = -(-g.layers // size) * size
        bounded += padded * g.kv_heads * (g.head_dim + g.v_head_dim) * 2 * slots
    full_padding = sum(
        (-(-g.layers // size) * size - g.layers)
        * (g.head_dim + g.v_head_dim if g.kind != "mla" else g.head_dim)
        * (g.kv_heads if g.kind != "mla" else 1)
        * 2
        * long
        for g in kinds
        if g.window is None
    )
    state = sum(s.layers * s.state_bytes_per_layer for s in facts.state)
    sequence = kv_bytes_per_sequence_per_gpu(facts, 1, long)
    assert sequence == kv_bytes_per_token(facts) * long + full_padding + bounded + state


def test_known_shapes() -> None:
    """A few facts every reader of these configs can check by hand."""
    v3 = facts_from_directory(CORPUS / "deepseek-ai--deepseek-v3")
    assert (v3.attention[0].kind, v3.attention[0].head_dim) == ("mla", 512 + 64)
    assert kv_bytes_per_token(v3) == 61 * 576 * 2  # 70,272 bytes: not 128 full heads
    assert v3.mtp_layers == 1 and v3.moe_layers == 58 and v3.num_shared_experts == 1
    assert v3.active_parameter_count is not None and 36e9 < v3.active_parameter_count < 39e9
    oss = facts_from_directory(CORPUS / "openai--gpt-oss-120b")
    assert oss.quantization is not None and oss.quantization.scheme == "mxfp4"
    assert {(g.kind, g.window) for g in oss.attention} == {("full", None), ("sliding", 128)}
    assert oss.weight_bytes < 70e9  # experts at 4.25 bits, attention in bf16
    next80 = facts_from_directory(CORPUS / "qwen--qwen3-next-80b-a3b-instruct")
    assert next80.attention[0].layers == 12 and next80.state[0].kind == "linear_attention"
    llava = facts_from_directory(CORPUS / "llava-hf--llava-1.5-7b-hf")
    assert llava.num_layers == 32 and llava.hidden_size == 4096  # from LlamaConfig's defaults
    assert llava.vision_parameter_count > 0.25e9
    minilm = facts_from_directory(CORPUS / "sentence-transformers--all-minilm-l6-v2")
    assert minilm.task == "embed" and minilm.max_position_embeddings == 256
    assert facts_from_directory(CORPUS / "cross-encoder--ms-marco-minilm-l-6-v2").task == "rerank"
    scout = facts_from_directory(CORPUS / "redhatai--llama-4-scout-17b-16e-instruct-fp8-dynamic")
    assert {(g.kind, g.layers, g.window) for g in scout.attention} == {
        ("full", 12, None),
        ("chunked", 36, 8192),
    }


@pytest.mark.parametrize("name", MODELS)
def test_plan_answers_on_the_test_bed_nodes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(CORPUS / name), "--nodes", str(TEST_BED_NODES), "-o", "json"])
    out = capsys.readouterr()
    assert code in (EXIT_SELECTED, EXIT_NOTHING_FITS, EXIT_BAD_INPUT)
    assert "Traceback" not in out.err
    plan = json.loads(out.out)
    if code == EXIT_SELECTED:
        assert plan["profile"]["gpuCount"] <= 8
        facts = plan["model"]
        if facts["task"] != "generate":
            assert "pooling" in plan["profile"]["command"]
    else:
        assert plan["failure"]["message"]
        if "would fit" in plan["failure"]["message"]:
            assert math.isfinite(len(plan["failure"]["reasons"]))
