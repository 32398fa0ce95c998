"""What a source lists: files with their sizes and, where the source publishes them, digests.

Include/exclude globs follow huggingface_hub's `allow_patterns`/`ignore_patterns` semantics
(`fnmatch` on the whole relative path, so `*` also crosses `/`; a pattern ending in `/`
means everything under that folder), so a spec written for `snapshot_download` means the
same here.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferator.api.cache_manifest import MANIFEST_DIR
from inferator.prefetch.errors import SourceError, VerificationError


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch.

    path: relative to the cache root, POSIX separators, already checked to stay inside it.
    identity: changes whenever the bytes may have changed (LFS oid, ETag, ...); a partial
    download or a journal entry made for another identity is not reused.
    """

    path: str
    size: int
    identity: str
    sha256: str | None = None  # hex, when the source publishes it
    git_blob_sha1: str | None = None  # hex, Hugging Face's oid for files not in LFS
    locator: Any = field(default=None, compare=False, repr=False)  # URL, S3 key: the source's own handle


@dataclass(frozen=True)
class Listing:
    """A source's file list at one revision."""

    files: tuple[RemoteFile, ...]
    revision: str | None = None  # Hugging Face commit sha; None for sources without revisions

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ByteStream(Protocol):
    """An open transfer of one file from `start` to its end."""

    start: int  # the offset the bytes begin at: the requested one, or 0 when the server ignored Range

    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class Source(Protocol):
    """A place to list and download files from. `open` raises TransientError for what a retry may fix."""

    def describe(self) -> str: ...

    def list_files(self) -> Listing: ...

    def open(self, file: RemoteFile, offset: int) -> ByteStream: ...


def safe_relative_path(raw: str, where: str) -> str:
    """A listed name as a relative POSIX path inside the cache, or a SourceError.

    A listing is untrusted input: `../`, absolute paths and our own `.inferator/` directory
    are refused so that no source can write outside the cache or over its manifest.
    """
    path = posixpath.normpath(raw.replace("\\", "/").lstrip("/")) if raw else ""
    if (
        not path
        or path == "."
        or path.startswith("../")
        or path == ".."
        or raw.startswith("/")
        or path.split("/")[0] == MANIFEST_DIR
        or "\x00" in path
    ):
        raise SourceError(f"{where}: refusing file name {raw!r} (outside the cache or reserved)")
    return path


def matches(path: str, patterns: Sequence[str]) -> bool:
    """huggingface_hub's pattern rule: fnmatch on the whole path; 'dir/' means 'dir/*'."""
    return any(fnmatch.fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)


def select_files(
    files: Iterable[RemoteFile], include: Sequence[str], exclude: Sequence[str], where: str
) -> tuple[RemoteFile, ...]:
    """Files kept by include (all when empty) and not dropped by exclude; refuses an empty result."""
    listed = list(files)
    kept = tuple(
        sorted(
            (f for f in listed if (not include or matches(f.path, include)) and not matches(f.path, exclude)),
            key=lambda f: f.path,
        )
    )
    if not kept:
        filters = f" (include {list(include)}, exclude {list(exclude)})" if include or exclude else ""
        raise VerificationError(f"{where}: no files to fetch: {len(listed)} listed, none selected{filters}")
    seen: set[str] = set()
    for f in kept:
        if f.path in seen:
            raise SourceError(f"{where}: two files map to the same cache path {f.path!r}")
        seen.add(f.path)
    return kept
