"""The cache manifest: written last by the prefetch Job, read by the runtime and the operator.

Its presence means "complete and verified". Its location is fixed relative to the cache root
(the directory the PVC is mounted on), so every reader finds it without configuration.
"""

from __future__ import annotations

from pydantic import Field

from inferator.api.common import ApiModel
from inferator.api.modelcache import ModelFacts

MANIFEST_DIR = ".inferator"  # also holds temporary downloads; engines ignore dot-directories
MANIFEST_NAME = "manifest.json"
MANIFEST_PATH = f"{MANIFEST_DIR}/{MANIFEST_NAME}"
MANIFEST_VERSION = 1


class CachedFile(ApiModel):
    path: str = Field(description="Relative to the cache root, POSIX separators.")
    size: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class CacheManifest(ApiModel):
    version: int = MANIFEST_VERSION
    source: str = Field(description="The source URI as given in the ModelCache spec.")
    resolved_revision: str | None = None
    files: list[CachedFile]
    total_bytes: int = Field(ge=0)
    completed_at: str = Field(description="RFC 3339 UTC.")
    model: ModelFacts | None = None
