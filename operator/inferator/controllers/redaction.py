"""What the operator copies from elsewhere into status and events, made safe to show.

A source URI may carry user:password@ or a presigned query string, and a container's
termination message is whatever the process wrote (an engine may echo its argv, with an
--api-key). Both reach conditions and events, which anyone who may read the resource sees.
"""

from __future__ import annotations

import re

from inferator.prefetch.redact import Redactor

MAX_MESSAGE_CHARS = 1000
# Tokens of the shapes real credentials have, wherever they appear.
_TOKEN_SHAPES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,})\b"
)
_KEY_FLAG = re.compile(
    r"(--api-key[= ]|(?:api[_-]?key|token|password|secret)['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+", re.I
)


def scrub(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """URL userinfo and queries, auth headers, key flags and known token shapes masked; bounded."""
    text = Redactor()(text)
    text = _TOKEN_SHAPES.sub("***", text)
    text = _KEY_FLAG.sub(r"\1***", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
