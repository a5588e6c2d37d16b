"""Rewrite the response's ``"model":"<target>"`` back to what the client asked for (sans-IO).

The model server answers with the model it was sent (the target after InferenceModel /
rewrite); the client must see its own name. Like upstream's ``rewriteModelName`` this is a
byte replacement of ``"model":"<target>"`` and ``"model": "<target>"`` (one space, as Python's
``json.dumps`` writes it), not a re-serialization, so it can run on every streamed chunk.

A pattern may straddle two chunks. The rewriter holds back only a chunk tail that is a proper
prefix of a pattern (normally nothing: SSE events end in ``\\n\\n``), so streamed events are
not delayed; call :meth:`ModelNameRewriter.feed` with ``end=True`` (or :meth:`flush`) on the
last chunk to release what is held.
"""

from __future__ import annotations

import json

__all__ = ["ModelNameRewriter"]


class ModelNameRewriter:
    """Replace ``target`` with ``incoming`` in ``"model"`` fields of a chunked body."""

    __slots__ = ("_carry", "_needle", "_patterns", "_window")

    def __init__(self, target: str, incoming: str) -> None:
        enc_target = json.dumps(target, ensure_ascii=False).encode()
        enc_incoming = json.dumps(incoming, ensure_ascii=False).encode()
        self._patterns: tuple[tuple[bytes, bytes], ...] = (
            (b'"model":' + enc_target, b'"model":' + enc_incoming),
            (b'"model": ' + enc_target, b'"model": ' + enc_incoming),
        )
        self._needle = enc_target if target != incoming else b""
        self._window = max(len(p) for p, _ in self._patterns) - 1
        self._carry = b""

    @property
    def active(self) -> bool:
        """False when target and incoming are equal: chunks pass through untouched."""
        return bool(self._needle)

    def feed(self, chunk: bytes, end: bool = False) -> bytes:
        """Rewrite one chunk; the result may be shorter or longer than ``chunk``."""
        if not self._needle:
            return chunk
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        # Replace complete matches first, then hold back a tail that may start one: holding
        # first could cut a complete match whose closing quote looks like a new beginning.
        if self._needle in data:
            for old, new in self._patterns:
                data = data.replace(old, new)
        if not end:
            hold = self._holdback(data)
            if hold < len(data):
                self._carry = data[hold:]
                data = data[:hold]
        return data

    def flush(self) -> bytes:
        """Whatever is still held back (call at end of stream if the last feed had no end)."""
        return self.feed(b"", end=True)

    def _holdback(self, data: bytes) -> int:
        """Start of the shortest-possible held tail: a proper prefix of some pattern."""
        n = len(data)
        lo = max(0, n - self._window)
        q = data.find(b'"', lo)
        while q >= 0:
            tail = data[q:]
            for pattern, _ in self._patterns:
                if len(tail) < len(pattern) and pattern.startswith(tail):
                    return q
            q = data.find(b'"', q + 1)
        return n
