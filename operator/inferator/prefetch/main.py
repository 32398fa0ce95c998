"""`inferator prefetch`: size or fetch a model into the cache, report on the ModelCache, exit with a code.

size:  list the source (include/exclude applied), resolve the revision, report sizeBytes,
       resolvedRevision and contentHash. Writes nothing to disk.
fetch: prepare the cache (fails at once with exit 3 if this UID cannot write it), list, and
       either find a matching manifest (done: sizes checked, reported) or download what the
       journal does not already hold, verify, rename into place, read the model's facts,
       write the manifest last, and report the result.
pvc:// sources are verified in place instead of downloaded (see sources/pvc.py).

Exit codes (the Job's podFailurePolicy fails at once on 2, 3 and 5): 0 done, 1 retryable,
2 verification failed, 3 cache not writable, 5 no space. The reason is one line on stderr
and in the termination log (INFERATOR_TERMINATION_LOG, default /dev/termination-log).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from inferator.api.cache_manifest import CacheManifest
from inferator.api.modelcache import ModelFacts, Progress
from inferator.prefetch.config import PrefetchConfig, load_config
from inferator.prefetch.download import Downloader, plan_downloads
from inferator.prefetch.errors import (
    EXIT_OK,
    EXIT_RETRYABLE,
    AuthError,
    NoSpaceError,
    PrefetchError,
    VerificationError,
    classify_os_error,
    free_bytes,
)
from inferator.prefetch.journal import Journal
from inferator.prefetch.layout import CacheLayout
from inferator.prefetch.manifest import (
    build_manifest,
    files_on_disk_match,
    manifest_matches,
    read_manifest,
    write_manifest,
)
from inferator.prefetch.progress import ProgressCounter, ProgressTicker
from inferator.prefetch.redact import RedactingFormatter, Redactor
from inferator.prefetch.report import (
    KubernetesStatusSink,
    Reporter,
    StatusSink,
    StdoutSink,
    credentials_status,
    final_status,
    size_status,
)
from inferator.prefetch.retry import RetryPolicy
from inferator.prefetch.sources import Listing, PvcSource, Source, open_source
from inferator.prefetch.sources.listing import safe_relative_path
from inferator.prefetch.verify import check_safetensors
from inferator.profiles.model_config import UnsupportedModel
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.quantization import UnsupportedQuantization

log = logging.getLogger("inferator.prefetch")

MAX_REASON_BYTES = 4000  # Kubernetes keeps 4096 bytes of a termination message
_QUIET_LOGGERS = ("urllib3", "botocore", "boto3", "s3transfer", "huggingface_hub", "httpx2", "kubernetes")


def setup_logging(redactor: Redactor, stream: object = None) -> None:
    """One stderr handler whose every line has been through the redactor (libraries' lines too)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(RedactingFormatter(redactor, "%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def one_line(reason: str) -> str:
    """The termination message: a single line under Kubernetes' 4 KiB limit."""
    line = " ".join(reason.split())
    encoded = line.encode()
    if len(encoded) > MAX_REASON_BYTES:
        line = encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
    return line


def write_termination_log(path: Path, reason: str) -> None:
    """Best effort: the file exists in a pod; run by hand it usually does not, which is fine."""
    try:
        with open(path, "w") as handle:
            handle.write(reason + "\n")
    except OSError:
        pass


@dataclass(frozen=True, slots=True)
class FactsReading:
    """The model's facts, or why the planner cannot price this model although its files are sound."""

    facts: ModelFacts | None
    error: str | None = None


def read_facts(model_dir: Path) -> FactsReading:
    """config.json + safetensors headers of what is now on disk.

    An architecture or quantisation the planner does not know is not a broken download: the
    cache completes and says why no profile can be chosen. Unreadable or malformed files are.
    """
    try:
        return FactsReading(facts_from_directory(model_dir))
    except (UnsupportedModel, UnsupportedQuantization) as exc:
        log.warning("the weights are cached, but no profile can be selected for them: %s", exc)
        return FactsReading(None, str(exc))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"cannot read the model's facts from {model_dir}: {exc}") from exc


def run_size(config: PrefetchConfig, reporter: Reporter) -> str:
    source = open_source(config, RetryPolicy(config.max_attempts, config.retry_backoff_s))
    listing = source.list_files()
    revision = f" at revision {listing.revision}" if listing.revision else ""
    summary = f"{source.describe()}{revision}: {len(listing.files)} files, {listing.total_bytes} bytes"
    log.info("%s", summary)
    reporter.final(size_status(config.content_hash, listing.total_bytes, listing.revision))
    return summary


def run_check(config: PrefetchConfig, reporter: Reporter) -> str:
    """List the source with the credentials (what a download would do first, and nothing more)
    and report whether they were accepted. A refusal is reported and fails the run; a source
    that cannot be reached says nothing about the credentials (valid: null)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = open_source(config, RetryPolicy(config.max_attempts, config.retry_backoff_s))
    try:
        listing = source.list_files()
    except AuthError as exc:
        reporter.final(credentials_status(False, reporter.redactor(str(exc)), now))
        raise
    except PrefetchError as exc:
        reporter.final(
            credentials_status(None, reporter.redactor(f"could not check the credentials: {exc}"), now)
        )
        raise
    summary = f"credentials accepted: {source.describe()} listed ({len(listing.files)} files)"
    reporter.final(credentials_status(True, summary, now))
    return summary


def _prune(layout: CacheLayout, journal: Journal, stale: set[str]) -> None:
    """Delete files this cache held for an earlier listing (another revision) that are no longer listed."""
    removed = set()
    for path in sorted(stale):
        try:
            relative = safe_relative_path(path, "manifest")
        except PrefetchError:
            continue
        try:
            layout.final_path(relative).unlink()
            log.info("removed %s (not in the current listing)", relative)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise classify_os_error(exc, layout.final_path(relative)) from exc
        removed.add(path)
    if removed:
        journal.forget(removed)


def _report_done(
    config: PrefetchConfig, reporter: Reporter, listing: Listing, facts: FactsReading, progress: Progress
) -> None:
    reporter.final(
        final_status(
            config.content_hash, listing.total_bytes, listing.revision, facts.facts, progress, facts.error
        )
    )


def _download(
    config: PrefetchConfig,
    source: Source,
    listing: Listing,
    layout: CacheLayout,
    progress: ProgressCounter,
    reporter: Reporter,
    previous: CacheManifest | None,
) -> dict[str, str | None]:
    """Fetch what the journal does not already hold, then prune files of an earlier listing."""
    journal = Journal(layout.journal)
    plan = plan_downloads(listing.files, layout, journal)
    for stale_part in layout.stale_parts({layout.part_path(f) for f in plan.todo}):
        stale_part.unlink(missing_ok=True)
    for file in listing.files:
        if file.path in plan.complete:
            progress.already_done(file.size, whole_file=True)
    progress.already_done(plan.resumable_bytes, whole_file=False)
    needed = sum(f.size for f in plan.todo) - plan.resumable_bytes
    free = free_bytes(layout.root)
    if needed > free:
        raise NoSpaceError(layout.root, needed, free)
    if plan.complete:
        log.info("%d files already verified by an earlier run", len(plan.complete))
    reporter.progress(progress.snapshot())
    retry = RetryPolicy(config.max_attempts, config.retry_backoff_s)
    downloader = Downloader(source, layout, journal, progress, retry, config.parallel)
    with ProgressTicker(progress, reporter.progress, config.progress_interval_s):
        fetched = downloader.run(plan.todo)
    listed = {f.path for f in listing.files}
    earlier = {f.path for f in previous.files} if previous is not None else set()
    _prune(layout, journal, (earlier | set(journal.entries)) - listed)
    return {**plan.complete, **fetched}


def run_verify_in_place(config: PrefetchConfig, reporter: Reporter, source: PvcSource) -> str:
    """pvc://: verify the weights where they are and report; write nothing to the claim.

    The claim is the user's (often read-only, shared by other tools): no manifest, journal or
    probe file goes there. The status carries the verdict, and the serving runtime checks the
    files in place again before it starts (INFERATOR_CACHE_CHECK=in-place).
    """
    listing = source.list_files()
    files_total = len(listing.files)
    log.info("%s: %d files, %d bytes", source.describe(), files_total, listing.total_bytes)
    progress = ProgressCounter(listing.total_bytes, files_total)
    for file in listing.files:
        check_safetensors(file.path, source.dest / file.path)
        progress.already_done(file.size, whole_file=True)
    facts = read_facts(source.model_dir)
    _report_done(config, reporter, listing, facts, progress.snapshot(final=True))
    return f"verified in place: {files_total} files, {listing.total_bytes} bytes"


def run_fetch(config: PrefetchConfig, reporter: Reporter) -> str:
    source = open_source(config, RetryPolicy(config.max_attempts, config.retry_backoff_s))
    if isinstance(source, PvcSource):
        return run_verify_in_place(config, reporter, source)
    layout = CacheLayout(config.dest)
    layout.prepare()
    listing = source.list_files()
    files_total = len(listing.files)
    model_dir = layout.root
    revision = f", revision {listing.revision}" if listing.revision else ""
    log.info("%s: %d files, %d bytes%s", source.describe(), files_total, listing.total_bytes, revision)

    existing = read_manifest(layout)
    if existing is not None and manifest_matches(existing, config.source, listing):
        wrong = files_on_disk_match(existing, layout)
        if not wrong:
            facts = FactsReading(existing.model) if existing.model else read_facts(model_dir)
            done = Progress(
                bytes_done=listing.total_bytes, bytes_total=listing.total_bytes,
                files_done=files_total, files_total=files_total,
            )  # fmt: skip
            _report_done(config, reporter, listing, facts, done)
            return f"already complete: {files_total} files, {listing.total_bytes} bytes{revision}"
        log.warning(
            "the manifest matches but %d files differ on disk (%s): fetching them", len(wrong), wrong[0]
        )
    if existing is not None:
        layout.remove_manifest()  # from here on the cache changes: not complete until a new manifest

    progress = ProgressCounter(listing.total_bytes, files_total)
    sha256s = _download(config, source, listing, layout, progress, reporter, existing)

    facts = read_facts(model_dir)
    write_manifest(layout, build_manifest(config.source, listing, sha256s, facts.facts))
    final = progress.snapshot(final=True)
    _report_done(config, reporter, listing, facts, final)
    rate = f", {final.bytes_per_second / 1e6:.1f} MB/s" if final.bytes_per_second else ""
    return f"complete: {files_total} files, {listing.total_bytes} bytes{revision}{rate}"


def execute(config: PrefetchConfig, sink: StatusSink, redactor: Redactor) -> int:
    """Run one prefetch; the exit code. Every failure leaves a one-line, secret-free reason."""
    reporter = Reporter(sink, redactor)
    try:
        runs = {"size": run_size, "check": run_check, "fetch": run_fetch}
        summary = runs[config.mode](config, reporter)
    except PrefetchError as exc:
        code, reason = exc.exit_code, str(exc)
    except OSError as exc:
        error = classify_os_error(exc, config.dest)
        code, reason = error.exit_code, str(error)
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        code, reason = EXIT_RETRYABLE, f"unexpected error: {type(exc).__name__}: {exc}"
    else:
        log.info("%s", summary)
        write_termination_log(config.termination_log, one_line(redactor(summary)))
        return EXIT_OK
    reason = one_line(redactor(reason))
    log.error("prefetch failed (exit %d): %s", code, reason)
    write_termination_log(config.termination_log, reason)
    return code


def main(argv: list[str]) -> int:
    config = load_config(argv, os.environ)
    redactor = Redactor(config.credentials.values())
    setup_logging(redactor)
    sink: StatusSink
    if config.modelcache:
        if not config.namespace:
            log.error("INFERATOR_MODELCACHE is set but INFERATOR_NAMESPACE is not")
            return EXIT_RETRYABLE
        sink = KubernetesStatusSink(config.modelcache, config.namespace)
    else:
        sink = StdoutSink()
    return execute(config, sink, redactor)
