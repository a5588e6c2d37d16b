"""Request header names the EPP reads, current and legacy, as llm-d-router's ``metadata/consts.go``.

llm-d-router v0.10 renamed the control headers to ``x-llm-d-*`` and keeps the GIE-era names as
aliases. :func:`read_aliased` reads the new name first and falls back to the old one; when a
request carries both with different values the new one wins and the conflict is logged at
DEBUG. Both names of every aliased header (and the other EPP-owned request headers in
:data:`STRIPPED_REQUEST_HEADERS`) are removed before the request is forwarded, as upstream's
``util/request/headers.go``. Header keys are lower-case, as the ext_proc stream delivers them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ALIASED_HEADERS",
    "FAIRNESS_ID",
    "MODEL_REWRITE",
    "OBJECTIVE",
    "SLO_TPOT",
    "SLO_TTFT",
    "STRIPPED_REQUEST_HEADERS",
    "AliasedHeader",
    "read_aliased",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AliasedHeader:
    """One control header: the current name and the legacy alias it still answers to."""

    name: str
    alias: str

    @property
    def names(self) -> tuple[str, str]:
        return (self.name, self.alias)


OBJECTIVE = AliasedHeader("x-llm-d-inference-objective", "x-gateway-inference-objective")
FAIRNESS_ID = AliasedHeader("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
MODEL_REWRITE = AliasedHeader("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite")
SLO_TTFT = AliasedHeader("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
SLO_TPOT = AliasedHeader("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms")
ALIASED_HEADERS = (OBJECTIVE, FAIRNESS_ID, MODEL_REWRITE, SLO_TTFT, SLO_TPOT)

VIDEO_HEADERS = (
    "x-llm-d-video-fps",
    "x-llm-d-video-duration-seconds",
    "x-llm-d-video-resolution",
)
DROPPED_REASON_HEADER = "x-llm-d-request-dropped-reason"

# Client-sent copies the EPP never forwards (the destination headers are added by the stream).
STRIPPED_REQUEST_HEADERS: tuple[str, ...] = (
    *(n for h in ALIASED_HEADERS for n in h.names),
    *VIDEO_HEADERS,
    DROPPED_REASON_HEADER,
)


def read_aliased(headers: Mapping[str, str], header: AliasedHeader) -> str | None:
    """The header's value, new name first; ``None`` when neither name has a non-empty value."""
    current = headers.get(header.name)
    legacy = headers.get(header.alias)
    if current:
        if legacy and legacy != current:
            log.debug(
                "both %s=%r and its alias %s=%r are set; using %s",
                header.name,
                current,
                header.alias,
                legacy,
                header.name,
            )
        return current
    return legacy or None
