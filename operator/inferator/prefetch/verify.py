"""Checks that a file is what the source says it is, before it may be renamed into place.

Size always; sha256 whenever the source publishes it (hashed while streaming, so no second
read; a file without a published digest is not hashed: on a 2-core node hashing costs more
CPU than the transfer itself, and nothing would be compared); the git blob sha1 Hugging Face
lists for its small non-LFS files; and for safetensors,
that the file is exactly as long as its own header says (a truncated shard fails here even
from a source that publishes no digest). A file that fails is never renamed into place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from inferator.prefetch.errors import VerificationError
from inferator.prefetch.sources.listing import RemoteFile
from inferator.profiles.model_facts import read_safetensors_header

HASH_READ_BYTES = 8 << 20


class StreamingDigest:
    """The digests the listing gives to check, over the bytes seen so far: sha256, git blob sha1."""

    def __init__(self, file: RemoteFile) -> None:
        self.sha256: Any = hashlib.sha256() if file.sha256 else None
        self.git: Any = None
        if file.git_blob_sha1:
            # git hashes "blob <size>\0" + content; sha1 is git's object name, not a security choice here.
            self.git = hashlib.sha1(f"blob {file.size}\0".encode(), usedforsecurity=False)

    @property
    def active(self) -> bool:
        return self.sha256 is not None or self.git is not None

    def update(self, data: bytes | memoryview) -> None:
        if self.sha256 is not None:
            self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)

    def update_from_file(self, path: Path, length: int) -> None:
        """Hash the first `length` bytes of a partial download being resumed."""
        if not self.active:
            return
        with open(path, "rb") as handle:
            remaining = length
            while remaining > 0:
                chunk = handle.read(min(HASH_READ_BYTES, remaining))
                if not chunk:
                    raise OSError(f"{path}: shorter than the {length} bytes recorded")
                self.update(chunk)
                remaining -= len(chunk)


def safetensors_expected_size(path: Path) -> int:
    """8 + header length + the end of the last tensor: the exact size a complete file has."""
    header = read_safetensors_header(path)
    with open(path, "rb") as handle:
        header_bytes = int.from_bytes(handle.read(8), "little")
    data_end = 0
    for name, tensor in header.items():
        if name != "__metadata__" and isinstance(tensor, dict):
            data_end = max(data_end, int(tensor["data_offsets"][1]))
    return 8 + header_bytes + data_end


def verify_file(file: RemoteFile, path: Path, size: int, digest: StreamingDigest) -> str | None:
    """Raise VerificationError unless the bytes at `path` match the listing; their sha256 when checked."""
    if size != file.size:
        raise VerificationError(f"size mismatch for {file.path}: expected {file.size} bytes, got {size}")
    got = digest.sha256.hexdigest() if digest.sha256 is not None else None
    if file.sha256 and got != file.sha256.lower():
        raise VerificationError(f"sha256 mismatch for {file.path}: expected {file.sha256.lower()}, got {got}")
    if digest.git is not None and file.git_blob_sha1:
        git = digest.git.hexdigest()
        if git != file.git_blob_sha1.lower():
            raise VerificationError(
                f"git blob sha1 mismatch for {file.path}: expected {file.git_blob_sha1.lower()}, got {git}"
            )
    check_safetensors(file.path, path)
    return got


def check_safetensors(name: str, path: Path) -> None:
    """A .safetensors file must be as long as its header says; anything else is corrupt."""
    if not name.endswith(".safetensors"):
        return
    try:
        expected = safetensors_expected_size(path)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise VerificationError(f"{name} is not a valid safetensors file: {exc}") from exc
    actual = path.stat().st_size
    if actual != expected:
        raise VerificationError(
            f"{name}: safetensors header describes {expected} bytes but the file has {actual} (truncated or corrupt)"
        )
