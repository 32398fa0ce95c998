"""The per-file journal: which files a previous (killed) run already verified and renamed into place.

One JSON object a line in `.inferator/journal.jsonl`, appended and fsynced after each rename,
so a restarted pod trusts a file only when it was verified as the same remote object
(`identity`) and still has its size. The journal is never the "complete" mark: the manifest is.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from inferator.prefetch.sources.listing import RemoteFile

JOURNAL_NAME = "journal.jsonl"


@dataclass(frozen=True)
class JournalEntry:
    path: str
    size: int
    identity: str
    sha256: str | None  # what we computed while downloading (None for files verified in place)


class Journal:
    """Append-only record of completed files; the last entry for a path wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.entries: dict[str, JournalEntry] = {}
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                raw = json.loads(line)
                entry = JournalEntry(
                    str(raw["path"]), int(raw["size"]), str(raw["identity"]), raw.get("sha256")
                )
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill: ignore it, the file is fetched again
            self.entries[entry.path] = entry

    def is_complete(self, file: RemoteFile, final_path: Path) -> JournalEntry | None:
        """The entry proving `file` is already in place, or None."""
        entry = self.entries.get(file.path)
        if entry is None or entry.identity != file.identity or entry.size != file.size:
            return None
        if file.sha256 and entry.sha256 and entry.sha256 != file.sha256.lower():
            return None
        try:
            if final_path.stat().st_size != file.size:
                return None
        except OSError:
            return None
        return entry

    def record(self, entry: JournalEntry) -> None:
        line = json.dumps(asdict(entry), separators=(",", ":")) + "\n"
        with self._lock:
            with open(self.path, "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self.entries[entry.path] = entry

    def forget(self, paths: set[str]) -> None:
        """Rewrite without `paths` (files pruned after a revision change)."""
        with self._lock:
            for p in paths:
                self.entries.pop(p, None)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                "".join(json.dumps(asdict(e), separators=(",", ":")) + "\n" for e in self.entries.values())
            )
            os.replace(tmp, self.path)
