"""API keys and token quotas.

Keys are looked up by their SHA-256 digest, so the process keeps no key in a dict it could log
and the lookup time does not depend on how much of a wrong key matches. Files are re-read when
they change (the kubelet swaps a mounted Secret's files when the Secret is edited), checked at
most every few seconds so a request never pays for a stat per key.

Quotas count tokens the engine reported (usage in the answer, streaming included) in fixed
windows (the current minute, the current UTC day). A request is admitted while the key's window
has tokens left, so one request may overshoot by its own size; the next is refused with a
`Retry-After` that says when the window turns. With several gateway replicas each enforces an
equal share of the limit (the Service spreads connections): no shared store to run or lose.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from inferator.gateway.config import KeyPolicy

RELOAD_EVERY_S = 5.0


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass
class KeyRing:
    """The keys a gateway accepts; a key whose file is missing or empty is simply not accepted."""

    policies: list[KeyPolicy]
    _by_digest: dict[bytes, KeyPolicy] = field(default_factory=dict)
    _stamps: dict[str, float] = field(default_factory=dict)
    _checked: float = -math.inf

    def lookup(self, presented: str | None, now: float | None = None) -> KeyPolicy | None:
        now = time.monotonic() if now is None else now
        if now - self._checked >= RELOAD_EVERY_S:
            self._checked = now
            self._reload_if_changed()
        if not presented:
            return None
        return self._by_digest.get(digest(presented))

    def _reload_if_changed(self) -> None:
        stamps = {p.file: _mtime(p.file) for p in self.policies}
        if stamps == self._stamps and self._by_digest:
            return
        self._stamps = stamps
        by_digest: dict[bytes, KeyPolicy] = {}
        for policy in self.policies:
            try:
                key = Path(policy.file).read_text().strip()
            except OSError:
                continue
            if key:
                by_digest[digest(key)] = policy
        self._by_digest = by_digest


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


@dataclass
class _Window:
    start: float = 0.0
    used: int = 0


@dataclass
class Quotas:
    """Tokens used per key in the current minute and day, against each key's share of its limits."""

    replicas: int = 1
    _minute: dict[str, _Window] = field(default_factory=dict)
    _day: dict[str, _Window] = field(default_factory=dict)

    def _share(self, limit: int | None) -> int | None:
        return None if limit is None else max(1, math.ceil(limit / self.replicas))

    def retry_after(self, policy: KeyPolicy, now: float | None = None) -> int | None:
        """Seconds until the key may send again, or None when it may send now."""
        now = time.time() if now is None else now
        for windows, length, limit in (
            (self._minute, 60, self._share(policy.tokens_per_minute)),
            (self._day, 86_400, self._share(policy.tokens_per_day)),
        ):
            if limit is None:
                continue
            window = _current(windows, policy.id, length, now)
            if window.used >= limit:
                return max(1, math.ceil(window.start + length - now))
        return None

    def charge(self, policy: KeyPolicy, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        for windows, length in ((self._minute, 60), (self._day, 86_400)):
            _current(windows, policy.id, length, now).used += tokens


def _current(windows: dict[str, _Window], key_id: str, length: int, now: float) -> _Window:
    start = now - (now % length)
    window = windows.get(key_id)
    if window is None or window.start != start:
        window = windows[key_id] = _Window(start=start)
    return window
