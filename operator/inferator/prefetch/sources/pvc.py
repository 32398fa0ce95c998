"""pvc://claim/path: weights already on the volume (air-gapped clusters). Verified, never downloaded.

The Job mounts the claim at the cache root (INFERATOR_DEST, /cache), so the claim name in
the URI is informational here (the operator decides which claim is mounted); the path part
is the model directory *inside the volume*: `pvc://weights/llama-3.1-8b` means
`/cache/llama-3.1-8b`, and `pvc://weights` (no path) the volume root. Manifest paths stay
relative to the cache root (`llama-3.1-8b/config.json`), as for every other source.

Everything under the model directory is listed (symlinks followed, e.g. a Hugging Face
cache snapshot), except directories whose names start with `.` (`.cache/`, `.git/`, our
`.inferator/`). Verification: every file is readable with a stat-able size, each
safetensors file's size matches its header, and the model facts can be read.
"""

from __future__ import annotations

import os
from pathlib import Path

from inferator.api.modelcache import parse_pvc_uri
from inferator.prefetch.errors import VerificationError
from inferator.prefetch.sources.listing import Listing, RemoteFile, safe_relative_path, select_files


class PvcSource:
    """A directory on the mounted volume, listed from disk."""

    def __init__(self, uri: str, dest: Path, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
        self.uri = uri
        self.claim, self.subdir = parse_pvc_uri(uri)
        if self.subdir:
            safe_relative_path(self.subdir, uri)  # no '..' out of the volume
        self.dest = dest
        self.model_dir = dest / self.subdir if self.subdir else dest
        self.include = include
        self.exclude = exclude

    def describe(self) -> str:
        return f"{self.uri} (mounted at {self.model_dir})"

    def list_files(self) -> Listing:
        if not self.model_dir.is_dir():
            raise VerificationError(
                f"{self.uri}: {self.model_dir} is not a directory on the mounted volume; pvc:// sources are "
                f"verified in place (the path after the claim name is a folder inside the volume), and a sizing "
                f"Job mounts no volume: set spec.storage.pvcName to the claim"
            )
        prefix = f"{self.subdir}/" if self.subdir else ""
        files = []
        for root, dirs, names in os.walk(self.model_dir, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in names:
                full = Path(root) / name
                rel = full.relative_to(self.model_dir).as_posix()
                try:
                    size = full.stat().st_size
                except OSError as exc:
                    raise VerificationError(f"{self.uri}: cannot read {full}: {exc.strerror or exc}") from exc
                path = safe_relative_path(prefix + rel, self.uri)
                files.append(RemoteFile(path=path, size=size, identity=f"local:{size}", locator=full))
        # Patterns apply to paths inside the model directory, as they would at the source.
        selected = select_files(
            (RemoteFile(f.path[len(prefix) :], f.size, f.identity, locator=f.locator) for f in files),
            self.include,
            self.exclude,
            self.uri,
        )
        return Listing(
            tuple(RemoteFile(prefix + f.path, f.size, f.identity, locator=f.locator) for f in selected)
        )
