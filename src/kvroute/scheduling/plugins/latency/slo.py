"""Per-request latency SLOs from headers (llm-d-router names first, then the older ones).

``x-llm-d-slo-ttft-ms`` / ``x-llm-d-slo-tpot-ms`` (aliases ``x-slo-ttft-ms`` / ``x-slo-tpot-ms``)
carry float milliseconds. A value that is not a finite positive number is ignored with a debug
log (the request is scheduled as if it had no SLO): a client's bad header is never an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
TPOT_HEADERS = ("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms")


@dataclass(frozen=True, slots=True)
class LatencySlo:
    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def any(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None


NO_SLO = LatencySlo()


def _read(headers: Mapping[str, str], names: tuple[str, ...]) -> float | None:
    for name in names:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            ms = float(raw)
        except ValueError:
            log.debug("ignoring malformed SLO header %s=%r", name, raw)
            return None
        if not math.isfinite(ms) or ms <= 0.0:
            log.debug("ignoring SLO header %s=%r (not a positive number)", name, raw)
            return None
        return ms / 1e3
    return None


def parse_slo(headers: Mapping[str, str]) -> LatencySlo:
    """The request's SLOs in seconds; headers have lowercase keys."""
    ttft = _read(headers, TTFT_HEADERS)
    tpot = _read(headers, TPOT_HEADERS)
    if ttft is None and tpot is None:
        return NO_SLO
    return LatencySlo(ttft, tpot)
