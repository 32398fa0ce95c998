"""Failures that end a prefetch, each with the exit code the Job's podFailurePolicy acts on.

Codes 2, 3 and 5 fail the Job at once (retrying cannot heal them); 1 is left to the Job's
backoff. The message of each error is the one-line reason written to the termination log,
so it says what was expected, what was found and what to change.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

EXIT_OK = 0
EXIT_RETRYABLE = 1  # everything else: network, server errors, credentials (a rotated Secret may fix it)
EXIT_VERIFICATION = 2  # a file is not what the source says it is
EXIT_PERMISSION = 3  # the cache volume is not writable by the Job's UID/GID
EXIT_NO_SPACE = 5  # the cache volume is too small

GIB = 1 << 30


class PrefetchError(Exception):
    """Base: a failure with a user-facing one-line message and an exit code."""

    exit_code = EXIT_RETRYABLE


class TransientError(PrefetchError):
    """A failure worth retrying in-process: 5xx, connection reset, stall, truncated body."""

    def __init__(self, message: str, *, restart: bool = False) -> None:
        super().__init__(message)
        self.restart = restart  # the partial bytes cannot be resumed: start the file again


class AuthError(PrefetchError):
    """401/403: the source rejected the credentials (or there were none). Not retried in-process."""


class SourceError(PrefetchError):
    """The source cannot be listed or read for a reason retrying will not fix in this run."""


class ReportError(PrefetchError):
    """The final status report could not be written after retries."""


class VerificationError(PrefetchError):
    """Size, checksum or structure mismatch; also an empty or unusable listing."""

    exit_code = EXIT_VERIFICATION


class CachePermissionError(PrefetchError):
    """The cache path cannot be written as this process's UID/GID."""

    exit_code = EXIT_PERMISSION

    def __init__(self, path: str | Path, reason: str) -> None:
        uid, gid = os.getuid(), os.getgid()
        owner = _owner(path)
        super().__init__(
            f"cannot write {path} as uid {uid} gid {gid}: {reason}{owner}; the volume must be writable by "
            f"this UID/GID (fsGroup ignored by the storage? set spec.ownership.fixOwnership or chown it)"
        )
        self.path = str(path)


class NoSpaceError(PrefetchError):
    """The cache volume has too little free space for what is left to download."""

    exit_code = EXIT_NO_SPACE

    def __init__(self, path: str | Path, needed_bytes: int, free_bytes: int) -> None:
        super().__init__(
            f"no space left on the cache volume at {path}: {needed_bytes} bytes "
            f"({needed_bytes / GIB:.2f} GiB) still to write, {free_bytes} bytes ({free_bytes / GIB:.2f} GiB) "
            f"free; give the ModelCache a larger spec.storage.size"
        )
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


def _owner(path: str | Path) -> str:
    """' (owned by uid X gid Y, mode 0755)' for the nearest existing ancestor, to show why."""
    candidate = Path(path)
    while True:
        try:
            st = candidate.stat()
        except OSError:
            if candidate.parent == candidate:
                return ""
            candidate = candidate.parent
            continue
        mode = st.st_mode & 0o7777
        subject = "" if candidate == Path(path) else f"{candidate} is "
        return f" ({subject}owned by uid {st.st_uid} gid {st.st_gid}, mode {mode:04o})"


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def classify_os_error(exc: OSError, path: str | Path, needed_bytes: int = 0) -> PrefetchError:
    """The exit-code-bearing error for an OSError met while writing the cache at `path`."""
    if exc.errno in _PERMISSION_ERRNOS:
        return CachePermissionError(exc.filename or path, exc.strerror or str(exc))
    if exc.errno in _SPACE_ERRNOS:
        try:
            free = free_bytes(path if Path(path).exists() else Path(path).parent)
        except OSError:
            free = 0
        return NoSpaceError(path, max(needed_bytes, 1), free)
    return PrefetchError(f"cannot write {exc.filename or path}: {exc.strerror or exc}")
