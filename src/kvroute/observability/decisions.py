"""Recent decisions and completions, kept for the live pool page (and ``kvroute top``).

:class:`DecisionLog` is a pair of bounded deques. Decisions (the per-plugin explanation of the
scheduling cycle, :func:`kvroute.observability.explain.summarize`) cost a traced cycle, so the
director backend records them only while someone watches (``watchers > 0``: an open page's event
stream); completions (TTFT, TPOT, status) are a tuple append and always kept.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Completion:
    at: float  # wall clock (time.time())
    model: str
    status: int | None
    ttft_s: float | None
    tpot_s: float | None


class DecisionLog:
    def __init__(
        self,
        max_decisions: int = 50,
        max_completions: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.decisions: deque[dict[str, Any]] = deque(maxlen=max_decisions)
        self.completions: deque[Completion] = deque(maxlen=max_completions)
        self.watchers = 0
        self.seq = 0
        # Blocks the EPP's prefix index holds for an endpoint (set when a prefix plugin runs).
        self.blocks_held: Callable[[str], int] | None = None
        self._clock = clock

    @property
    def watched(self) -> bool:
        return self.watchers > 0

    def add_decision(self, summary: dict[str, Any]) -> None:
        self.seq += 1
        self.decisions.appendleft({"seq": self.seq, "at": self._clock(), **summary})

    def add_completion(
        self,
        model: str,
        status: int | None,
        ttft_s: float | None,
        elapsed_s: float,
        completion_tokens: int | None,
    ) -> None:
        tpot = None
        if completion_tokens and completion_tokens > 1 and ttft_s is not None:
            tpot = max(0.0, elapsed_s - ttft_s) / (completion_tokens - 1)
        self.completions.append(Completion(self._clock(), model, status, ttft_s, tpot))
