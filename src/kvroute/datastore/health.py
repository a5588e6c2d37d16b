"""Passive health of endpoints, from the responses the EPP sees (issue 20 finding 5).

Envoy's outlier detection ejects a failing host from its own load balancing, but the
``override_host`` policy kvroute's gateway uses does not consult host health: an endpoint the
EPP names is used even while Envoy has it ejected (Envoy 1.40, ``override_host``
``load_balancer.cc``: "TODO: Validate that host health status did not change"). So the EPP keeps
its own record and stops naming an endpoint that keeps failing.

A failure is a 5xx answered by the endpoint, or a response served by *another* endpoint than the
one picked first (Envoy retried away from it before its first byte: connect failure, reset,
first-byte timeout, 5xx). A success (status < 500 from the picked endpoint) clears the record.
``threshold`` consecutive failures eject the endpoint for ``base_ejection_s``, doubling per
repeated ejection up to ``max_ejection_s``; when the time is up it is routable again, and one
more failure ejects it at once. Each ejection and each recovery is logged once at WARNING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Record:
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class PassiveHealth:
    """Consecutive-failure ejection per ``host:port``; see the module docstring."""

    __slots__ = ("_clock", "_records", "base_ejection_s", "max_ejection_s", "threshold")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        threshold: int = 3,
        base_ejection_s: float = 10.0,
        max_ejection_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self.threshold = threshold
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s

    def failure(self, hostport: str, reason: str) -> None:
        rec = self._records.setdefault(hostport, _Record())
        rec.failures += 1
        now = self._clock()
        if rec.failures < self.threshold or now < rec.ejected_until:
            return
        rec.ejections += 1
        seconds = min(self.max_ejection_s, self.base_ejection_s * 2 ** (rec.ejections - 1))
        rec.ejected_until = now + seconds
        log.warning(
            "endpoint %s taken out of rotation for %gs after %d consecutive failures (last: %s)",
            hostport,
            seconds,
            rec.failures,
            reason,
        )

    def success(self, hostport: str) -> None:
        rec = self._records.pop(hostport, None)
        if rec is not None and rec.ejections:
            log.warning("endpoint %s answered again; back in rotation", hostport)

    def all_routable(self) -> bool:
        """No ejection is in force (the common case: the caller can skip per-endpoint checks)."""
        records = self._records
        if not records:
            return True
        now = self._clock()
        return all(now >= rec.ejected_until for rec in records.values())

    def routable(self, hostport: str) -> bool:
        rec = self._records.get(hostport)
        return rec is None or self._clock() >= rec.ejected_until

    def forget(self, hostport: str) -> None:
        self._records.pop(hostport, None)
