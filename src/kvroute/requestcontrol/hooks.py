"""Request-lifecycle extension points around the scheduling cycle (upstream requestcontrol).

The director calls them in this order for every request:
``PrepareData`` (before scheduling, may write into the CycleState) -> scheduling ->
``PreRequest`` (the target is known; e.g. prefix-index insert, in-flight increment) ->
``ResponseComplete`` (exactly once per scheduled request, also when the client disconnected).
All are synchronous and must be cheap: they run on the event loop in the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import Plugin
from kvroute.scheduling.interfaces import CycleState, SchedulingResult
from kvroute.scheduling.request import InferenceRequest


@dataclass(frozen=True, slots=True)
class Usage:
    """What the response reported, plus when its first chunk arrived.

    ``first_token_at`` is the director's clock (``time.monotonic`` live, virtual in the bench)
    when the first response body chunk passed the EPP; ``None`` when it was not observed (the
    response body is not processed, or no chunk arrived). The latency predictor learns TTFT
    from it.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None


class PrepareData(Plugin, Protocol):
    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None: ...


class PreRequest(Plugin, Protocol):
    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None: ...


class ResponseComplete(Plugin, Protocol):
    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None: ...
