"""Sources by URI scheme: hf://, s3://, http(s)://, pvc://. Each lists files and opens ranged reads."""

from __future__ import annotations

from inferator.prefetch.config import PrefetchConfig
from inferator.prefetch.errors import SourceError
from inferator.prefetch.retry import RetryPolicy
from inferator.prefetch.sources.listing import ByteStream, Listing, RemoteFile, Source
from inferator.prefetch.sources.pvc import PvcSource

__all__ = ["ByteStream", "Listing", "PvcSource", "RemoteFile", "Source", "open_source"]


def open_source(config: PrefetchConfig, retry: RetryPolicy) -> Source | PvcSource:
    """The source for `config.source`; clients are imported only for the scheme in use."""
    uri = config.source
    common = {"include": config.include, "exclude": config.exclude}
    if uri.startswith("hf://"):
        from inferator.prefetch.sources.hf import HuggingFaceSource

        token = config.credentials.get("HF_TOKEN") or config.credentials.get("HUGGING_FACE_HUB_TOKEN")
        return HuggingFaceSource(
            uri,
            endpoint=config.endpoint,
            token=token,
            pinned_revision=config.revision,
            parallel=config.parallel,
            stall_timeout_s=config.stall_timeout_s,
            retry=retry,
            **common,
        )
    if uri.startswith("s3://"):
        from inferator.prefetch.sources.s3 import S3Source

        return S3Source(
            uri,
            endpoint=config.endpoint,
            region=config.region,
            credentials=config.credentials,
            parallel=config.parallel,
            stall_timeout_s=config.stall_timeout_s,
            retry=retry,
            **common,
        )
    if uri.startswith(("https://", "http://")):
        from inferator.prefetch.sources.http import HttpSource

        return HttpSource(
            uri,
            token=config.credentials.get("HTTP_BEARER_TOKEN"),
            parallel=config.parallel,
            stall_timeout_s=config.stall_timeout_s,
            retry=retry,
            **common,
        )
    if uri.startswith("pvc://"):
        return PvcSource(uri, config.dest, config.include, config.exclude)
    raise SourceError(f"unsupported source {uri!r}: expected hf://, s3://, https:// or pvc://")
