"""Exchanges waiting for their response tap report, each until a deadline (sans-IO).

A tap-mode exchange is complete when Envoy's Lua filter reports its response; one whose report
never comes (the client reset the stream, so the filter never ran) is completed as a disconnect
when its wait runs out. Until the fifth round of issue 19 each wait was its own event-loop
timer holding the stream: with ``--transport lua`` (the default of ``kvroute serve``) a
one-hour timer per request, so every routed request, its body included, stayed in memory for
an hour after its report had completed it (6.4 KB per 1 KB-prompt request, 105 KB per 100 KB
prompt: gigabytes per hour at a hundred requests a second), and the loop's timer heap grew by
one entry per request.

:class:`ReportWaits` keeps the deadlines instead, one insertion-ordered dict per wait length.
With one length per dict, insertion order is deadline order, so adding and forgetting an id
are O(1) and the due ones are popped from the front; the shell (``ExternalProcessor``) arms one
loop timer for the earliest deadline of all.
"""

from __future__ import annotations

__all__ = ["ReportWaits"]


class ReportWaits:
    def __init__(self) -> None:
        self._by_ttl: dict[float, dict[str, float]] = {}  # wait length -> {id: deadline}
        self._ttl_of: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._ttl_of)

    def __contains__(self, key: object) -> bool:
        return key in self._ttl_of

    def add(self, key: str, ttl_s: float, now: float) -> float:
        """Wait for ``key`` until ``now + ttl_s`` (a key already waiting is moved to the new
        deadline); returns the deadline."""
        self.discard(key)
        deadline = now + ttl_s
        queue = self._by_ttl.get(ttl_s)
        if queue is None:
            queue = self._by_ttl[ttl_s] = {}
        queue[key] = deadline
        self._ttl_of[key] = ttl_s
        return deadline

    def discard(self, key: str) -> None:
        """Forget ``key`` (its report came); no-op when it is not waiting."""
        ttl = self._ttl_of.pop(key, None)
        if ttl is not None:
            del self._by_ttl[ttl][key]

    def pop_due(self, now: float) -> list[str]:
        """The keys whose deadline is at or before ``now``, forgotten, earliest first within
        each wait length."""
        due: list[str] = []
        for queue in self._by_ttl.values():
            while queue:
                key, deadline = next(iter(queue.items()))
                if deadline > now:
                    break
                del queue[key]
                del self._ttl_of[key]
                due.append(key)
        return due

    def next_deadline(self) -> float | None:
        """The earliest deadline still waiting, None when nothing waits."""
        heads = [next(iter(q.values())) for q in self._by_ttl.values() if q]
        return min(heads) if heads else None
