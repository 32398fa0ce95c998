"""Retrieval-augmented generation against three InferenceServices, with the `openai` client.

    pip install openai
    python examples/rag/rag.py \\
        --embed  http://bge-small-en.team-a.svc:8000/v1 \\
        --rerank http://bge-reranker.team-a.svc:8000/v1 \\
        --llm    http://qwen2-5-7b-instruct.team-a.svc:8000/v1 \\
        "How does Inferator keep model weights inside the cluster?"

1. embed the documents once (`/v1/embeddings`) and keep the vectors in memory (a vector
   store is yours: pgvector, Qdrant, Milvus... do the same with more documents);
2. embed the question and take the `--retrieve` nearest documents by cosine similarity;
3. rerank those with the cross-encoder (`/v1/rerank`, Cohere/Jina style; the `openai`
   client has no rerank method, so this one call is plain HTTP);
4. ask the LLM (`/v1/chat/completions`) with the `--context` best documents as context.

Each service's model name is read from its /v1/models, so only the URLs are needed. With
`serving.apiKeySecret` set on the services, pass the key in OPENAI_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import openai

DOCUMENTS = [
    "Inferator prefetches model weights once onto a PersistentVolumeClaim with a Job; serving pods "
    "mount it read-only, so weights never leave the cluster after the first download.",
    "A ModelCache's source can be Hugging Face, S3, an HTTP mirror or an existing PVC; credentials "
    "come from a Secret and are never written to logs, events or status.",
    "The InferenceService controller selects an engine, precision, tensor parallelism and GPU pool "
    "from the nodes' GPU labels and the model's config.json.",
    "A readiness gate keeps a pod out of the Service until it has listed the model and answered one "
    "request of its task: a completion, an embedding, or the scores of two documents.",
    "Autoscaling uses the engine's queue length or running requests through an HPA or KEDA; KEDA "
    "can scale a service to zero replicas.",
    "Giant pandas live in the mountain forests of central China and eat mostly bamboo.",
]


@dataclass(frozen=True)
class Service:
    """One OpenAI-compatible endpoint (base URL ending in /v1) and the model it serves."""

    base_url: str
    model: str


@dataclass(frozen=True)
class RagAnswer:
    retrieved: list[int]  # document indices, nearest first (cosine)
    ranked: list[tuple[int, float]]  # (document index, relevance score), best first
    answer: str


def discover(base_url: str, api_key: str) -> Service:
    """The endpoint's served model, from its /v1/models (every service here serves one)."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key)
    return Service(base_url, client.models.list().data[0].id)


def embed(service: Service, texts: Sequence[str], api_key: str) -> list[list[float]]:
    client = openai.OpenAI(base_url=service.base_url, api_key=api_key)
    answer = client.embeddings.create(model=service.model, input=list(texts))
    return [item.embedding for item in sorted(answer.data, key=lambda d: d.index)]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def nearest(query: Sequence[float], vectors: Sequence[Sequence[float]], k: int) -> list[int]:
    scores = [cosine(query, v) for v in vectors]
    return sorted(range(len(vectors)), key=lambda i: -scores[i])[:k]


def rerank(service: Service, query: str, documents: Sequence[str], api_key: str) -> list[tuple[int, float]]:
    """(index into `documents`, relevance score), best first."""
    request = urllib.request.Request(  # noqa: S310 (the user's own http(s) URL)
        f"{service.base_url}/rerank",
        data=json.dumps({"model": service.model, "query": query, "documents": list(documents)}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (the user's own URL)
        results = json.loads(response.read())["results"]
    pairs = [(int(r["index"]), float(r["relevance_score"])) for r in results]
    return sorted(pairs, key=lambda p: -p[1])


def ask(service: Service, question: str, context: Sequence[str], api_key: str, max_tokens: int) -> str:
    client = openai.OpenAI(base_url=service.base_url, api_key=api_key)
    sources = "\n".join(f"- {doc}" for doc in context)
    answer = client.chat.completions.create(
        model=service.model,
        messages=[
            {"role": "system", "content": "Answer from the context only. Say so if it does not say."},
            {"role": "user", "content": f"Context:\n{sources}\n\nQuestion: {question}"},
        ],
        max_tokens=max_tokens,
        temperature=0,
    )
    return answer.choices[0].message.content or ""


def run(
    embedder: Service,
    reranker: Service,
    llm: Service,
    question: str,
    documents: Sequence[str] = DOCUMENTS,
    retrieve: int = 4,
    context: int = 2,
    api_key: str = "none",
    max_tokens: int = 128,
) -> RagAnswer:
    vectors = embed(embedder, documents, api_key)
    query_vector = embed(embedder, [question], api_key)[0]
    retrieved = nearest(query_vector, vectors, retrieve)
    ranked_local = rerank(reranker, question, [documents[i] for i in retrieved], api_key)
    ranked = [(retrieved[i], score) for i, score in ranked_local]
    best = [documents[i] for i, _ in ranked[:context]]
    return RagAnswer(retrieved, ranked, ask(llm, question, best, api_key, max_tokens))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embed", required=True, help="the embedding service's base URL (…/v1)")
    parser.add_argument("--rerank", required=True, help="the reranker's base URL (…/v1)")
    parser.add_argument("--llm", required=True, help="the LLM's base URL (…/v1)")
    parser.add_argument("--retrieve", type=int, default=4, help="documents taken by cosine similarity")
    parser.add_argument("--context", type=int, default=2, help="documents given to the LLM after reranking")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("question")
    args = parser.parse_args(argv)
    key = os.environ.get("OPENAI_API_KEY", "none")
    result = run(
        discover(args.embed, key),
        discover(args.rerank, key),
        discover(args.llm, key),
        args.question,
        retrieve=args.retrieve,
        context=args.context,
        api_key=key,
        max_tokens=args.max_tokens,
    )
    print("retrieved (cosine):", ", ".join(f"#{i}" for i in result.retrieved))
    print("reranked:", ", ".join(f"#{i} {score:.3f}" for i, score in result.ranked))
    print("answer:", result.answer.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
