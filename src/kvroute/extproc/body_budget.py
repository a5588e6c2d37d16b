"""A process-wide budget for request body bytes the EPP holds (issue 20 finding 8).

Each ext_proc stream buffers its request body whole before routing (the body decides the
route). ``--max-request-body-bytes`` bounds one body; nothing bounded them together: 8
concurrent 60 MB uploads took the EPP from 212 MB to 1.1 GB. Streams take bytes from one shared
:class:`BodyBudget` as chunks arrive and give them back once the body is routed, rejected or the
stream ends. A stream that cannot take a chunk stops keeping its body (it is counted and dropped,
as an oversized one) and is answered 503 at the body's end; single-threaded asyncio, so plain
integers suffice.
"""

from __future__ import annotations

from kvroute.config.extproc_options import DEFAULT_MAX_BUFFERED_BODY_BYTES


class BodyBudget:
    """``take(n)`` reserves bytes if they fit; ``give(n)`` returns them."""

    __slots__ = ("in_use", "limit", "peak")

    def __init__(self, limit: int = DEFAULT_MAX_BUFFERED_BODY_BYTES) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        if self.in_use + n > self.limit:
            return False
        self.in_use += n
        self.peak = max(self.peak, self.in_use)
        return True

    def give(self, n: int) -> None:
        self.in_use = max(0, self.in_use - n)
