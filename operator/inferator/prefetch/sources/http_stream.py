"""Ranged HTTP GETs shared by the Hugging Face and plain HTTP(S) sources (requests + urllib3).

requests rather than huggingface_hub's own downloader because the Job needs control it does
not expose: resuming our own `.part` files, a stall timeout (the socket read timeout: no
byte for that long cuts the transfer), our retry policy, and progress per chunk. requests
also drops the Authorization header when a redirect leaves the host (Hugging Face sends LFS
files to a CDN with a presigned URL), and honours HTTPS_PROXY / REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from inferator import __version__
from inferator.prefetch.errors import AuthError, SourceError, TransientError
from inferator.prefetch.redact import display_url

CONNECT_TIMEOUT_S = 30.0
USER_AGENT = f"inferator-prefetch/{__version__}"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def make_session(parallel: int) -> requests.Session:
    """One pooled session for all workers; no urllib3 retries (ours count progress, theirs do not)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=parallel + 4, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept-Encoding"] = "identity"  # byte ranges and sizes are of the stored bytes
    return session


def raise_for_status(response: requests.Response, where: str, credentials_hint: str) -> None:
    """Map an HTTP error to the error class that decides retrying and the exit code."""
    status = response.status_code
    if status < 400:
        return
    if status in (401, 403):
        raise AuthError(
            f"{where}: the server refused access (HTTP {status}): credentials were rejected or are missing "
            f"({credentials_hint})"
        )
    if status in RETRYABLE_STATUS or status >= 500:
        raise TransientError(f"{where}: HTTP {status} {response.reason or ''}".rstrip())
    if status == 404:
        raise SourceError(f"{where}: not found (HTTP 404)")
    raise SourceError(f"{where}: HTTP {status} {response.reason or ''}".rstrip())


def transient_from(exc: Exception, where: str, stall_timeout_s: float) -> Exception:
    """A requests/urllib3 exception as TransientError (or SourceError for TLS problems)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return SourceError(f"{where}: TLS failed: {exc}")
    if isinstance(exc, requests.exceptions.ReadTimeout) or "timed out" in str(exc).lower():
        return TransientError(f"{where}: stalled: no data for {stall_timeout_s:g}s")
    return TransientError(f"{where}: {type(exc).__name__}: {exc}")


class HttpStream:
    """The body of one (ranged) GET, read in chunks; errors while reading become TransientError."""

    def __init__(self, response: requests.Response, start: int, where: str, stall_timeout_s: float) -> None:
        self.response = response
        self.start = start
        self.where = where
        self.stall_timeout_s = stall_timeout_s

    def read(self, size: int) -> bytes:
        """Up to `size` bytes, as soon as some arrived (read1): a stall leaves what came on disk."""
        try:
            data: bytes = self.response.raw.read1(size, decode_content=False)
            return data
        except Exception as exc:  # urllib3 ReadTimeoutError, ProtocolError, OSError: all mean "retry"
            raise transient_from(exc, self.where, self.stall_timeout_s) from exc

    def close(self) -> None:
        self.response.close()


def open_range(
    session: requests.Session,
    url: str,
    offset: int,
    size: int,
    *,
    headers: Mapping[str, str],
    stall_timeout_s: float,
    credentials_hint: str,
    if_range: str | None = None,
) -> HttpStream:
    """GET `url` from `offset` to `size - 1`. A server that ignores Range answers 200: start is then 0."""
    where = display_url(url)
    request_headers: dict[str, Any] = dict(headers)
    if size > 0:
        request_headers["Range"] = f"bytes={offset}-{size - 1}"
        if if_range and offset > 0:
            request_headers["If-Range"] = if_range  # a changed file answers 200 in full, not a wrong tail
    try:
        response = session.get(
            url, headers=request_headers, stream=True, timeout=(CONNECT_TIMEOUT_S, stall_timeout_s)
        )
    except requests.RequestException as exc:
        raise transient_from(exc, where, stall_timeout_s) from exc
    try:
        if response.status_code == 416:
            raise TransientError(f"{where}: range {offset}- not satisfiable (file changed?)", restart=True)
        raise_for_status(response, where, credentials_hint)
        start = 0
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise TransientError(f"{where}: server sent an unexpected range", restart=True)
            start = offset
    except BaseException:
        response.close()
        raise
    return HttpStream(response, start, where, stall_timeout_s)


def content_length(response: requests.Response) -> int | None:
    """The full size of a resource from a HEAD (Content-Length) or a ranged GET (Content-Range total)."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match and match.group(3) != "*":
        return int(match.group(3))
    if response.status_code == 200 and response.headers.get("Content-Length", "").isdigit():
        return int(response.headers["Content-Length"])
    return None
