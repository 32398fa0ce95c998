"""Token usage read from what the engine answered: the count quotas and the audit line use.

Streams are forwarded event by event as they arrive (never held to the end); only events that
mention `usage` are parsed. The gateway asks the engine for a final usage event
(`stream_options.include_usage`) when the client did not, and then drops that one event so the
client sees the stream it asked for.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

_USAGE = b'"usage"'
_MAX_PENDING = 64 * 1024


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reported: bool = False

    @property
    def charged(self) -> int:
        return self.total_tokens or (self.prompt_tokens + self.completion_tokens)

    def take(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.reported = True
        self.prompt_tokens = _int(usage.get("prompt_tokens"))
        self.completion_tokens = _int(usage.get("completion_tokens"))
        self.total_tokens = _int(usage.get("total_tokens"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def from_body(body: bytes) -> Usage:
    usage = Usage()
    if _USAGE in body:
        with contextlib.suppress(ValueError, AttributeError):
            usage.take(json.loads(body).get("usage"))
    return usage


def ask_for_usage(payload: dict[str, Any]) -> bool:
    """Make a streaming request report usage at its end; True when the client had not asked."""
    if not payload.get("stream"):
        return False
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return False
    payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


class EventStream:
    """Splits a server-sent-event stream into whole events, reading usage on the way."""

    def __init__(self, drop_usage_event: bool) -> None:
        self.usage = Usage()
        self.events = 0
        self._drop = drop_usage_event
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """The whole events in `chunk` (plus what was pending), to forward now."""
        data = self._tail + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) > _MAX_PENDING:  # not the "\n\n"-framed stream expected: pass it on as is
                self._tail = b""
                return data
            self._tail = data
            return b""
        self._tail = data[end + 2 :]
        complete = data[: end + 2]
        if _USAGE not in complete:
            self.events += complete.count(b"\n\n")
            return complete
        out = []
        for event in complete.split(b"\n\n")[:-1]:
            if self._read(event):
                out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail

    def _read(self, event: bytes) -> bool:
        """Reads one event; False when it is the usage event the client did not ask for."""
        self.events += 1
        if _USAGE not in event:
            return True
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                message = json.loads(line[5:])
            except ValueError:
                return True
            if not isinstance(message, dict):
                return True
            self.usage.take(message.get("usage"))
            if self._drop and not message.get("choices"):
                return False
        return True
