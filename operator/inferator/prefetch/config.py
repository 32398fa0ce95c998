"""The prefetch's settings: the Job's environment (the operator's contract), overridable by flags.

The operator sets INFERATOR_* variables (see `inferator.render.modelcache.prefetch_env`);
a person running `inferator prefetch --source ... --dest ...` by hand uses flags instead.
Credentials are never flags (they would show in `ps` and shell history): they come only
from the environment (HF_TOKEN, AWS_*, HTTP_BEARER_TOKEN).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferator.prefetch.redact import SECRET_ENV_VARS

Mode = Literal["size", "fetch", "check"]

DEFAULT_PARALLEL = 8
DEFAULT_STALL_TIMEOUT_S = 120.0  # the CRD's default (spec.prefetch.stallTimeoutSeconds)
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_BACKOFF_S = 1.0
DEFAULT_TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath


@dataclass(frozen=True)
class PrefetchConfig:
    """Everything one run needs, already parsed."""

    source: str
    dest: Path
    mode: Mode = "fetch"
    endpoint: str | None = None
    region: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    parallel: int = DEFAULT_PARALLEL
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    revision: str | None = None  # pinned by an earlier sizing run: used instead of resolving again
    modelcache: str | None = None  # None: run by hand, report to stdout
    namespace: str | None = None
    content_hash: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # consecutive failed attempts per file before giving up
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S  # first retry delay; doubles each attempt
    termination_log: Path = Path(DEFAULT_TERMINATION_LOG)
    progress_interval_s: float = 2.0
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)


def _lines(value: str | None) -> tuple[str, ...]:
    return tuple(line.strip() for line in (value or "").splitlines() if line.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferator prefetch",
        description=(
            "Download a model into a cache directory and verify it (the ModelCache prefetch Job). "
            "Every option defaults to its INFERATOR_* environment variable."
        ),
        epilog=(
            "Credentials come from the environment only: HF_TOKEN (Hugging Face), AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (S3), HTTP_BEARER_TOKEN (https sources; sent only to "
            "the source URL's host). Exit codes: 0 done, 1 retryable failure, 2 verification failed, "
            "3 cache not writable, 5 no space left."
        ),
    )
    parser.add_argument(
        "--source", help="hf://org/name[@rev] | s3://bucket/prefix | https://... | pvc://claim/path"
    )
    parser.add_argument("--dest", help="cache root (INFERATOR_DEST, /cache in the Job)")
    parser.add_argument(
        "--mode",
        choices=["size", "fetch", "check"],
        help="size: list and report only; fetch: download; check: list to check the credentials, report them",
    )
    parser.add_argument("--endpoint", help="Hugging Face mirror or S3-compatible endpoint URL")
    parser.add_argument("--region", help="S3 region")
    parser.add_argument("--include", action="append", help="glob of files to fetch (repeatable)")
    parser.add_argument("--exclude", action="append", help="glob of files to skip (repeatable)")
    parser.add_argument("--parallel", type=int, help="concurrent downloads")
    parser.add_argument("--stall-timeout", type=float, help="seconds without a byte before a transfer is cut")
    parser.add_argument("--revision", help="use this revision instead of resolving the source's again")
    parser.add_argument("--modelcache", help="ModelCache to report status on (default: stdout only)")
    parser.add_argument("--namespace", help="namespace of the ModelCache")
    parser.add_argument("--content-hash", help="the operator's content hash, echoed into status")
    parser.add_argument(
        "--max-attempts", type=int, help="consecutive failed attempts per file before failing"
    )
    parser.add_argument(
        "--retry-backoff", type=float, help="first retry delay in seconds (doubles each time)"
    )
    parser.add_argument("--termination-log", help="where the one-line failure reason goes")
    return parser


def _credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """The Job's credentials: files named by key in INFERATOR_CREDENTIALS_DIR (the operator mounts
    only the keys the source type reads), else the environment, as a user running it by hand has."""
    found = {k: v for k, v in environ.items() if k in SECRET_ENV_VARS and v}
    directory = environ.get("INFERATOR_CREDENTIALS_DIR")
    if directory:
        for name in SECRET_ENV_VARS:
            path = Path(directory) / name
            if path.is_file():
                value = path.read_text().strip()
                if value:
                    found[name] = value
    return found


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> PrefetchConfig:
    """Flags over environment over defaults. Raises SystemExit(2) (argparse) on a bad command line."""
    parser = _parser()
    args = parser.parse_args(list(argv))

    def pick(flag: object, name: str) -> str | None:
        if flag is not None:
            return str(flag)
        value = environ.get(name)
        return value if value else None

    source = pick(args.source, "INFERATOR_SOURCE")
    dest = pick(args.dest, "INFERATOR_DEST")
    if not source:
        parser.error("no source: pass --source or set INFERATOR_SOURCE")
    mode = pick(args.mode, "INFERATOR_MODE") or "fetch"
    if mode not in ("size", "fetch", "check"):
        parser.error(f"INFERATOR_MODE must be 'size', 'fetch' or 'check', not {mode!r}")
    if not dest:
        if mode == "fetch" or source.startswith("pvc://"):
            parser.error("no destination: pass --dest or set INFERATOR_DEST")
        dest = "/cache"

    def number(flag: object, name: str, default: float, kind: type[int] | type[float]) -> float:
        raw = pick(flag, name)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            parser.error(f"{name} must be a number, not {raw!r}")
        raise AssertionError("unreachable")  # parser.error exits

    include = tuple(args.include) if args.include else _lines(environ.get("INFERATOR_INCLUDE"))
    exclude = tuple(args.exclude) if args.exclude else _lines(environ.get("INFERATOR_EXCLUDE"))
    return PrefetchConfig(
        source=source,
        dest=Path(dest),
        mode="size" if mode == "size" else "check" if mode == "check" else "fetch",
        # By hand, the variables huggingface_hub and boto3 users already have set also work.
        endpoint=pick(args.endpoint, "INFERATOR_ENDPOINT")
        or (environ.get("HF_ENDPOINT") if source.startswith("hf://") else None)
        or (
            environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
            if source.startswith("s3://")
            else None
        ),
        region=pick(args.region, "INFERATOR_REGION"),
        include=include,
        exclude=exclude,
        parallel=max(1, int(number(args.parallel, "INFERATOR_PARALLEL", DEFAULT_PARALLEL, int))),
        stall_timeout_s=max(
            0.1, number(args.stall_timeout, "INFERATOR_STALL_TIMEOUT", DEFAULT_STALL_TIMEOUT_S, float)
        ),
        revision=pick(args.revision, "INFERATOR_REVISION"),
        modelcache=pick(args.modelcache, "INFERATOR_MODELCACHE"),
        namespace=pick(args.namespace, "INFERATOR_NAMESPACE"),
        content_hash=pick(args.content_hash, "INFERATOR_CONTENT_HASH"),
        max_attempts=max(
            1, int(number(args.max_attempts, "INFERATOR_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, int))
        ),
        retry_backoff_s=max(
            0.0, number(args.retry_backoff, "INFERATOR_RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF_S, float)
        ),
        termination_log=Path(
            pick(args.termination_log, "INFERATOR_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG
        ),
        credentials=_credentials(environ),
    )
