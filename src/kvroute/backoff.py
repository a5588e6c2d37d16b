"""Exponential backoff with full jitter, the one retry policy of kvroute's supervisor loops.

``delay(n)`` for the ``n``-th consecutive failure (0-based) is drawn uniformly from
``[minimum, cap(n)]`` with ``cap(n) = min(maximum, initial * factor**n)``: "full jitter" (AWS
Architecture Blog, "Exponential Backoff And Jitter"), so replicas that failed together do not
retry together. ``minimum`` defaults to 0; a poller sets it to its normal interval so that a
failing peer is never polled faster than a healthy one. A success resets the count
(:meth:`Retries.reset`).

Used by the Kubernetes reflector (relist after a failed list/watch), the metrics scraper (next
scrape after a failed one) and leader election (a candidate's jittered acquire period, with
``factor=1``). No kvroute imports: any layer may use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "Retries"]

_MAX_EXPONENT = 60  # caps the exponent too, so a long outage cannot overflow the float


@dataclass(frozen=True, slots=True)
class Backoff:
    """The policy: ``uniform(minimum, min(maximum, initial * factor**n))`` seconds."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    minimum: float = 0.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.minimum <= self.initial:
            raise ValueError(f"backoff needs 0 <= minimum <= initial, got {self}")

    def cap(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures (the jitter's bound)."""
        exponent = min(max(failures, 0), _MAX_EXPONENT)
        return min(self.maximum, self.initial * self.factor**exponent)

    def delay(self, failures: int) -> float:
        """A jittered delay in ``[minimum, cap(failures)]``."""
        return self.rng.uniform(self.minimum, self.cap(failures))

    def retries(self) -> Retries:
        """A fresh failure counter following this policy."""
        return Retries(self)


class Retries:
    """Counts consecutive failures of one loop: :meth:`failed` -> delay, :meth:`reset`."""

    __slots__ = ("failures", "policy")

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.failures = 0

    def failed(self) -> float:
        """Record a failure; the delay to wait before the next attempt."""
        delay = self.policy.delay(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits as little as the first did."""
        self.failures = 0
