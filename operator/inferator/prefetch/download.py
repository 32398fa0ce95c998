"""Parallel, resumable, verified downloads into the cache.

Each file streams into `.inferator/tmp/<key>-<name>.part` in large chunks, hashed as it
arrives; a transfer that fails part-way (reset, stall, 5xx) is resumed from the bytes
already on disk with a ranged request, after an exponential backoff, until `max_attempts`
consecutive attempts made no progress. A complete file is verified (verify.py), fsynced,
renamed into place and recorded in the journal. Files are fetched largest first, so the
long shards start early and the small files fill the gaps.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from inferator.prefetch.errors import PrefetchError, TransientError, VerificationError, classify_os_error
from inferator.prefetch.journal import Journal, JournalEntry
from inferator.prefetch.layout import CacheLayout, fsync_dir
from inferator.prefetch.progress import ProgressCounter
from inferator.prefetch.retry import RetryPolicy
from inferator.prefetch.sources.listing import ByteStream, RemoteFile, Source
from inferator.prefetch.verify import StreamingDigest, verify_file

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20  # large reads and writes: few syscalls and GIL round-trips per GiB
# Start writing dirty pages back every this many bytes, so the fsync before the rename finds
# little left to do, and a 100 GiB model does not evict the node's page cache as it lands.
WRITEBACK_BYTES = 64 << 20


class Stopped(PrefetchError):
    """Another worker failed; this one stops without adding an error of its own."""


@dataclass(frozen=True)
class Plan:
    """What is already in place (with its sha256 when known) and what is left to fetch."""

    complete: dict[str, str | None]
    todo: tuple[RemoteFile, ...]
    resumable_bytes: int  # bytes of .part files that will be resumed


def plan_downloads(files: tuple[RemoteFile, ...], layout: CacheLayout, journal: Journal) -> Plan:
    """Split the listing into files already verified (journal + size on disk) and files to fetch."""
    complete: dict[str, str | None] = {}
    todo = []
    resumable = 0
    for file in files:
        entry = journal.is_complete(file, layout.final_path(file.path))
        if entry is not None:
            complete[file.path] = entry.sha256
            continue
        todo.append(file)
        part = layout.part_path(file)
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            size = 0
        resumable += size if size <= file.size else 0
    return Plan(complete, tuple(todo), resumable)


class Downloader:
    """Fetches files from one source into one cache with `parallel` workers."""

    def __init__(
        self,
        source: Source,
        layout: CacheLayout,
        journal: Journal,
        progress: ProgressCounter,
        retry: RetryPolicy,
        parallel: int,
    ) -> None:
        self.source = source
        self.layout = layout
        self.journal = journal
        self.progress = progress
        self.retry = retry
        self.parallel = parallel
        self.stop = threading.Event()

    def run(self, files: tuple[RemoteFile, ...]) -> dict[str, str | None]:
        """Fetch every file; {path: sha256 or None}. The first real failure stops the others and is raised."""
        results: dict[str, str | None] = {}
        first_error: BaseException | None = None
        ordered = sorted(files, key=lambda f: (-f.size, f.path))
        with ThreadPoolExecutor(max_workers=max(1, self.parallel), thread_name_prefix="prefetch") as pool:
            futures: dict[Future[str | None], RemoteFile] = {pool.submit(self.fetch, f): f for f in ordered}
            for future in as_completed(futures):
                try:
                    results[futures[future].path] = future.result()
                except Stopped:
                    continue
                except BaseException as exc:
                    if first_error is None:
                        first_error = exc
                        self.stop.set()
                        for other in futures:
                            other.cancel()
        if first_error is not None:
            raise first_error
        return results

    def fetch(self, file: RemoteFile) -> str | None:
        """Download, verify and rename one file; its sha256 when the source published one."""
        if self.stop.is_set():
            raise Stopped("stopped")
        part = _Part(self.layout.part_path(file), file)
        self._resume(part)
        resumed = part.offset > 0
        while True:
            self._transfer(part)
            try:
                sha256 = verify_file(file, part.path, part.path.stat().st_size, part.digest)
            except VerificationError as exc:
                if resumed:
                    # The bytes kept from an earlier attempt may be the bad ones: one clean try.
                    log.warning("%s; fetching %s again from the start", exc, file.path)
                    self._restart(part)
                    resumed = False
                    continue
                part.path.unlink(missing_ok=True)  # never renamed into place, never resumed
                raise
            break
        final = self.layout.final_path(file.path)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part.path, final)
        except OSError as exc:
            raise classify_os_error(exc, final, self.progress.remaining_bytes()) from exc
        fsync_dir(final.parent)
        self.journal.record(JournalEntry(file.path, file.size, file.identity, sha256))
        self.progress.file_done()
        checks = ", sha256" if file.sha256 else ", git blob sha1" if file.git_blob_sha1 else ""
        log.info("verified %s (%d bytes%s)", file.path, file.size, checks)
        return sha256

    def _restart(self, part: _Part) -> None:
        """Throw the partial bytes away: the next attempt starts the file from its first byte."""
        self.progress.discard(part.offset)
        part.path.unlink(missing_ok=True)
        part.offset, part.digest = 0, StreamingDigest(part.file)

    def _resume(self, part: _Part) -> None:
        """Take over the bytes of an earlier attempt's .part file (re-hashed: the digest covers the file)."""
        try:
            size = part.path.stat().st_size
        except FileNotFoundError:
            return
        if size > part.file.size:  # not a prefix of this file (and not counted as progress): start over
            part.path.unlink(missing_ok=True)
            return
        part.offset = size
        try:
            part.digest.update_from_file(part.path, size)
        except OSError:
            self._restart(part)
            return
        if size:
            log.info("resuming %s at byte %d of %d", part.file.path, size, part.file.size)

    def _transfer(self, part: _Part) -> None:
        """Bring the .part file to the file's full size, retrying transient failures."""
        file = part.file
        failures = 0
        while part.offset < file.size or not part.path.exists():
            if self.stop.is_set():
                raise Stopped("stopped")
            before = part.offset
            stream: ByteStream | None = None
            try:
                stream = self.source.open(file, part.offset)
                if stream.start != part.offset:  # the server ignored Range: what we have is useless
                    self._restart(part)
                self._copy(stream, part)
            except TransientError as exc:
                failures = 1 if part.offset > before else failures + 1
                if failures >= self.retry.max_attempts:
                    raise PrefetchError(
                        f"{file.path}: giving up after {failures} attempts without progress: {exc}"
                    ) from exc
                if exc.restart:
                    self._restart(part)
                delay = self.retry.delay_s(failures)
                log.warning(
                    "%s: %s (at byte %d of %d); retry %d/%d in %.1fs",
                    file.path, exc, part.offset, file.size, failures, self.retry.max_attempts - 1, delay,
                )  # fmt: skip
                if self.stop.wait(delay):
                    raise Stopped("stopped") from exc
            finally:
                if stream is not None:
                    stream.close()

    def _copy(self, stream: ByteStream, part: _Part) -> None:
        """Append the stream to the .part file until the file's size, advancing `part` as bytes land."""
        size = part.file.size
        try:
            with open(part.path, "ab" if part.offset else "wb", buffering=0) as handle:
                if part.offset:
                    handle.truncate(part.offset)  # a torn last write from a kill: drop what was not counted
                written_back = part.offset
                while part.offset < size:
                    chunk = stream.read(min(CHUNK_BYTES, size - part.offset))
                    if not chunk:
                        raise TransientError(f"connection closed after {part.offset} of {size} bytes")
                    _write_all(handle, chunk)
                    part.digest.update(chunk)
                    part.offset += len(chunk)
                    self.progress.add(len(chunk))
                    if part.offset - written_back >= WRITEBACK_BYTES:
                        _start_writeback(handle, written_back, part.offset - written_back)
                        written_back = part.offset
                    if self.stop.is_set():
                        raise Stopped("stopped")
                os.fsync(handle.fileno())
        except OSError as exc:
            raise classify_os_error(exc, self.layout.root, self.progress.remaining_bytes()) from exc


class _Part:
    """A download in progress: its .part file, how many bytes it holds, and their running digest."""

    def __init__(self, path: Path, file: RemoteFile) -> None:
        self.path = path
        self.file = file
        self.offset = 0
        self.digest = StreamingDigest(file)


def _start_writeback(handle: io.FileIO, offset: int, length: int) -> None:
    """POSIX_FADV_DONTNEED starts asynchronous writeback of the range (and drops it once clean)."""
    with contextlib.suppress(OSError, AttributeError):  # an optimisation only: not every filesystem has it
        os.posix_fadvise(handle.fileno(), offset, length, os.POSIX_FADV_DONTNEED)


def _write_all(handle: io.FileIO, data: bytes) -> None:
    """Unbuffered writes may be short (a nearly full disk): loop until all is written or it raises."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
