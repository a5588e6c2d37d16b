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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
from kvroute.observability.metrics import EppMetrics
from kvroute.settings import EppSettings

log = logging.getLogger(__name__)


class EndpointSource(Protocol):
    """Where the pool's endpoints come from: a static list, or a Kubernetes watch.

    ``run`` keeps the datastore in sync until cancelled; ``synced`` turns true once the first
    full listing is in (gRPC health reports SERVING only then, as upstream).
    """

    @property
    def synced(self) -> bool: ...

    async def run(self, datastore: Datastore) -> None: ...


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
    """The seam where Kubernetes discovery plugs in (``--pool-name``/``--endpoint-selector``)."""
    if settings.endpoint_selector or (settings.pool_name and not settings.endpoints):
        from kvroute.k8s.source import KubernetesEndpointSource

        return KubernetesEndpointSource.from_settings(settings)
    if not settings.endpoints:
        raise ConfigError("no endpoints: pass --endpoint URL (repeatable)")
    return StaticEndpoints(settings.endpoints)


@dataclass(slots=True)
class BoundPorts:
    grpc: int = 0
    health: int = 0
    metrics: int = 0


BackendFactory = Callable[[EppSettings, Datastore, EppMetrics], "Awaitable[BuiltBackend]"]


@dataclass(slots=True)
class BuiltBackend:
    """The routing backend plus the background coroutines it needs (e.g. the scraper)."""

    backend: RoutingBackend
    tasks: tuple[Callable[[], Awaitable[None]], ...] = ()
    # Live InferenceModel/Objective/Rewrite updates (Kubernetes): replaces the model resolver.
    on_resources: Callable[[Any], None] | None = None


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
        self.metrics = EppMetrics(settings.pool_label)
        self.ports = BoundPorts()
        self.tls = tls
        self.processor: ExternalProcessor | None = None
        self._backend_factory = backend_factory
        self._source = endpoint_source or endpoint_source_for(settings)
        self._stack: contextlib.AsyncExitStack | None = None

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
        # Endpoints first: a static list is loaded synchronously so the first request can route.
        if isinstance(self._source, StaticEndpoints):
            self._source.load(self.datastore)
        factory = self._backend_factory
        if factory is None:
            factory = build_director_backend
        built = await factory(s, self.datastore, self.metrics)
        if built.on_resources is not None and hasattr(self._source, "on_resources"):
            self._source.on_resources = built.on_resources  # Kubernetes: live model objects
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
        tasks = await stack.enter_async_context(_OwnedTasks())
        if not isinstance(self._source, StaticEndpoints):
            source = self._source
            tasks.spawn(_supervised(lambda: source.run(self.datastore)), "endpoint-source")
        for i, make in enumerate(built.tasks):
            tasks.spawn(_supervised(make), f"backend-task-{i}")
        tasks.spawn(_supervised(self._refresh_pool_metrics), "pool-metrics")

        health = ReadinessHealth(
            lambda: self._source.synced, serving=getattr(self._source, "serving", None)
        )
        self.body_budget = BodyBudget(s.max_buffered_body_bytes)
        options = StreamOptions(
            s.response_processing, s.max_request_body_bytes, body_budget=self.body_budget
        )
        self.processor = ExternalProcessor(built.backend, options)
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
        await server.start()
        stack.push_async_callback(_stop_grpc, server)
        await hserver.start()
        stack.push_async_callback(_stop_grpc, hserver)
        self.ports.metrics = await stack.enter_async_context(self._metrics_server())

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

        async def metrics(request: web.Request) -> web.Response:
            if token:  # --metrics-endpoint-auth with a static token (issue 20 finding 7)
                given = request.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return web.Response(
                        status=401,
                        text="unauthorized: send Authorization: Bearer <token>\n",
                        headers={"WWW-Authenticate": 'Bearer realm="kvroute-metrics"'},
                    )
            self._refresh_pool_gauges()
            return web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind_host, self.settings.metrics_port)
        await site.start()
        try:
            server: Any = site._server  # aiohttp exposes the bound socket only here
            yield int(server.sockets[0].getsockname()[1])
        finally:
            await runner.cleanup()

    async def serve_forever(self) -> None:
        """Block until cancelled (Ctrl-C/SIGTERM handling is the caller's)."""
        await asyncio.Event().wait()


class _OwnedTasks:
    """A TaskGroup whose tasks are cancelled when the owning exit stack unwinds.

    ``asyncio.TaskGroup`` alone waits for its tasks on exit; the app's loops never end by
    themselves, so they are cancelled first, then the group is awaited.
    """

    def __init__(self) -> None:
        self._tg = asyncio.TaskGroup()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> _OwnedTasks:
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tg.__aexit__(None, None, None)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(self._tg.create_task(coro, name=name))


async def _supervised(make: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; a crash is logged and restarted after a pause, never fatal."""
    while True:
        try:
            await make()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task crashed; restarting in 1s")
            await asyncio.sleep(1.0)


async def _stop_grpc(server: grpc.aio.Server) -> None:
    await server.stop(grace=1.0)


def _load_scheduling_config(settings: EppSettings, registry: Any) -> Any:
    from kvroute.config.epp_config import builtin_epp_config, load_epp_config, parse_epp_config

    if settings.config_file is not None:
        return load_epp_config(settings.config_file), str(settings.config_file)
    if settings.config_text is not None:
        return parse_epp_config(settings.config_text), "<config-text>"
    return builtin_epp_config("default", registry), "<default config>"


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
    """The production backend: config -> plugins -> scheduler -> director, plus the scraper."""
    from kvroute.extproc.director_backend import Codec, DirectorBackend
    from kvroute.extproc.response_filter import OpenAIResponseFilter
    from kvroute.plugins.registry import default_registry
    from kvroute.protocol.openai import parse_request, rewrite_request_body
    from kvroute.requestcontrol.director import Director
    from kvroute.scheduling.builder import build_scheduling
    from kvroute.scheduling.timing import PluginTimings

    registry = default_registry()
    config, source = _load_scheduling_config(settings, registry)
    timings = PluginTimings()
    setup = build_scheduling(config, registry, source=source, timings=timings)
    director = Director(
        datastore,
        _resolver_for(settings, metrics),
        setup.scheduler,
        setup.saturation_detector,
        setup.hooks,
        timings=timings,
    )
    metrics.attach_plugin_timings(timings)
    codec = Codec(
        parse_request=parse_request,
        rewrite_request_body=rewrite_request_body,
        response_filter=OpenAIResponseFilter,
    )
    backend = DirectorBackend(director, codec, metrics)

    def on_resources(resources: Any) -> None:
        from kvroute.requestcontrol.model_resolution import ModelResolver

        director.resolver = ModelResolver(resources)

    return BuiltBackend(
        backend=backend,
        tasks=(
            *_scraper_tasks(settings, datastore, setup.plugins),
            *_plugin_lifecycle_tasks(datastore, setup.plugins),
        ),
        on_resources=on_resources,
    )


def _plugin_lifecycle_tasks(
    datastore: Datastore, plugins: Mapping[str, Any]
) -> tuple[Callable[[], Awaitable[None]], ...]:
    """Connect plugins that keep per-endpoint state to the datastore, and close them on exit.

    A plugin with ``attach(datastore)`` (the precise prefix scorer: one KV-event subscription per
    endpoint) follows the datastore itself; one with only ``endpoint_event`` (the approximate
    prefix index) is subscribed so it prunes a server the moment it leaves. Plugins with
    ``aclose()`` are closed when the app shuts down.
    """
    closers = []
    for plugin in plugins.values():
        attach = getattr(plugin, "attach", None)
        listener = getattr(plugin, "endpoint_event", None)
        if callable(attach):
            attach(datastore)
        elif callable(listener):
            datastore.subscribe(listener)
        aclose = getattr(plugin, "aclose", None)
        if callable(aclose):
            closers.append(aclose)
    if not closers:
        return ()

    async def close_on_shutdown() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for aclose in closers:
                await aclose()

    return (close_on_shutdown,)


def _scraper_tasks(
    settings: EppSettings, datastore: Datastore, plugins: Mapping[str, Any]
) -> tuple[Callable[[], Awaitable[None]], ...]:
    """The model-server metrics scraper (``--refresh-metrics-interval``).

    Its scheme/path and engine metric mappings come from the config's ``metrics-data-source``
    and ``core-metrics-extractor`` plugins when it declares them (validated at load time).
    """
    from kvroute.datalayer.mappings import MappingRegistry
    from kvroute.datalayer.plugins import CoreMetricsExtractor, MetricsDataSource
    from kvroute.datalayer.scraper import MetricsCollector

    source = next((p for p in plugins.values() if isinstance(p, MetricsDataSource)), None)
    extractor = next((p for p in plugins.values() if isinstance(p, CoreMetricsExtractor)), None)
    mappings = extractor.mappings if extractor else MappingRegistry.from_params(None)
    interval = settings.refresh_metrics_interval_s
    if source is None:
        collector = MetricsCollector(datastore, mappings, interval)
    else:
        collector = MetricsCollector(
            datastore,
            mappings,
            interval,
            scheme=source.params.scheme,
            path=source.params.path,
            insecure_skip_verify=source.params.insecure_skip_verify,
        )
    return (collector.run,)
