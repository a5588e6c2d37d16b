"""Request-lifecycle extension points around the scheduling cycle (upstream requestcontrol).

The director calls them in this order for every request:
``PrepareData`` (before scheduling, may write into the CycleState) -> scheduling ->
``PreRequest`` (the target is known; e.g. prefix-index insert, in-flight increment) ->
``ResponseComplete`` (exactly once per scheduled request, also when the client disconnected).
All are synchronous and must be cheap: they run on the event loop in the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.request import InferenceRequest, Usage
from kvroute.framework.scheduling import CycleState, SchedulingResult
from kvroute.plugins.base import Plugin


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
