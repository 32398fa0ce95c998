"""Keeping credentials out of every line the prefetch writes: logs, the termination message, status.

Secrets reach this process as environment variables from the ModelCache's Secret, and as
parts of URLs (presigned query strings, user:password@host). Libraries put URLs and headers
into exception messages, so redaction happens where text leaves the process (the log
formatter, the termination log, the status reporter), not at each call site.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

# Environment variables whose values are credentials (the Secret's keys we read, plus the
# common aliases huggingface_hub and botocore also honour).
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HTTP_BEARER_TOKEN",
)
MASK = "***"
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words; no real credential is this short

_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s'\"<>]*")
# Libraries also print bare request paths ("Max retries exceeded with url: /cdn/x?X-Amz-Signature=...").
_PATH_QUERY = re.compile(r"((?:^|[\s'\"(=:])/[^\s?#'\"<>]*)\?[^\s'\"<>]+")
_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@'\"<>]+@")
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|basic|aws4-hmac-sha256)?\s*[^\s'\",}]+"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")


class Redactor:
    """Masks known secret values and the secret-bearing parts of URLs in any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted(
            {s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return cls(env[name] for name in SECRET_ENV_VARS if env.get(name))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
        text = _URL_QUERY.sub(rf"\1?{MASK}", text)
        text = _PATH_QUERY.sub(rf"\1?{MASK}", text)
        text = _AUTH_HEADER.sub(rf"\1{MASK}", text)
        return _BEARER.sub(f"Bearer {MASK}", text)


def display_url(url: str) -> str:
    """A URL as it may be shown: no user info, no query string (presigned signatures live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments and traceback) has been through a Redactor."""

    def __init__(self, redactor: Redactor, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record))
