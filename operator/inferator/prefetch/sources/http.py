"""https://...: files from a plain web server, given as a directory listing or as a file list.

- A URL ending in `/` is a directory listing (nginx/Apache autoindex HTML, or nginx
  `autoindex_format json`), crawled recursively; links leaving that directory, sort links
  (`?C=N;O=D`) and `../` are ignored. Cache paths are relative to the listed directory.
- Any other URL is a file list: one URL a line (relative URLs resolve against the list's
  own URL), `#` comments, and an optional second column with the file's sha256 in hex.
  Cache paths are the URLs' paths relative to their longest common directory, so a list
  of presigned S3 URLs for `.../llama/config.json` etc. lands as `config.json` etc.

Sizes come from HEAD (or, where HEAD is refused, as by presigned GET-only URLs, from a
one-byte ranged GET). sha256 is verified when published: the file list's second column, or
in a directory listing a sidecar `<file>.sha256` or a `SHA256SUMS` file (sha256sum format)
in the same directory; sidecars are consumed, not downloaded. Without one, size only.

Credentials: HTTP_BEARER_TOKEN, sent as `Authorization: Bearer ...` only to the source URL's
own scheme://host:port (never to other hosts a file list or a redirect points at).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests

from inferator.prefetch.errors import SourceError
from inferator.prefetch.redact import display_url
from inferator.prefetch.retry import RetryPolicy, with_retries
from inferator.prefetch.sources.http_stream import (
    CONNECT_TIMEOUT_S,
    HttpStream,
    content_length,
    make_session,
    open_range,
    raise_for_status,
    transient_from,
)
from inferator.prefetch.sources.listing import Listing, RemoteFile, safe_relative_path, select_files

CHECKSUM_FILES = ("SHA256SUMS", "sha256sums.txt", "SHA256SUMS.txt")
SIDECAR_SUFFIX = ".sha256"
MAX_DEPTH = 16  # directory levels crawled below the listing: deeper trees are not model checkpoints
_CREDENTIALS_HINT = "HTTP_BEARER_TOKEN from the ModelCache's credentialsSecret"
_SHA256 = re.compile(r"\b([0-9a-fA-F]{64})\b")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def parse_sha256sums(text: str) -> dict[str, str]:
    """`sha256sum` output ('<hex>  <name>' or '<hex> *<name>') -> {name: hex}."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and _SHA256.fullmatch(parts[0]):
            sums[parts[1].lstrip("*").strip().removeprefix("./")] = parts[0].lower()
    return sums


class HttpSource:
    """A directory listing or a file list over HTTP(S)."""

    def __init__(
        self,
        uri: str,
        *,
        token: str | None,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        parallel: int,
        stall_timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        self.uri = uri
        self.token = token
        self.include = include
        self.exclude = exclude
        self.parallel = parallel
        self.stall_timeout_s = stall_timeout_s
        self.retry = retry
        self.session = make_session(parallel)
        self._origin = _origin(uri)

    def describe(self) -> str:
        return display_url(self.uri)

    def _headers(self, url: str) -> dict[str, str]:
        if self.token and _origin(url) == self._origin:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def _get_text(self, url: str) -> tuple[str, str]:
        """(body, content type) of a small document: a listing, a file list, a checksum file."""

        def get() -> tuple[str, str]:
            try:
                response = self.session.get(
                    url, headers=self._headers(url), timeout=(CONNECT_TIMEOUT_S, self.stall_timeout_s)
                )
            except requests.RequestException as exc:
                raise transient_from(exc, display_url(url), self.stall_timeout_s) from exc
            raise_for_status(response, display_url(url), _CREDENTIALS_HINT)
            return response.text, response.headers.get("Content-Type", "")

        return with_retries(f"GET {display_url(url)}", get, self.retry)

    # -- listing -------------------------------------------------------------------------------

    def _crawl(self, root: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """[(relative path, url)] of the files under a directory listing, and {relative path: sha256}."""
        files: list[tuple[str, str]] = []
        sums: dict[str, str] = {}
        pending = [(root, "", 0)]
        while pending:
            url, rel_dir, depth = pending.pop()
            body, content_type = self._get_text(url)
            for name, is_dir in self._entries(url, body, content_type):
                rel = f"{rel_dir}{name}"
                child = urljoin(url, quote(name))
                if is_dir:
                    if depth + 1 <= MAX_DEPTH:
                        pending.append((child + "/", rel + "/", depth + 1))
                elif name in CHECKSUM_FILES:
                    text, _ = self._get_text(child)
                    sums.update({f"{rel_dir}{k}": v for k, v in parse_sha256sums(text).items()})
                else:
                    files.append((rel, child))
        return files, sums

    def _entries(self, url: str, body: str, content_type: str) -> Iterable[tuple[str, bool]]:
        """(name, is directory) for each entry of one listing page."""
        if "json" in content_type:
            try:
                for item in json.loads(body):
                    yield str(item["name"]), item.get("type") == "directory"
            except (ValueError, TypeError, KeyError) as exc:
                raise SourceError(f"{display_url(url)}: not a JSON directory listing: {exc}") from exc
            return
        parser = _Links()
        parser.feed(body)
        base = urlsplit(url)
        for href in parser.hrefs:
            target = urlsplit(urljoin(url, href))
            if (
                target.query
                or target.fragment
                or (target.scheme, target.netloc) != (base.scheme, base.netloc)
            ):
                continue
            if not target.path.startswith(base.path) or target.path == base.path:
                continue  # parent directory, siblings, or the page itself
            name = unquote(target.path[len(base.path) :])
            is_dir = name.endswith("/")
            name = name.rstrip("/")
            if name and "/" not in name:
                yield name, is_dir

    def _file_list(self) -> tuple[list[tuple[str, str]], dict[str, str]]:
        body, _ = self._get_text(self.uri)
        urls: list[tuple[str, str | None]] = []
        for line in body.splitlines():
            parts = line.strip().split()
            if not parts or parts[0].startswith("#"):
                continue
            sha = parts[1].lower() if len(parts) > 1 and _SHA256.fullmatch(parts[1]) else None
            urls.append((urljoin(self.uri, parts[0]), sha))
        if not urls:
            raise SourceError(f"{self.describe()}: the file list has no URLs (one URL a line expected)")
        paths = [unquote(urlsplit(u).path) for u, _ in urls]
        common = posixpath.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
        if len(paths) > 1 and common in paths:  # one URL is a prefix of another's path: use its folder
            common = posixpath.dirname(common)
        prefix = common.rstrip("/") + "/"
        files = [(p[len(prefix) :], u) for p, (u, _) in zip(paths, urls, strict=True)]
        sums = {p[len(prefix) :]: s for p, (_, s) in zip(paths, urls, strict=True) if s}
        return files, sums

    def _stat(self, url: str) -> tuple[int, str]:
        """(size, identity) from HEAD, or from a one-byte GET where HEAD is refused."""
        where = display_url(url)

        def head() -> tuple[int, str]:
            try:
                response = self.session.head(
                    url, headers=self._headers(url), allow_redirects=True, timeout=(CONNECT_TIMEOUT_S, 60)
                )
                size = content_length(response) if response.ok else None
                if size is None:  # HEAD refused (405, presigned GET-only URLs answer 403) or no length
                    response = self.session.get(
                        url,
                        headers={**self._headers(url), "Range": "bytes=0-0"},
                        stream=True,
                        timeout=(CONNECT_TIMEOUT_S, 60),
                    )
                    response.close()
                    raise_for_status(response, where, _CREDENTIALS_HINT)
                    size = content_length(response)
            except requests.RequestException as exc:
                raise transient_from(exc, where, self.stall_timeout_s) from exc
            if size is None:
                raise SourceError(f"{where}: the server gives no size (no Content-Length or Content-Range)")
            etag = response.headers.get("ETag") or ""
            modified = response.headers.get("Last-Modified") or ""
            return size, f"{etag}|{modified}|{size}"

        return with_retries(f"HEAD {where}", head, self.retry)

    def list_files(self) -> Listing:
        directory = urlsplit(self.uri).path.endswith("/")
        found, sums = self._crawl(self.uri) if directory else self._file_list()
        names = {rel for rel, _ in found}
        candidates = []
        for rel, url in found:
            if directory and rel.endswith(SIDECAR_SUFFIX) and rel[: -len(SIDECAR_SUFFIX)] in names:
                continue  # a sidecar: read below with its file, not downloaded
            candidates.append(
                RemoteFile(path=safe_relative_path(rel, self.describe()), size=0, identity="", locator=url)
            )
        selected = select_files(candidates, self.include, self.exclude, self.describe())
        sidecars = {rel: url for rel, url in found if rel.endswith(SIDECAR_SUFFIX)} if directory else {}

        def complete(file: RemoteFile) -> RemoteFile:
            size, identity = self._stat(str(file.locator))
            sha = sums.get(file.path)
            sidecar = sidecars.get(file.path + SIDECAR_SUFFIX)
            if sha is None and sidecar:
                match = _SHA256.search(self._get_text(sidecar)[0])
                if not match:
                    raise SourceError(f"{display_url(sidecar)}: no sha256 in the sidecar file")
                sha = match.group(1).lower()
            return RemoteFile(file.path, size, identity, sha, None, file.locator)

        with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(selected)))) as pool:
            files = tuple(pool.map(complete, selected))
        return Listing(files)

    def open(self, file: RemoteFile, offset: int) -> HttpStream:
        url = str(file.locator)
        etag = file.identity.split("|", 1)[0]
        return open_range(
            self.session,
            url,
            offset,
            file.size,
            headers=self._headers(url),
            stall_timeout_s=self.stall_timeout_s,
            credentials_hint=_CREDENTIALS_HINT,
            if_range=etag if etag and not etag.startswith("W/") else None,
        )
