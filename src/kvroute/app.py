"""The EPP's composition root (upstream ``cmd/epp/runner/runner.go``): builds and owns it all.

:class:`EppApp` builds, in dependency order, the datastore, the endpoint source (static
``--endpoint`` list today; the Kubernetes watcher plugs into :class:`EndpointSource`), the
resources and model resolver, the scheduler config, the director, the metrics scraper, the
ext_proc and health gRPC servers and the Prometheus HTTP server. ``async with EppApp(...)``
starts everything inside one :class:`~contextlib.AsyncExitStack` and one
:class:`asyncio.TaskGroup`, and tears it down in reverse order; no task outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.datalayer.staleness import is_stale
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError
from kvroute.extproc.backend import RoutingBackend
from kvroute.extproc.body_budget import BodyBudget
from kvroute.extproc.server import (
    ExternalProcessor,
    ReadinessHealth,
    TlsMaterial,
    build_ext_proc_server,
    build_health_server,
)
from kvroute.extproc.stream import StreamOptions
from kvroute.extproc.tap_http import report_socket_for, serving_reports
from kvroute.observability.metrics import EppMetrics
from kvroute.settings import EppSettings
from kvroute.wiring import EppGraph, OwnedTasks, build_epp, supervised

log = logging.getLogger(__name__)

LIVENESS_SERVICE = "liveness"


class EndpointSource(Protocol):
    """Where the pool's endpoints come from: a static list, or a Kubernetes watch.

    ``run`` keeps the datastore in sync until cancelled; ``synced`` turns true once the first
    full listing is in (gRPC health reports SERVING only then, as upstream).
    """

    @property
    def synced(self) -> bool: ...

    async def run(self, datastore: Datastore) -> None: ...


@runtime_checkable
class PreloadedSource(Protocol):
    """A source whose whole listing is known up front: loaded before the first request, no loop."""

    def load(self, datastore: Datastore) -> None: ...


@runtime_checkable
class ServiceHealthSource(Protocol):
    """A source that answers gRPC health per service name (Kubernetes with leader election)."""

    def serving(self, service: str) -> bool: ...


@runtime_checkable
class ResourceSource(Protocol):
    """A source that also delivers the pool's InferenceModel/Objective/Rewrite objects."""

    on_resources: Callable[[Any], None] | None


class StaticEndpoints:
    """``--endpoint URL`` (repeatable): a fixed pool, no Kubernetes."""

    def __init__(self, endpoints: tuple[tuple[str, int], ...]) -> None:
        self._endpoints = endpoints
        self._synced = False

    @property
    def synced(self) -> bool:
        return self._synced

    def load(self, datastore: Datastore) -> None:
        for i, (host, port) in enumerate(self._endpoints):
            datastore.upsert_endpoint(f"static-{i}-rank-0", host, port)
        self._synced = True

    async def run(self, datastore: Datastore) -> None:
        self.load(datastore)


def endpoint_source_for(settings: EppSettings) -> EndpointSource:
    """The seam where Kubernetes discovery plugs in (``--pool-name``/``--endpoint-selector``),
    or the config's ``dataLayer.discovery`` (``file-discovery``), exclusive with ``--endpoint``."""
    discovery = _file_discovery(settings)
    if discovery is not None:
        if settings.endpoints or settings.endpoint_selector or settings.pool_name:
            raise ConfigError(
                "dataLayer.discovery (file-discovery) replaces --endpoint, --pool-name and "
                "--endpoint-selector: use one of them"
            )
        return discovery
    if settings.endpoint_selector or (settings.pool_name and not settings.endpoints):
        from kvroute.k8s.source import KubernetesEndpointSource

        return KubernetesEndpointSource.from_settings(settings)
    if not settings.endpoints:
        raise ConfigError("no endpoints: pass --endpoint URL (repeatable)")
    return StaticEndpoints(settings.endpoints)


def _file_discovery(settings: EppSettings) -> EndpointSource | None:
    if settings.config_file is None and settings.config_text is None:
        return None
    from kvroute.datastore.file_discovery import file_discovery_for
    from kvroute.plugins.registry import default_registry

    return file_discovery_for(_load_scheduling_config(settings, default_registry())[0])


@dataclass(slots=True)
class BoundPorts:
    grpc: int = 0
    health: int = 0
    metrics: int = 0


BackendFactory = Callable[[EppSettings, Datastore, EppMetrics], "Awaitable[BuiltBackend]"]


@dataclass(slots=True)
class BuiltBackend:
    """The routing backend plus what runs beside it.

    ``graph`` is the decision graph :func:`kvroute.wiring.build_epp` built (its scraper and
    plugin lifecycle run while the app runs); ``tasks`` are extra background loops of a custom
    factory.
    """

    backend: RoutingBackend
    tasks: tuple[Callable[[], Awaitable[None]], ...] = ()
    # Live InferenceModel/Objective/Rewrite updates (Kubernetes): replaces the model resolver.
    on_resources: Callable[[Any], None] | None = None
    graph: EppGraph | None = None
    # Called when the EPP starts shutting down, before the gRPC server drains (flow control
    # answers every queued request 503 rejected-shutting-down).
    on_shutdown: Callable[[], object] | None = None


class EppApp:
    """``async with EppApp(settings) as app: ...`` runs the whole EPP until the block exits.

    ``backend_factory`` defaults to :func:`build_director_backend`;
    tests may pass another to run the real gRPC/Envoy edge over a different decision maker.
    """

    def __init__(
        self,
        settings: EppSettings,
        *,
        backend_factory: BackendFactory | None = None,
        endpoint_source: EndpointSource | None = None,
        tls: TlsMaterial | None = None,
    ) -> None:
        self.settings = settings
        self.datastore = Datastore()
        self.metrics = EppMetrics(
            settings.pool_label, fairness_label_limit=settings.fairness_id_metric_label_limit
        )
        self.ports = BoundPorts()
        self.tls = tls
        self.processor: ExternalProcessor | None = None
        # tap over a private Unix socket: the HTTP/1.1 report socket (kvroute.extproc.tap_http)
        self.tap_http_socket: Path | None = None
        # ``kvroute serve --transport lua`` (issue 19): Envoy's Lua filter asks for each routing
        # decision over HTTP/1.1 on this socket instead of an ext_proc stream (set before entry).
        self.lua_route = False
        self.route_socket: Path | None = None
        self.ended_fifo: Path | None = None  # Envoy's access log of unreported exchanges
        self.route_shell: Any = None  # kvroute.extproc.lua_route.LuaRouteShell
        self._backend_factory = backend_factory
        self._source = endpoint_source or endpoint_source_for(settings)
        self._stack: contextlib.AsyncExitStack | None = None
        self.draining = False
        self.sync: Any = None  # the replica-sync transport (``--sync-port``), when on

    async def __aenter__(self) -> EppApp:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(et, e, tb)

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        source = self._source
        # Endpoints first: a static list (or an endpoints file: an invalid one fails startup)
        # is loaded synchronously so the first request can route.
        if isinstance(source, PreloadedSource):
            source.load(self.datastore)
        factory = self._backend_factory
        if factory is None:
            factory = build_director_backend
        built = await factory(s, self.datastore, self.metrics)
        if built.on_resources is not None and isinstance(source, ResourceSource):
            source.on_resources = built.on_resources  # Kubernetes: live model objects
        tls = self.tls
        if s.secure_serving and tls is None:
            from kvroute.extproc.tls import load_cert_dir, self_signed

            tls = load_cert_dir(s.cert_path) if s.cert_path else self_signed()
        if tls is not None and s.require_client_cert and s.client_ca_path is not None:
            from kvroute.extproc.tls import load_client_ca

            tls = dataclasses.replace(tls, client_ca=load_client_ca(s.client_ca_path))
        self.tls = tls if s.secure_serving else None

        # Background loops are entered before the servers so that they stop after them: on exit
        # the gRPC servers drain first, while the scraper and plugins are still live. Every
        # loop is supervised: a crash is logged and restarted, never the end of the EPP.
        tasks = await stack.enter_async_context(OwnedTasks())
        if not isinstance(source, StaticEndpoints):  # a fixed list has nothing to follow
            tasks.spawn(supervised(lambda: source.run(self.datastore)), "endpoint-source")
        for i, make in enumerate(built.tasks):
            tasks.spawn(supervised(make), f"backend-task-{i}")
        tasks.spawn(supervised(self._refresh_pool_metrics), "pool-metrics")
        if built.graph is not None:
            await stack.enter_async_context(built.graph.running())
            self.sync = _start_replica_sync(s, built.graph, self.metrics.registry, tasks)
        self.ports.metrics = await stack.enter_async_context(self._metrics_server())

        source_serving = source.serving if isinstance(source, ServiceHealthSource) else None

        def serving(service: str) -> bool:
            if self.draining and service != LIVENESS_SERVICE:
                return False  # draining: readiness and ext_proc NOT_SERVING, liveness stays
            return source_serving(service) if source_serving is not None else source.synced

        health = ReadinessHealth(lambda: source.synced, serving=serving)
        self.body_budget = BodyBudget(s.max_buffered_body_bytes)
        options = StreamOptions(
            s.response_processing, s.max_request_body_bytes, body_budget=self.body_budget
        )
        self.processor = ExternalProcessor(
            built.backend, options, release_routed=s.release_routed_streams
        )
        server, self.ports.grpc = build_ext_proc_server(
            self.processor,
            host=s.bind_host,
            port=s.grpc_port,
            tls=self.tls,
            health=health if s.health_checking else None,
            uds=str(s.grpc_uds) if s.grpc_uds is not None else None,
        )
        hserver, self.ports.health = build_health_server(
            health, host=s.bind_host, port=s.grpc_health_port
        )
        if self.ports.grpc == 0 or self.ports.health == 0:
            where = f"unix:{s.grpc_uds}" if s.grpc_uds is not None else str(s.grpc_port)
            raise ConfigError(f"cannot bind gRPC ports {where}/{s.grpc_health_port}")
        if s.grpc_uds is not None:
            self.ports.grpc = 0  # not a TCP port; the socket path is settings.grpc_uds
        await hserver.start()
        stack.push_async_callback(_stop_grpc, hserver, 0.0)
        # tap over the private socket: the report gets its own HTTP/1.1 socket (issue 19); with
        # TLS asked for, or --tap-report grpc, it stays the (TLS) gRPC method. Entered before
        # the drain is pushed: reports keep coming while streams drain.
        tap = s.response_processing is ResponseProcessing.TAP
        if tap and s.grpc_uds is not None and not s.secure_serving and s.tap_report == "http":
            path = report_socket_for(s.grpc_uds)
            handle = self.processor.handle_tap_report
            await stack.enter_async_context(serving_reports(path, handle))
            self.tap_http_socket = path
        if self.lua_route:
            await self._serve_lua_route(stack, built.backend, options)
        await server.start()
        stack.push_async_callback(self._drain, server)
        if built.on_shutdown is not None:  # LIFO: runs before the drain starts
            stack.callback(built.on_shutdown)

    async def _serve_lua_route(
        self, stack: contextlib.AsyncExitStack, backend: RoutingBackend, options: StreamOptions
    ) -> None:
        from kvroute.extproc.lua_route import (
            LuaRouteShell,
            disconnect_fifo_for,
            route_socket_for,
            serving_disconnects,
            serving_routes,
        )

        s = self.settings
        if self.tap_http_socket is None or s.grpc_uds is None or self.processor is None:
            raise ConfigError(
                "--transport lua needs --response-processing tap with the HTTP report "
                "(--tap-report http), kvroute serve's private sockets (no --grpc-port) and no TLS"
            )
        processor = self.processor
        self.route_shell = LuaRouteShell(backend, options, processor.hold_for_report)
        fifo = disconnect_fifo_for(s.grpc_uds)
        await stack.enter_async_context(serving_disconnects(fifo, processor.report_disconnect))
        self.ended_fifo = fifo
        path = route_socket_for(s.grpc_uds)
        limit = s.max_request_body_bytes
        await stack.enter_async_context(serving_routes(path, self.route_shell, limit))
        self.route_socket = path

    async def _drain(self, server: grpc.aio.Server) -> None:
        """Shutdown (SIGTERM): stop taking streams, let running ones finish, then cut them.

        Health turns NOT_SERVING (liveness stays SERVING) and the ext_proc server refuses new
        streams at once; streams already running get up to ``--drain-timeout`` to finish, and
        whatever is still open then is cancelled (0: at once). The health server, the metrics
        endpoint, the scraper and the plugins stay up until the drain is over. (Upstream's
        ``--drain-timeout``, same name and default, keeps accepting streams while readiness
        propagates; here new streams are refused as soon as the drain starts.)
        """
        self.draining = True
        await _stop_grpc(server, self.settings.drain_timeout_s)

    async def _refresh_pool_metrics(self) -> None:
        while True:
            self._refresh_pool_gauges()
            await asyncio.sleep(self.settings.refresh_prometheus_metrics_interval_s)

    def _refresh_pool_gauges(self) -> None:
        """Ready = not ejected by passive health and scraped within the staleness threshold."""
        eps = self.datastore.endpoints()
        now = time.monotonic()
        threshold = self.settings.metrics_staleness_threshold_s
        ready = sum(
            1
            for e in eps
            if self.datastore.health.routable(e.hostport) and not is_stale(e, now, threshold)
        )
        self.metrics.refresh_pool(eps, ready=ready)

    @contextlib.asynccontextmanager
    async def _metrics_server(self) -> AsyncIterator[int]:
        registry = self.metrics.registry

        token = self.settings.metrics_bearer_token
        expected = f"Bearer {token}".encode() if token else b""
        reviewer = await self._token_reviewer() if not token else None

        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            # --metrics-endpoint-auth (issue 20 finding 7): a static token, or TokenReview as
            # upstream; every route of this server, /metrics and the live pool page with its
            # state and event stream
            given = request.headers.get("Authorization", "")
            if token and not hmac.compare_digest(given.encode(), expected):
                return self._unauthorized(401, "send Authorization: Bearer <token>")
            if reviewer is not None:
                decision = await reviewer.check(given, request.path)
                if not decision.allowed:
                    return self._unauthorized(decision.status, decision.reason)
            response: web.StreamResponse = await handler(request)
            return response

        async def metrics(request: web.Request) -> web.Response:
            self._refresh_pool_gauges()
            return web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application(middlewares=[auth])
        app.router.add_get("/metrics", metrics)
        from kvroute.observability.pool_page import add_pool_page  # live page, same server

        add_pool_page(
            app, lambda: self.metrics.pool_name, self.datastore.endpoints, self.metrics.recent
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind_host, self.settings.metrics_port)
        try:
            await site.start()
            server: Any = site._server  # aiohttp exposes the bound socket only here
            yield int(server.sockets[0].getsockname()[1])
        finally:
            await runner.cleanup()
            if reviewer is not None:
                await reviewer.close()

    async def _token_reviewer(self) -> Any:
        """TokenReview for ``--metrics-endpoint-auth`` without a static token (``kvroute.k8s.
        token_review``); the cluster config is resolved now (no config: exit 2)."""
        if not self.settings.metrics_endpoint_auth:
            return None
        from kvroute.k8s.source import client_factory_from_env
        from kvroute.k8s.token_review import TokenReviewAuthenticator

        return TokenReviewAuthenticator(client_factory_from_env()())

    @staticmethod
    def _unauthorized(status: int, reason: str) -> web.Response:
        word = "unauthorized" if status == 401 else "forbidden"
        return web.Response(
            status=status,
            text=f"{word}: {reason}\n",
            headers={"WWW-Authenticate": 'Bearer realm="kvroute-metrics"'} if status == 401 else {},
        )

    async def serve_forever(self) -> None:
        """Block until cancelled (Ctrl-C/SIGTERM handling is the caller's)."""
        await asyncio.Event().wait()


async def _stop_grpc(server: grpc.aio.Server, grace_s: float) -> None:
    await server.stop(grace=grace_s if grace_s > 0 else None)


def _start_replica_sync(
    settings: EppSettings, graph: EppGraph, registry: Any, tasks: OwnedTasks
) -> Any:
    """Active-active replica sync (``--sync-port``): one supervised loop in the app's group."""
    if settings.sync_port is None:
        return None
    from kvroute.replicasync.metrics import SyncCollector
    from kvroute.replicasync.service import build_membership, build_sync

    sync = build_sync(settings, graph.datastore, graph.capabilities.replicated)
    if sync is None:
        return None
    registry.register(SyncCollector(sync.core))
    tasks.spawn(supervised(sync.run), "replica-sync")
    membership = build_membership(settings, sync)
    if membership is not None:
        tasks.spawn(supervised(membership.run), "replica-sync-leases")
    return sync


def _load_scheduling_config(settings: EppSettings, registry: Any) -> Any:
    from kvroute.config.epp_config import builtin_epp_config, load_epp_config, parse_epp_config

    if settings.config_file is not None:
        return load_epp_config(settings.config_file), str(settings.config_file)
    if settings.config_text is not None:
        return parse_epp_config(settings.config_text), "<config-text>"
    return builtin_epp_config("default", registry), "<default config>"


def _attach_headroom(metrics: EppMetrics, plugins: Iterable[object]) -> None:
    """Export ``kvroute_pool_predicted_ttft_headroom_seconds`` from the profile's first
    ``predicted-latency-producer``; without one the gauge is not registered."""
    from kvroute.scheduling.plugins.latency.producer import PredictedLatencyProducer

    producer = next((p for p in plugins if isinstance(p, PredictedLatencyProducer)), None)
    if producer is None:
        return

    def headroom(classes: Collection[str]) -> Mapping[str, float]:
        values = producer.headroom(time.monotonic())
        return {cls: v for cls, v in values.items() if cls in classes}

    metrics.autoscaling.attach_signal("predicted_ttft_headroom_seconds", headroom)


def _resolver_for(settings: EppSettings, metrics: EppMetrics) -> Any:
    """InferenceModel/Objective/Rewrite from ``--resources``, narrowed to the served pool.

    With static endpoints, ``--pool-name`` picks the pool among the files' pools (optional
    when there is only one); the pool's name also labels the ``inference_pool_*`` metrics.
    """
    from kvroute.config.resources import load_resources
    from kvroute.requestcontrol.model_resolution import ModelResolver

    if not settings.resources:
        return None
    resources = load_resources(list(settings.resources))
    if resources.pools:
        pool = resources.pool(settings.pool_name or None, settings.pool_namespace)
        resources = resources.for_pool(pool.name, pool.namespace)
        metrics.pool_name = pool.name
    return ModelResolver(resources)


async def build_director_backend(
    settings: EppSettings, datastore: Datastore, metrics: EppMetrics
) -> BuiltBackend:
    """The production backend: the graph of :func:`kvroute.wiring.build_epp`, behind ext_proc."""
    from kvroute.extproc.director_backend import Codec, DirectorBackend
    from kvroute.extproc.response_filter import OpenAIResponseFilter
    from kvroute.observability.disagg_metrics import register_disagg_metrics
    from kvroute.observability.kv_index_metrics import register_kv_index_metrics
    from kvroute.observability.render_metrics import register_render_metrics
    from kvroute.plugins.registry import default_registry
    from kvroute.requestcontrol.model_resolution import ModelResolver
    from kvroute.scheduling.timing import PluginTimings

    registry = default_registry()
    config, source = _load_scheduling_config(settings, registry)
    timings = PluginTimings()
    from kvroute.observability.autoscaling_metrics import flow_control_providers
    from kvroute.observability.flowcontrol_metrics import FlowControlMetrics

    flow_metrics = FlowControlMetrics(
        metrics.registry,
        settings.pool_label,
        model_labels=metrics.model_labels,
        fairness_labels=metrics.fairness_labels,
    )
    graph = build_epp(
        config,
        datastore,
        registry=registry,
        source=source,
        resolver=_resolver_for(settings, metrics),
        timings=timings,
        scrape_interval_s=settings.refresh_metrics_interval_s,
        emit_endpoint_scores=settings.emit_endpoint_scores,
        flow_observer=flow_metrics,
    )
    director = graph.director
    if graph.flow_control is not None:
        flow_metrics.watch_saturation(graph.flow_control.saturation)
        fc_signals = flow_control_providers(graph.flow_control.queues, time.monotonic)
        for signal, provider in fc_signals.items():
            metrics.autoscaling.attach_signal(signal, provider)
    _attach_headroom(metrics, graph.setup.plugins.values())
    metrics.attach_plugin_timings(timings)
    # The live pool page shows how many blocks the prefix index(es) hold per endpoint.
    holders = graph.capabilities.block_holders
    if holders:
        metrics.recent.blocks_held = lambda name: sum(h.blocks_held(name) for h in holders)
    parsers = graph.setup.parsers  # requestHandler.parsers, resolved at build
    # P/D decisions (llm_d_epp_disagg_decision_total), when a disagg handler is configured.
    register_disagg_metrics(metrics.registry, list(graph.setup.plugins.values()))
    register_render_metrics(metrics.registry, list(graph.setup.plugins.values()))
    register_kv_index_metrics(metrics.registry, list(graph.setup.plugins.values()))
    codec = Codec(
        parse_request=parsers.parse_request,
        rewrite_request_body=parsers.rewrite_request_body,
        response_filter=OpenAIResponseFilter,
    )
    tracing, tracing_tasks = _tracing_for(settings)
    backend = DirectorBackend(
        director,
        codec,
        metrics,
        tracing=tracing,
        decision_header=settings.enable_decision_header,
        replica_id=settings.replica_id if settings.sync_port is not None else None,
    )

    def on_resources(resources: Any) -> None:
        director.resolver = ModelResolver(resources)

    fc = graph.flow_control
    return BuiltBackend(
        backend=backend,
        tasks=tracing_tasks,
        on_resources=on_resources,
        graph=graph,
        on_shutdown=fc.shutdown if fc is not None else None,
    )


def _tracing_for(settings: EppSettings) -> tuple[Any, tuple[Callable[[], Awaitable[None]], ...]]:
    """OpenTelemetry when enabled (the SDK is imported only then), shut down with the app."""
    from kvroute.observability.tracing import Tracing, TracingConfig

    config = TracingConfig.resolve(
        settings.tracing, settings.tracing_endpoint, settings.tracing_sampling_ratio
    )
    if not config.enabled:
        return None, ()
    tracing = Tracing(config)

    async def shutdown_on_exit() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.to_thread(tracing.shutdown)

    return tracing, (shutdown_on_exit,)
