"""Measured numbers of a profile, as `rankBy: measured` and `inferator plan` read them.

They live in the ConfigMap CONFIGMAP of the operator's namespace, one data key per (model,
profile, GPU pool) holding a small JSON document (controllers/measurements.py writes them
after each validation run). Pure parsing here: selection and the CLI share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

CONFIGMAP = "inferator-measurements"
LABEL = "inferator.dev/measurements"


@dataclass(frozen=True, slots=True)
class Measured:
    """A validation run's headline numbers for one (model, profile, pool)."""

    output_tokens_per_second: float
    ttft_p99_ms: float | None = None
    concurrency: int = 1


def model_identity(source_uri: str, revision: str | None, content_hash: str | None) -> str:
    """The model a measurement belongs to: its source and the revision resolved (else the
    cache's content hash), so a new revision is measured afresh."""
    return f"{source_uri}@{revision or content_hash or 'unknown'}"


def entry_key(model: str, profile: str, pool: str) -> str:
    """A ConfigMap data key (few characters are allowed there: a hash)."""
    return "m-" + hashlib.sha256(f"{model}\n{profile}\n{pool}".encode()).hexdigest()[:24]


def measured_for(data: Mapping[str, str], model: str) -> dict[tuple[str, str], Measured]:
    """The ConfigMap's entries for one model, by (profile, pool). Entries that do not parse (a
    hand edit gone wrong) are skipped, never fatal."""
    found: dict[tuple[str, str], Measured] = {}
    for text in data.values():
        try:
            doc = json.loads(text)
            if doc.get("model") != model:
                continue
            found[(str(doc["profile"]), str(doc["pool"]))] = Measured(
                output_tokens_per_second=float(doc["outputTokensPerSecond"]),
                ttft_p99_ms=float(doc["ttftP99Ms"]) if doc.get("ttftP99Ms") is not None else None,
                concurrency=int(doc.get("concurrency") or 1),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found
