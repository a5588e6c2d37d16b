"""One queued request as flow control sees it, and how its wait can end.

Outcomes and their answers follow upstream (``pkg/common/error/error.go``, the flow-control
``QueueOutcome``): the HTTP status, the ``x-llm-d-request-dropped-reason`` value and the
``outcome`` label of ``flow_control_requests_total`` / ``request_queue_duration_seconds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

DROPPED_REASON_HEADER = "x-llm-d-request-dropped-reason"


class QueueOutcome(Enum):
    """``(metric label, HTTP status, dropped reason)``; ``None`` status = dispatched."""

    DISPATCHED = ("Dispatched", None, None)
    REJECTED_CAPACITY = ("RejectedCapacity", 429, "rejected-saturated")
    REJECTED_NO_ENDPOINTS = ("RejectedNoEndpoints", 503, "rejected-no-endpoints")
    EVICTED_TTL = ("EvictedTTL", 429, "rejected-ttl-expired")
    EVICTED_NO_ENDPOINTS = ("EvictedNoEndpoints", 503, "rejected-no-endpoints")
    EVICTED_CONTEXT_CANCELLED = ("EvictedContextCancelled", 503, "rejected-context-cancelled")
    EVICTED_SHUTDOWN = ("EvictedOther", 503, "rejected-shutting-down")
    # Displaced from a full band by a request of a smaller flow (longest-queue drop); the
    # reason is the one upstream reserves for queue-pressure eviction.
    EVICTED_QUEUE_PRESSURE = ("EvictedOther", 429, "evicted-queue-pressure")

    @property
    def label(self) -> str:
        return str(self.value[0])

    @property
    def http_status(self) -> int | None:
        status: int | None = self.value[1]
        return status

    @property
    def dropped_reason(self) -> str | None:
        reason: str | None = self.value[2]
        return reason


MESSAGES: dict[QueueOutcome, str] = {
    QueueOutcome.REJECTED_CAPACITY: "flow control queue capacity exceeded",
    QueueOutcome.REJECTED_NO_ENDPOINTS: "no endpoints available for the request",
    QueueOutcome.EVICTED_TTL: "request timed out in queue",
    QueueOutcome.EVICTED_NO_ENDPOINTS: "request timed out in queue waiting for endpoints",
    QueueOutcome.EVICTED_CONTEXT_CANCELLED: "client disconnected",
    QueueOutcome.EVICTED_SHUTDOWN: "flow controller is shutting down",
    QueueOutcome.EVICTED_QUEUE_PRESSURE: (
        "flow control queue full: displaced by a request of a flow with fewer queued requests"
    ),
}


@dataclass(eq=False, slots=True)
class QueueItem:
    """A request waiting for dispatch. ``payload`` is the shell's (opaque here).

    ``expires_at`` is the TTL deadline (``inf`` = none); ``slo_deadline`` the receive time plus
    the request's TTFT SLO (``inf`` without the header). ``tokens`` weigh attained service in
    ``program-aware-fairness``: prompt tokens plus expected output tokens.
    """

    request_id: str
    priority: int
    fairness_id: str
    size_bytes: int
    enqueued_at: float
    expires_at: float = math.inf
    slo_deadline: float = math.inf
    prompt_tokens: int = 0
    output_tokens: int = 0
    model_name: str = ""
    target_model_name: str = ""
    payload: Any = None
    seq: int = 0
    outcome: QueueOutcome | None = field(default=None)

    @property
    def queued(self) -> bool:
        return self.outcome is None
