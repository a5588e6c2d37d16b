"""Incremental usage extraction from a ``text/event-stream`` response (sans-IO).

Feed the body chunk by chunk as it streams; chunks may split lines anywhere, ``\\r\\n`` and
``\\n`` line ends are accepted. Only ``data:`` lines that contain a ``"usage"`` key followed by
an object (not ``null``, which OpenAI-style streams send on every chunk when
``include_usage`` is set) are decoded, ``[DONE]`` is skipped, and the first usage found wins;
after that, chunks are not looked at any more. Only the unfinished last line of a chunk is
kept between calls, so memory is bounded by the longest line.
"""

from __future__ import annotations

import json
import re

from kvroute.framework.request import Usage
from kvroute.protocol.usage import usage_from_event

__all__ = ["SseUsageParser"]

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


class SseUsageParser:
    """Find the first usage report in an SSE stream fed in arbitrary chunks."""

    __slots__ = ("_carry", "_usage")

    def __init__(self) -> None:
        self._carry = b""
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @property
    def done(self) -> bool:
        """True once usage was found; later chunks are ignored."""
        return self._usage is not None

    def feed(self, chunk: bytes) -> Usage | None:
        """Consume one chunk; returns the usage as soon as it is known."""
        if self._usage is not None or not chunk:
            return self._usage
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            return None
        self._carry = data[cut + 1 :]
        if _USAGE_OBJECT.search(data, 0, cut) is not None:
            self._scan(data[:cut])
        return self._usage

    def finish(self) -> Usage | None:
        """End of stream: a last line without a newline still counts."""
        if self._usage is None and self._carry:
            tail, self._carry = self._carry, b""
            if _USAGE_OBJECT.search(tail) is not None:
                self._scan(tail)
        self._carry = b""
        return self._usage

    def _scan(self, block: bytes) -> None:
        for line in block.split(b"\n"):
            if not line.startswith(b"data:") or _USAGE_OBJECT.search(line) is None:
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                event = json.loads(payload)
            except (ValueError, RecursionError):  # garbage from the server: not usage
                continue
            usage = usage_from_event(event)
            if usage is not None:
                self._usage = usage
                return
