"""Which replica answers: prefix affinity bounded by load, so shared prefixes hit a warm KV cache.

Requests whose prompts start alike go to the same replica (rendezvous hashing of the prompt's
first characters over the ready replicas: adding or losing one moves only its share), unless
that replica already has more than its fair share of requests in flight, when the least loaded
one takes it (consistent hashing with bounded loads, as KubeAI and llm-d route). `least-loaded`
skips the affinity.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from typing import Any

from inferator.gateway.config import RoutingPolicy

PREFIX_CHARS = 256
LOAD_FACTOR = 1.25


def prompt_prefix(payload: dict[str, Any], chars: int = PREFIX_CHARS) -> str:
    """The start of what the engine will tokenize first: system prompt and earliest messages."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        size = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            text = content if isinstance(content, str) else str(content or "")
            parts.append(text)
            size += len(text)
            if size >= chars:
                break
        return "\x1e".join(parts)[:chars]
    prompt = payload.get("prompt", payload.get("input", payload.get("query", "")))
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    return str(prompt)[:chars]


class Router:
    """In-flight counts per upstream address, and the choice among a model's ready replicas."""

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self._turn = itertools.count()

    def pick(self, upstreams: list[str], prefix: str) -> str:
        if len(upstreams) == 1:
            return upstreams[0]
        least = min(upstreams, key=lambda u: (self.in_flight[u], hash((u, next(self._turn)))))
        if self.policy != "prefix" or not prefix:
            return least
        preferred = max(upstreams, key=lambda u: _score(u, prefix))
        fair = sum(self.in_flight[u] for u in upstreams) / len(upstreams)
        if self.in_flight[preferred] <= fair * LOAD_FACTOR + 1:
            return preferred
        return least


def _score(upstream: str, prefix: str) -> bytes:
    return hashlib.blake2b(f"{upstream}\x00{prefix}".encode(), digest_size=8).digest()
