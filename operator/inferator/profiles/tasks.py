"""What a model is served for (generate, embed, rerank, classify), and which engine serves which task.

The task comes from the model's facts (architecture and sentence-transformers files, see
model_facts._task) and can be pinned in the spec (`serving.task`). A pin may ask an engine to
*convert* a checkpoint (vLLM's `--convert embed|classify` turns a causal LM into a pooling
model, as Qwen3-Embedding is served); it may not ask for what the checkpoint has no head for
(generation from an encoder, rerank scores from a multi-label classifier).

Engines and tasks (each engine's own docs, 2026-11):

| engine    | generate | embed                    | rerank                              | classify            |
| --------- | -------- | ------------------------ | ----------------------------------- | ------------------- |
| vllm      | yes      | `--runner pooling`       | `--runner pooling` (cross-encoder)  | `--runner pooling`  |
| vllm-cpu  | yes      | same as vllm             | same as vllm                        | same as vllm        |
| sglang    | yes      | `--is-embedding`         | `--is-embedding` (cross-encoder)    | refused             |

An embedder pinned `rerank` is scored by the cosine of its embeddings: vLLM does that on
`/v1/rerank` and `/score`; SGLang reranks only cross-encoders and decoder-only yes/no models,
so it is refused for one.
| trtllm    | yes      | refused                  | refused                             | refused             |

trtllm-serve has no pooling runner: it serves completions and chat only. SGLang's
classification route is not part of its OpenAI-compatible server, so a classifier is
planned on vLLM only.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferator.api.modelcache import ModelFacts, ModelTask

POOLING_TASKS: frozenset[str] = frozenset({"embed", "rerank", "classify"})

# The request each task is warmed up (and used) with: path, and what the answer must hold.
ENDPOINTS: dict[str, str] = {
    "generate": "/v1/completions",
    "embed": "/v1/embeddings",
    "rerank": "/v1/rerank",
    "classify": "/classify",
}

_ENGINE_TASKS: dict[str, dict[str, str]] = {
    # task -> '' when served, else the reason it is refused
    "vllm": {},
    "vllm-cpu": {},
    "sglang": {
        "classify": "SGLang's OpenAI-compatible server has no classification route; vLLM serves "
        "classifiers (--runner pooling, /classify)",
    },
    "trtllm": {
        task: f"trtllm-serve has no pooling runner: it serves completions and chat, not {task} models"
        for task in POOLING_TASKS
    },
}

# Architectures whose checkpoint holds a causal LM head: a pin to embed/classify converts them.
_CAUSAL_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "ForMultimodalLM")


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """The task a service runs, and the conversion the engine applies to get there (or why not)."""

    task: ModelTask
    convert: str | None = None  # vLLM's --convert value for a causal LM served as a pooling model
    refusal: str = ""
    # "similarity": an embedder pinned rerank, its pairs scored by the cosine of their embeddings.
    scoring: str = ""


def is_pooling(task: str) -> bool:
    return task in POOLING_TASKS


def causal_lm(architecture: str) -> bool:
    return architecture.endswith(_CAUSAL_SUFFIXES)


def plan_task(facts: ModelFacts, pinned: ModelTask | None) -> TaskPlan:
    """The task to serve: the facts' own, or the pin when the checkpoint can do it."""
    own = facts.task
    arch = facts.architecture
    task = pinned or own
    if own == "embed" and causal_lm(arch) and task == "embed":
        # A causal LM listed as an embedder by its sentence-transformers files (Qwen3-Embedding).
        return TaskPlan("embed", convert="embed")
    if task == own:
        return TaskPlan(task)
    if own == "generate" and causal_lm(arch):
        if task in ("embed", "classify"):
            return TaskPlan(task, convert=task)
        return TaskPlan(
            task,
            refusal=(
                f"{arch} is a causal LM: serving it as a reranker needs a model-specific conversion "
                "(a cross-encoder head, or a yes/no scoring template); pin task embed or classify, "
                "or use a cross-encoder checkpoint"
            ),
        )
    if task == "generate":
        return TaskPlan(
            task,
            refusal=f"{arch} has no language-model head (its task is {own}): it cannot generate text",
        )
    if own == "rerank" and task == "classify":
        return TaskPlan(task)  # a one-label cross-encoder classifies as well (one probability)
    if own == "embed" and task == "rerank":
        return TaskPlan(task, scoring="similarity")  # vLLM scores an embedder's pairs by cosine
    return TaskPlan(
        task,
        refusal=f"{arch} is served as {own} by its files: it has no head for {task} (serving.task pinned)",
    )


def engine_refusal(engine: str, task: str) -> str:
    """'' when `engine` serves `task`, else the reason it does not."""
    return _ENGINE_TASKS.get(engine, {}).get(task, "")


def plan_refusal(engine: str, plan: TaskPlan) -> str:
    """'' when `engine` serves the planned task the planned way, else the reason it does not."""
    if refusal := engine_refusal(engine, plan.task):
        return refusal
    if plan.scoring == "similarity" and engine != "vllm" and engine != "vllm-cpu":
        return (
            f"{engine} reranks with a cross-encoder (or a decoder-only yes/no reranker), not by the "
            "cosine of an embedder's vectors; vLLM serves an embedder pinned rerank"
        )
    return ""


def served_facts(facts: ModelFacts, plan: TaskPlan) -> ModelFacts:
    """The facts as the engine will serve them: sizing follows the planned task, not the checkpoint's."""
    return facts if plan.task == facts.task else facts.model_copy(update={"task": plan.task})
