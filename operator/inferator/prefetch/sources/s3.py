"""s3://bucket/prefix: every object under a prefix, from AWS S3 or any S3-compatible endpoint (boto3).

The prefix is a folder: `s3://models/llama` lists `llama/...` (never `llama-2/...`), and the
cache paths are the keys relative to it. sha256 is verified when the object carries a
full-object SHA256 checksum (uploaded with `--checksum-algorithm SHA256`; read with
HeadObject ChecksumMode=ENABLED, one HEAD per such object); multipart "composite"
checksums (`...-N`) hash the parts, not the file, and are not used. Otherwise the size is
verified, and the ETag pins the object: a ranged GET sends If-Match, so an object
replaced between listing and download fails instead of mixing bytes.

Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) from the
Secret, else boto3's default chain (IRSA, instance profile); with none at all, requests
are unsigned (public buckets).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from inferator.prefetch.errors import AuthError, SourceError, TransientError
from inferator.prefetch.retry import RetryPolicy, with_retries
from inferator.prefetch.sources.listing import Listing, RemoteFile, safe_relative_path, select_files

_CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the ModelCache's credentialsSecret"
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
DEFAULT_REGION = "us-east-1"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix/'); '' for the whole bucket."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise SourceError(f"{uri}: expected s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def sha256_hex_from_checksum(value: str | None) -> str | None:
    """S3's base64 ChecksumSHA256 as hex; None for composite (multipart, '-N') or malformed values."""
    if not value or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


class S3Stream:
    """A GetObject body; botocore/urllib3 errors while reading become TransientError."""

    def __init__(self, body: Any, start: int, where: str, stall_timeout_s: float) -> None:
        self.body = body
        self.start = start
        self.where = where
        self.stall_timeout_s = stall_timeout_s

    def read(self, size: int) -> bytes:
        try:
            data: bytes = self.body.read(size)
            return data
        except Exception as exc:  # ReadTimeoutError, IncompleteReadError, ResponseStreamingError, OSError
            if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
                raise TransientError(f"{self.where}: stalled: no data for {self.stall_timeout_s:g}s") from exc
            raise TransientError(f"{self.where}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.body.close()


class S3Source:
    """Objects under a prefix; one client shared by all workers (boto3 clients are thread-safe)."""

    def __init__(
        self,
        uri: str,
        *,
        endpoint: str | None,
        region: str | None,
        credentials: Mapping[str, str],
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        parallel: int,
        stall_timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.endpoint = endpoint
        self.include = include
        self.exclude = exclude
        self.stall_timeout_s = stall_timeout_s
        self.retry = retry
        self.client = self._client(endpoint, region, credentials, parallel, stall_timeout_s)

    @staticmethod
    def _client(
        endpoint: str | None,
        region: str | None,
        credentials: Mapping[str, str],
        parallel: int,
        stall_s: float,
    ) -> Any:
        import boto3
        import botocore
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
            region_name=region or None,
        )
        config = Config(
            connect_timeout=30,
            read_timeout=stall_s,  # no byte for this long on a socket read: the transfer is cut
            retries={"max_attempts": 3, "mode": "standard"},  # API calls; transfers use our own retries
            max_pool_connections=parallel + 4,
            # Custom endpoints (MinIO, Ceph, moto) rarely have wildcard DNS for virtual-host buckets.
            s3={"addressing_style": "path" if endpoint else "auto"},
            user_agent_extra="inferator-prefetch",
        )
        if session.get_credentials() is None:
            config = config.merge(Config(signature_version=botocore.UNSIGNED))
        return session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region or session.region_name or DEFAULT_REGION,
            config=config,
        )

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def _call(self, what: str, fn: Any) -> Any:
        """Run a boto3 call, mapping its errors onto ours (auth, transient, permanent)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"{self.describe()}: {what}"
        try:
            return fn()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _AUTH_CODES or status in (401, 403):
                raise AuthError(
                    f"{where}: credentials were rejected ({code or 'HTTP ' + str(status)}; {_CREDENTIALS_HINT})"
                ) from exc
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
                raise TransientError(f"{where}: {code or status}") from exc
            if code in ("PreconditionFailed", "InvalidRange"):
                raise TransientError(
                    f"{where}: the object changed since it was listed ({code})", restart=True
                ) from exc
            raise SourceError(f"{where}: {code or status}: {error.get('Message', '')}".rstrip(": ")) from exc
        except NoCredentialsError as exc:
            raise AuthError(f"{where}: no credentials ({_CREDENTIALS_HINT})") from exc
        except BotoCoreError as exc:  # endpoint unreachable, read timeout, connection closed
            raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc

    def list_files(self) -> Listing:
        def page_through() -> list[dict[str, Any]]:
            paginator = self.client.get_paginator("list_objects_v2")
            objects: list[dict[str, Any]] = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                objects.extend(page.get("Contents") or [])
            return objects

        objects = with_retries(
            f"{self.describe()}: listing", lambda: self._call("listing", page_through), self.retry
        )
        files = []
        for obj in objects:
            key = str(obj["Key"])
            if key.endswith("/"):
                continue  # a "folder" marker object
            path = safe_relative_path(key[len(self.prefix) :], self.describe())
            files.append(
                RemoteFile(
                    path=path,
                    size=int(obj["Size"]),
                    identity=f"etag:{obj.get('ETag', '')}",
                    locator=(key, obj.get("ETag"), "SHA256" in (obj.get("ChecksumAlgorithm") or [])),
                )
            )
        selected = select_files(files, self.include, self.exclude, self.describe())
        return Listing(tuple(self._with_sha256(f) for f in selected))

    def _with_sha256(self, file: RemoteFile) -> RemoteFile:
        key, _etag, has_sha256 = file.locator
        if not has_sha256:
            return file

        def head() -> Any:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")

        meta = with_retries(
            f"{self.describe()}: HEAD {key}", lambda: self._call(f"HEAD {key}", head), self.retry
        )
        if meta.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return file
        sha256 = sha256_hex_from_checksum(meta.get("ChecksumSHA256"))
        return RemoteFile(file.path, file.size, file.identity, sha256, None, file.locator)

    def open(self, file: RemoteFile, offset: int) -> S3Stream:
        key, etag, _ = file.locator
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if file.size > 0:
            args["Range"] = f"bytes={offset}-{file.size - 1}"
        if etag:
            args["IfMatch"] = etag
        response = self._call(f"GET {key}", lambda: self.client.get_object(**args))
        start = offset if "ContentRange" in response or offset == 0 else 0
        return S3Stream(response["Body"], start, f"s3://{self.bucket}/{key}", self.stall_timeout_s)
