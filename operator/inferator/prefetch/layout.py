"""Where things go on the cache volume, and the writes that must be atomic.

    /cache/<model files>                 renamed into place once verified
    /cache/.inferator/manifest.json      written last: its presence means complete and verified
    /cache/.inferator/journal.jsonl      files verified so far (resume after a kill)
    /cache/.inferator/tmp/*.part         downloads in progress (same filesystem: rename is atomic)

Engines ignore dot-directories, so nothing under `.inferator/` is ever taken for weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from inferator.api.cache_manifest import MANIFEST_DIR, MANIFEST_NAME
from inferator.prefetch.errors import CachePermissionError, PrefetchError, classify_os_error
from inferator.prefetch.journal import JOURNAL_NAME
from inferator.prefetch.sources.listing import RemoteFile

TMP_DIR = "tmp"
PART_SUFFIX = ".part"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (a power loss must not resurrect a stale manifest)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (NFS, FUSE) refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


class CacheLayout:
    """Paths under one cache root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta_dir = root / MANIFEST_DIR
        self.tmp_dir = self.meta_dir / TMP_DIR
        self.manifest = self.meta_dir / MANIFEST_NAME
        self.journal = self.meta_dir / JOURNAL_NAME

    def final_path(self, relative: str) -> Path:
        return self.root / relative

    def part_path(self, file: RemoteFile) -> Path:
        """A flat, bounded-length temporary name; the identity is part of it, so a changed remote
        object never resumes another object's bytes."""
        key = hashlib.sha256(f"{file.path}\0{file.identity}".encode()).hexdigest()[:24]
        tail = file.path.rsplit("/", 1)[-1][-80:]
        return self.tmp_dir / f"{key}-{tail}{PART_SUFFIX}"

    def prepare(self) -> None:
        """Create `.inferator/tmp` and prove the root and tmp are writable, or fail with exit code 3.

        Done before any network call, so a volume the Job's UID cannot write fails in a second
        with the UID and the path, not after an hour of downloading.
        """
        for directory in (self.root, self.meta_dir, self.tmp_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _as_error(exc, directory) from exc
        for directory in (self.root, self.tmp_dir):
            probe = directory / f".inferator-probe-{os.getpid()}"
            try:
                with open(probe, "wb") as handle:
                    handle.write(b"ok")
                probe.unlink()
            except OSError as exc:
                raise _as_error(exc, directory) from exc

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Write to a temporary name, fsync, rename over `path`, fsync the directory."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _as_error(exc, path, len(data)) from exc
        fsync_dir(path.parent)

    def remove_manifest(self) -> None:
        """The cache is about to change: it is no longer complete until a new manifest is written."""
        try:
            self.manifest.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _as_error(exc, self.manifest) from exc
        fsync_dir(self.meta_dir)

    def stale_parts(self, keep: set[Path]) -> list[Path]:
        """Partial downloads no current file will resume (another revision, another object)."""
        try:
            return [p for p in self.tmp_dir.iterdir() if p not in keep]
        except FileNotFoundError:
            return []


def _as_error(exc: OSError, path: Path, needed_bytes: int = 0) -> PrefetchError:
    error = classify_os_error(exc, path, needed_bytes)
    if isinstance(error, CachePermissionError):
        return CachePermissionError(path, exc.strerror or str(exc))
    return error
