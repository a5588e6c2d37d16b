"""OpenTelemetry server spans for the simulator (``tracing_endpoint`` in the server config).

Each generation request gets one SERVER span, ``sim.generate``, continuing the W3C
``traceparent`` the gateway sent (so it joins the gateway's and the EPP's trace). The SDK is
imported only when a server is configured with an endpoint; the simulator never imports kvroute.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimTracer:
    """One tracer provider per server, exporting over OTLP/gRPC."""

    def __init__(self, endpoint: str, server_name: str, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            insecure = not endpoint.startswith("https://")
            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
        resource = Resource.create(
            {"service.name": "kvroute-sim", "service.instance.id": server_name}
        )
        # Parent-based: follow the gateway's decision; a request without a parent is traced.
        self._provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(1.0))
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
        self._tracer = self._provider.get_tracer("kvroute_sim")
        self._propagator = TraceContextTextMapPropagator()
        self._server = server_name

    def middleware(self) -> Any:
        from opentelemetry import trace

        tracer, propagator, server = self._tracer, self._propagator, self._server

        @web.middleware
        async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.method != "POST" or not request.path.startswith("/v1/"):
                return await handler(request)
            parent = propagator.extract({k.lower(): v for k, v in request.headers.items()})
            with tracer.start_as_current_span(
                "sim.generate",
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={"url.path": request.path, "sim.server": server},
            ) as span:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                return response

        return traced

    def shutdown(self) -> None:
        self._provider.shutdown()
