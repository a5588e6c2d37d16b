"""The production :class:`~kvroute.extproc.backend.RoutingBackend`: director + OpenAI codec.

Adapts the request-control director (parse -> schedule -> pre-request hooks -> completion
hooks) to what the ext_proc stream needs, and records the EPP's own per-request Prometheus
metrics on the way. The director and the codec are described here by small protocols (their
consumer-defined shape), so this adapter does not depend on their concrete classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import EppError
from kvroute.extproc.backend import Outcome, ResponseFilter, Routed, RoutingInput
from kvroute.observability.explain import DECISION_RESPONSE_HEADER, EXPLAIN_REQUEST_HEADER
from kvroute.observability.metrics import EppMetrics
from kvroute.observability.tracing import RequestSpan, Tracing
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.request import InferenceRequest

log = logging.getLogger(__name__)

LB_NAMESPACE = "envoy.lb"
REPLICA_RESPONSE_HEADER = "x-kvroute-epp-replica"
SCORES_KEY = "x-gateway-destination-endpoint-scores"


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
        *,
        trace: Any = None,
    ) -> Any: ...

    async def handle_request_async(
        self,
        parsed: Any,
        headers: Mapping[str, str],
        request_id: str,
        subset_hint: Sequence[str] | None = None,
        *,
        trace: Any = None,
    ) -> Any: ...

    def handle_first_token(self, decision: Any) -> None: ...

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
    response_filter: Callable[[str, str, bool, Any], ResponseFilter]


@dataclass(slots=True)
class _Handle:
    decision: Any
    started: float
    priority: int
    fairness_id: str = "default-flow"
    first_byte: float | None = None  # when the first response body chunk passed (TTFT)
    streaming: bool = False
    span: RequestSpan | None = None  # tracing on and this request sampled
    response_span: Any = None


class _FirstByteFilter:
    """Wraps a response filter to note when the first non-empty body chunk passes (TTFT), and to
    tell the director then (the prompt leaves the endpoint's prefill ledger). In ``tap`` mode
    the filter is fed once, at the end of the response, so that release comes with completion."""

    __slots__ = ("_clock", "_director", "_handle", "_inner")

    def __init__(
        self,
        inner: ResponseFilter,
        handle: _Handle,
        clock: Callable[[], float],
        director: DirectorLike,
    ):
        self._inner, self._handle, self._clock = inner, handle, clock
        self._director = director

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if chunk and self._handle.first_byte is None:
            self._handle.first_byte = self._clock()
            try:
                self._director.handle_first_token(self._handle.decision)
            except Exception:  # bookkeeping must not cut off the response it is counting
                log.exception("recording the first token of a response failed")
        return self._inner.feed(chunk, end_of_stream)


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
        tracing: Tracing | None = None,
        decision_header: bool = False,
        replica_id: str | None = None,
    ) -> None:
        self._director = director
        self._codec = codec
        self._metrics = metrics
        self._clock = clock
        self._tracing = tracing
        self._decision_header = decision_header
        # Active-active (replica sync on): every routed response names the replica that routed
        # it, so a client or a test can tell which replica carried a stream.
        self._replica_header = (
            MappingProxyType({REPLICA_RESPONSE_HEADER: replica_id}) if replica_id else None
        )

    async def route(self, request: RoutingInput) -> Routed:
        started = self._clock()
        span = None
        if self._tracing is not None:
            span = self._tracing.start_request(request.headers, request.request_id)
        explain = self._decision_header and EXPLAIN_REQUEST_HEADER in request.headers
        if span is not None or explain or self._metrics.recent.watched:
            return await self._route_explained(request, span, started, explain)
        parsed = self._codec.parse_request(request.body, request.path or "/v1/completions")
        decision = await self._director.handle_request_async(
            parsed, request.headers, request.request_id, request.subset_hint
        )
        return self._owned(request, parsed, decision, started, None)

    def _owned(
        self,
        request: RoutingInput,
        parsed: Any,
        decision: Any,
        started: float,
        span: RequestSpan | None,
        response_headers: Mapping[str, str] | None = None,
    ) -> Routed:
        # From here the request counts as in flight on its target: anything that fails before
        # the stream owns the Routed (the body rewrite, metrics) must give that back, or the
        # endpoint looks one request busier for the rest of the process's life.
        try:
            return self._routed(request, parsed, decision, started, span, response_headers)
        except BaseException:
            self._director.handle_response_complete(decision, None)
            raise

    async def _route_explained(
        self, request: RoutingInput, span: RequestSpan | None, started: float, explain: bool
    ) -> Routed:
        """``route`` with the cycle traced: for a sampled request (each step in a child span)
        and/or while the live pool page watches (the decision goes to its log)."""
        from kvroute.observability.explain import decision_header, span_attributes, summarize
        from kvroute.scheduling.interfaces import CycleTrace

        def child(name: str, **attrs: Any) -> Any:
            return span.child(name, **attrs) if span is not None else contextlib.nullcontext()

        if span is not None:
            span.activate()
        try:
            path = request.path or "/v1/completions"
            with child("kvroute.parse", **{"url.path": path}) as s:
                parsed = self._codec.parse_request(request.body, path)
                if s is not None:
                    s.set_attribute("kvroute.body_bytes", len(request.body))
                    s.set_attribute("kvroute.model", str(parsed.model))
            trace = CycleTrace()
            with child("kvroute.schedule") as s:
                decision = await self._director.handle_request_async(
                    parsed, request.headers, request.request_id, request.subset_hint, trace=trace
                )
                summary = summarize(decision, trace)
                if s is not None:
                    s.set_attributes(span_attributes(summary))
            if self._metrics.recent.watched:
                self._metrics.recent.add_decision(summary)
            extra = {DECISION_RESPONSE_HEADER: decision_header(summary)} if explain else None
        except EppError as exc:
            if span is not None:
                span.fail(exc.code.value, exc.message)
                span.end(**{"http.response.status_code": exc.http_status})
            raise
        except BaseException as exc:
            if span is not None:
                span.fail("Internal", repr(exc))
                span.end()
            raise
        finally:
            if span is not None:
                span.deactivate()
        return self._owned(request, parsed, decision, started, span, extra)

    def _response_headers(self, extra: Mapping[str, str] | None) -> Mapping[str, str]:
        replica = self._replica_header
        if replica is None:
            return extra or {}
        return {**extra, **replica} if extra else replica

    def _routed(
        self,
        request: RoutingInput,
        parsed: Any,
        decision: Any,
        started: float,
        span: RequestSpan | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> Routed:
        wait = float(getattr(decision, "queue_wait_s", 0.0))  # flow control is not scheduling
        self._metrics.record_scheduled(self._clock() - started - wait)
        req: InferenceRequest = decision.request
        body = (
            request.body
            if req.target_model == req.incoming_model
            else self._codec.rewrite_request_body(parsed, req.target_model)
        )
        scores = getattr(decision, "endpoint_scores", None)  # --emit-endpoint-scores
        routed = Routed(
            endpoints=tuple(decision.endpoint_header.split(",")),
            body=body,
            metadata={LB_NAMESPACE: {SCORES_KEY: dict(scores)}} if scores else {},
            incoming_model=req.incoming_model,
            target_model=req.target_model,
            handle=_Handle(decision, started, req.priority, req.fairness_id, span=span),
            response_headers=self._response_headers(response_headers),
            upstream_headers=getattr(decision, "upstream_headers", None) or {},
        )
        self._metrics.record_routed(
            req.incoming_model,
            req.target_model,
            req.fairness_id,
            req.priority,
            len(request.body),
            getattr(decision, "target", None),
            self._clock() - started,
        )
        return routed

    def route_any(self, request_id: str) -> str | None:
        return self._director.random_endpoint().hostport

    def response_filter(self, routed: Routed, streaming: bool) -> ResponseFilter:
        handle = routed.handle
        if not isinstance(handle, _Handle):  # header-only request: nothing was parsed
            return NoUsageFilter()
        handle.streaming = streaming
        api = handle.decision.request.api  # the parser's API picks how usage is read
        inner = self._codec.response_filter(
            routed.incoming_model, routed.target_model, streaming, api
        )
        if handle.span is not None:
            handle.response_span = handle.span.start_child("kvroute.response", streaming=streaming)
        return _FirstByteFilter(inner, handle, self._clock, self._director)

    def complete(self, routed: Routed, outcome: Outcome) -> None:
        handle = routed.handle
        if not isinstance(handle, _Handle):  # header-only request: nothing was scheduled
            return
        usage = outcome.usage
        if outcome.first_chunk_at is not None:  # the latency predictor learns TTFT from it
            usage = dataclasses.replace(usage or Usage(), first_token_at=outcome.first_chunk_at)
        self._director.handle_response_complete(
            handle.decision, usage, status=outcome.status, served=outcome.served_endpoint
        )
        for namespace, values in handle.decision.response_metadata.items():
            routed.response_metadata.setdefault(namespace, {}).update(values)
        # tap: the filter saw the body only at the end; Envoy's report timed the first byte.
        first = outcome.first_chunk_at if outcome.via_tap else handle.first_byte
        if handle.span is not None:
            self._end_spans(handle, outcome)
        self._metrics.record_complete(
            routed.incoming_model,
            routed.target_model,
            handle.fairness_id,
            handle.priority,
            elapsed_s=self._clock() - handle.started,
            status=outcome.status,
            response_bytes=outcome.response_bytes,
            usage=outcome.usage,
            ttft_s=None if first is None else first - handle.started,
            streaming=handle.streaming,
        )

    def _end_spans(self, handle: _Handle, outcome: Outcome) -> None:
        assert handle.span is not None
        if outcome.disconnected:
            reason = "client_disconnected"
        elif outcome.status is None:
            reason = "no_response"
        elif outcome.status >= 400:
            reason = "upstream_error"
        else:
            reason = "complete"
        attrs: dict[str, Any] = {"kvroute.completion_reason": reason}
        if outcome.status is not None:
            attrs["http.response.status_code"] = outcome.status
        if handle.first_byte is not None:
            attrs["kvroute.ttft_ms"] = round((handle.first_byte - handle.started) * 1000, 3)
        if outcome.usage is not None:
            attrs["kvroute.prompt_tokens"] = outcome.usage.prompt_tokens
            attrs["kvroute.completion_tokens"] = outcome.usage.completion_tokens
            attrs["kvroute.cached_tokens"] = outcome.usage.cached_tokens
        attrs["kvroute.response_bytes"] = outcome.response_bytes
        if handle.response_span is not None:
            handle.response_span.set_attributes(attrs)
            handle.response_span.end()
        handle.span.end(**attrs)

    def rejected(self, error: EppError, request: RoutingInput | None) -> None:
        """Error metrics. The model labels need the body's model, parsed again here: errors are
        the rare path, and keeping the success path free of bookkeeping matters more."""
        model = target = ""
        fairness_id = "default-flow"
        if request is not None:
            with contextlib.suppress(EppError):
                model = self._codec.parse_request(request.body, request.path).model
            target = request.model_rewrite or model
            fairness_id = request.fairness_id
        self._metrics.record_error(
            model,
            target,
            fairness_id,
            0,
            error.code.value,
            scheduling_failure=error.http_status == 429,
        )
        log.debug("request rejected: %s", error.response_body())
