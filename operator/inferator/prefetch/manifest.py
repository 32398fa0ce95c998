"""Reading, matching and writing the cache manifest (the schema is `inferator.api.cache_manifest`).

A manifest from an earlier run that names the same source, revision and files (paths,
sizes, and sha256 where both sides know it) means the work is done: the files' sizes are
checked on disk and the run reports without downloading. Anything else and the manifest is
removed before the first byte changes, so a half-updated cache is never marked complete.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping

from pydantic import ValidationError

from inferator.api.cache_manifest import CachedFile, CacheManifest
from inferator.api.modelcache import ModelFacts
from inferator.prefetch.layout import CacheLayout
from inferator.prefetch.sources.listing import Listing

log = logging.getLogger(__name__)


def read_manifest(layout: CacheLayout) -> CacheManifest | None:
    """The manifest on the volume, or None when absent or unreadable (treated as absent)."""
    try:
        raw = layout.manifest.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s (%s): fetching again", layout.manifest, exc.strerror or exc)
        return None
    try:
        return CacheManifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        log.warning("ignoring unreadable manifest %s: %s", layout.manifest, str(exc).splitlines()[0])
        return None


def manifest_matches(manifest: CacheManifest, source: str, listing: Listing) -> bool:
    """Same source URI, revision and file list (sha256 compared where both sides have one)."""
    if manifest.source != source or manifest.resolved_revision != listing.revision:
        return False
    recorded = {f.path: f for f in manifest.files}
    if set(recorded) != {f.path for f in listing.files}:
        return False
    for file in listing.files:
        have = recorded[file.path]
        if have.size != file.size:
            return False
        if file.sha256 and have.sha256 and have.sha256 != file.sha256.lower():
            return False
    return True


def files_on_disk_match(manifest: CacheManifest, layout: CacheLayout) -> list[str]:
    """Paths whose file is missing or has another size than the manifest says (empty: all good)."""
    wrong = []
    for file in manifest.files:
        try:
            if layout.final_path(file.path).stat().st_size != file.size:
                wrong.append(file.path)
        except OSError:
            wrong.append(file.path)
    return wrong


def build_manifest(
    source: str, listing: Listing, sha256s: Mapping[str, str | None], facts: ModelFacts | None
) -> CacheManifest:
    return CacheManifest(
        source=source,
        resolved_revision=listing.revision,
        files=[CachedFile(path=f.path, size=f.size, sha256=sha256s.get(f.path)) for f in listing.files],
        total_bytes=listing.total_bytes,
        completed_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=facts,
    )


def write_manifest(layout: CacheLayout, manifest: CacheManifest) -> None:
    """Atomically, last: from this rename on, the cache is complete and verified."""
    body = json.dumps(manifest.to_k8s(), indent=2, sort_keys=True) + "\n"
    layout.write_atomic(layout.manifest, body.encode())
