"""Distributed tracing with OpenTelemetry: the EPP continues the gateway's W3C trace.

Off by default, and then free: nothing from ``opentelemetry`` is imported, the director backend
holds ``None`` instead of a :class:`Tracing`, and :func:`span` (the hook for layers that have no
handle, e.g. the flow-control wait) is one context-variable read.

When on (``--tracing``, or ``OTEL_TRACES_EXPORTER=otlp``), the SDK exports over OTLP/gRPC to
``--tracing-endpoint`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
with a parent-based ratio sampler (``--tracing-sampling-ratio`` / ``OTEL_TRACES_SAMPLER_ARG``):
a request that arrives with a sampled ``traceparent`` is always traced, an unsampled one never,
one without is sampled at the ratio. The parent is, in this order, the ``traceparent`` of the
ext_proc gRPC call (Envoy's span for the call, child of its gateway span; set by the gRPC
servicer through :func:`enter_grpc_call`) and the ``traceparent`` among the HTTP request
headers (the client's, or an upstream proxy's).

Spans per request: ``kvroute.epp.request`` (SERVER) with children ``kvroute.parse``,
``kvroute.schedule`` (resolution, admission and the scheduling cycle, with per-plugin
attributes from the cycle trace), ``kvroute.flow_control.wait`` (via :func:`span`, where the
flow-control layer opens it) and ``kvroute.response`` (TTFT, tokens, completion reason).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kvroute.errors import ConfigError

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DEFAULT_ENDPOINT = "http://127.0.0.1:4317"
SERVICE_NAME = "kvroute-epp"

# The trace headers of the ext_proc gRPC call (set per stream by the servicer).
_grpc_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "kvroute_grpc_trace_headers", default=None
)
# The request span of the request being handled in this task, for :func:`span`.
_current: contextvars.ContextVar[RequestSpan | None] = contextvars.ContextVar(
    "kvroute_request_span", default=None
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    enabled: bool = False
    endpoint: str = DEFAULT_ENDPOINT
    sampling_ratio: float = 1.0
    service_name: str = SERVICE_NAME

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling_ratio <= 1.0:
            raise ConfigError(
                f"--tracing-sampling-ratio must be within [0, 1], got {self.sampling_ratio}"
            )

    @classmethod
    def resolve(
        cls,
        enabled: bool | None,
        endpoint: str | None,
        ratio: float | None,
        env: Mapping[str, str] = os.environ,
    ) -> TracingConfig:
        """Flags win over the standard ``OTEL_*`` variables; both unset means off."""
        if enabled is None:
            enabled = env.get("OTEL_TRACES_EXPORTER", "none").strip().lower() == "otlp"
        if endpoint is None:
            endpoint = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or DEFAULT_ENDPOINT
            )
        if ratio is None:
            arg = env.get("OTEL_TRACES_SAMPLER_ARG")
            try:
                ratio = float(arg) if arg else 1.0
            except ValueError as exc:
                raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: not a number: {arg!r}") from exc
        service = env.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        return cls(enabled=enabled, endpoint=endpoint, sampling_ratio=ratio, service_name=service)


# How many live Tracing objects exist in this process; 0 means the gRPC servicer skips even
# looking at the call's metadata.
_live = 0


def enter_grpc_call(metadata: Any) -> contextvars.Token[Mapping[str, str] | None] | None:
    """From now on in this task, the trace headers among ``metadata`` (gRPC ``(key, value)``
    pairs) are the preferred parent of request spans; ``None`` (nothing done) when tracing is
    off. Undo with :func:`exit_grpc_call`."""
    if _live == 0:
        return None
    found = {k: v for k, v in (metadata or ()) if k in (TRACEPARENT, TRACESTATE)}
    return _grpc_headers.set(found or None)


def exit_grpc_call(token: contextvars.Token[Mapping[str, str] | None] | None) -> None:
    if token is not None:
        with contextlib.suppress(ValueError):
            _grpc_headers.reset(token)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child span of the current request span, or nothing when that request is not traced.

    The hook for layers without a tracing handle, e.g. the flow-control wait:
    ``with tracing.span("kvroute.flow_control.wait", priority=p): await ...``.
    """
    current = _current.get()
    if current is None:
        yield None
        return
    with current.child(name, **attributes) as s:
        yield s


class Tracing:
    """The SDK side, built only when tracing is on; one provider per app (no global state)."""

    def __init__(self, config: TracingConfig, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            insecure = not config.endpoint.startswith("https://")
            exporter = OTLPSpanExporter(endpoint=config.endpoint, insecure=insecure)
        self.config = config
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
        )
        self._processor = BatchSpanProcessor(exporter, schedule_delay_millis=200)
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("kvroute.epp")
        self._propagator = TraceContextTextMapPropagator()
        global _live
        _live += 1
        self._closed = False

    def start_request(self, headers: Mapping[str, str], request_id: str) -> RequestSpan | None:
        """The request span, child of the gateway's; ``None`` when the sampler says no."""
        from opentelemetry import trace

        carrier = _grpc_headers.get() or headers
        parent = self._propagator.extract(carrier)
        s = self._tracer.start_span(
            "kvroute.epp.request",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"kvroute.request_id": request_id},
        )
        if not s.is_recording():
            return None
        return RequestSpan(self._tracer, s)

    def flush(self, timeout_ms: int = 5000) -> None:
        self._provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        global _live
        if not self._closed:
            self._closed = True
            _live -= 1
            self._provider.shutdown()


class RequestSpan:
    """One traced request: its root span in the EPP and the children it opens."""

    __slots__ = ("_ctx", "_token", "_tracer", "root")

    def __init__(self, tracer: Any, root: Any) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self.root = root
        self._ctx = trace.set_span_in_context(root)
        self._token: contextvars.Token[RequestSpan | None] | None = None

    def activate(self) -> None:
        """Make this the current request span of the task (for :func:`span`)."""
        self._token = _current.set(self)

    def deactivate(self) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):  # reset from another context
                _current.reset(self._token)
            self._token = None

    @contextlib.contextmanager
    def child(self, name: str, **attributes: Any) -> Iterator[Any]:
        with self._tracer.start_as_current_span(
            name, context=self._ctx, attributes=attributes or None, end_on_exit=True
        ) as s:
            yield s

    def start_child(self, name: str, **attributes: Any) -> Any:
        return self._tracer.start_span(name, context=self._ctx, attributes=attributes or None)

    def fail(self, code: str, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.root.set_attribute("kvroute.error_code", code)
        self.root.set_status(Status(StatusCode.ERROR, message))

    def end(self, **attributes: Any) -> None:
        self.deactivate()
        if attributes:
            self.root.set_attributes(attributes)
        self.root.end()
