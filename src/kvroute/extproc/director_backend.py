"""The production :class:`~kvroute.extproc.backend.RoutingBackend`: director + OpenAI codec.

Adapts the request-control director (parse -> schedule -> pre-request hooks -> completion
hooks) to what the ext_proc stream needs, and records the EPP's own per-request Prometheus
metrics on the way. The director and the codec are described here by small protocols (their
consumer-defined shape), so this adapter does not depend on their concrete classes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import EppError
from kvroute.extproc.backend import Outcome, ResponseFilter, Routed, RoutingInput
from kvroute.observability.metrics import EppMetrics
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.request import InferenceRequest

log = logging.getLogger(__name__)


class Decision(Protocol):
    """What the director returns for a scheduled request."""

    @property
    def request(self) -> InferenceRequest: ...

    @property
    def endpoint_header(self) -> str: ...


class DirectorLike(Protocol):
    def handle_request(
        self,
        parsed: Any,
        headers: Mapping[str, str],
        request_id: str,
        subset_hint: Sequence[str] | None = None,
    ) -> Any: ...

    def handle_response_complete(
        self,
        decision: Any,
        usage: Usage | None,
        *,
        status: int | None = None,
        served: str | None = None,
    ) -> None: ...

    def random_endpoint(self) -> Endpoint: ...


@dataclass(frozen=True, slots=True)
class Codec:
    """The OpenAI body codec: parse, rewrite the model, and build response filters."""

    parse_request: Callable[[bytes, str], Any]
    rewrite_request_body: Callable[[Any, str], bytes]
    response_filter: Callable[[str, str, bool], ResponseFilter]


@dataclass(slots=True)
class _Handle:
    decision: Any
    started: float
    priority: int


class NoUsageFilter:
    """Pass-through filter for responses that need no rewrite (header-only requests)."""

    usage: Usage | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        return chunk


class DirectorBackend:
    """``RoutingBackend`` over a director; see the module docstring."""

    def __init__(
        self,
        director: DirectorLike,
        codec: Codec,
        metrics: EppMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._director = director
        self._codec = codec
        self._metrics = metrics
        self._clock = clock

    def route(self, request: RoutingInput) -> Routed:
        started = self._clock()
        parsed = self._codec.parse_request(request.body, request.path or "/v1/completions")
        decision = self._director.handle_request(
            parsed, request.headers, request.request_id, request.subset_hint
        )
        # From here the request counts as in flight on its target: anything that fails before
        # the stream owns the Routed (the body rewrite, metrics) must give that back, or the
        # endpoint looks one request busier for the rest of the process's life.
        try:
            return self._routed(request, parsed, decision, started)
        except BaseException:
            self._director.handle_response_complete(decision, None)
            raise

    def _routed(self, request: RoutingInput, parsed: Any, decision: Any, started: float) -> Routed:
        self._metrics.scheduler_e2e.observe(self._clock() - started)
        req: InferenceRequest = decision.request
        body = (
            request.body
            if req.target_model == req.incoming_model
            else self._codec.rewrite_request_body(parsed, req.target_model)
        )
        routed = Routed(
            endpoints=tuple(decision.endpoint_header.split(",")),
            body=body,
            incoming_model=req.incoming_model,
            target_model=req.target_model,
            handle=_Handle(decision, started, req.priority),
        )
        m = self._metrics
        m.request_total.labels(req.incoming_model, req.target_model, str(req.priority)).inc()
        m.request_sizes.labels(req.incoming_model, req.target_model).observe(len(request.body))
        m.scheduler_attempts.labels("success", req.target_model).inc()
        m.running_requests.labels(req.incoming_model).inc()  # last: complete() undoes it
        return routed

    def route_any(self, request_id: str) -> str | None:
        return self._director.random_endpoint().hostport

    def response_filter(self, routed: Routed, streaming: bool) -> ResponseFilter:
        if not routed.incoming_model:
            return NoUsageFilter()
        return self._codec.response_filter(routed.incoming_model, routed.target_model, streaming)

    def complete(self, routed: Routed, outcome: Outcome) -> None:
        handle = routed.handle
        if not isinstance(handle, _Handle):  # header-only request: nothing was scheduled
            return
        self._director.handle_response_complete(
            handle.decision,
            outcome.usage,
            status=outcome.status,
            served=outcome.served_endpoint,
        )
        m = self._metrics
        model, target = routed.incoming_model, routed.target_model
        m.running_requests.labels(model).dec()
        elapsed = self._clock() - handle.started
        if outcome.status is not None and outcome.status >= 400:
            m.request_error_total.labels(model, target, "ModelServerError").inc()
        m.request_duration.labels(model, target).observe(elapsed)
        m.response_sizes.labels(model, target).observe(outcome.response_bytes)
        usage = outcome.usage
        if usage is not None:
            m.input_tokens.labels(model, target).observe(usage.prompt_tokens)
            m.output_tokens.labels(model, target).observe(usage.completion_tokens)
            m.prompt_cached_tokens.labels(model, target).observe(usage.cached_tokens)
            if usage.completion_tokens > 0:
                m.ntpot.labels(model, target).observe(elapsed / usage.completion_tokens)

    def rejected(self, error: EppError, request: RoutingInput | None) -> None:
        """Error metrics. The model labels need the body's model, parsed again here: errors are
        the rare path, and keeping the success path free of bookkeeping matters more."""
        model = target = ""
        if request is not None:
            with contextlib.suppress(EppError):
                model = self._codec.parse_request(request.body, request.path).model
            target = request.model_rewrite or model
        self._metrics.request_error_total.labels(model, target, error.code.value).inc()
        if error.http_status == 429:
            self._metrics.scheduler_attempts.labels("failure", target).inc()
        log.debug("request rejected: %s", error.response_body())
