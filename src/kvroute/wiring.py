"""The one place the EPP's object graph is built: config -> plugins -> scheduler -> director.

:func:`build_epp` is used by the EPP (:mod:`kvroute.app`), the dry run (``kvroute schedule``)
and the virtual-time benchmark (``kvroute_bench.epp_router``) alike, so all three run the same
objects with the same lifecycle:

1. the EndpointPickerConfig's plugins are built and validated by the registry and wired into a
   scheduler (:func:`~kvroute.scheduling.builder.build_scheduling`);
2. every plugin is classified once, here, by the capabilities it declares
   (:class:`PluginCapabilities`: request hooks, datastore attach/listener, background task,
   async close, metrics data source/extractor) -- never by probing attributes on a request;
3. the lifecycle's synchronous part runs at once: attachable plugins ``attach(datastore)``,
   listeners are subscribed to it;
4. the director gets the scheduler, the saturation detector and the classified hooks.

``async with graph.running():`` runs the background part -- the metrics scraper (when a scrape
interval is given), each plugin's ``run_background()`` -- in one owned task group, each loop
supervised (a crash is logged and restarted, never the end of the EPP), then cancels them and
awaits every plugin's ``aclose()`` on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kvroute.config.epp_config import EndpointPickerConfig
from kvroute.datalayer.plugins import data_layer_setup
from kvroute.datastore.store import Datastore
from kvroute.flowcontrol.build import build_flow_control
from kvroute.flowcontrol.runtime import FlowController, FlowObserver
from kvroute.plugins.lifecycle import (
    AsyncClosable,
    BackgroundTask,
    DatastoreAttachable,
    DatastoreListener,
    PrefixBlockHolder,
    ReplicatedState,
)
from kvroute.plugins.registry import PluginRegistry, default_registry
from kvroute.requestcontrol.director import Director, Resolver
from kvroute.requestcontrol.hooks import RequestHooks
from kvroute.scheduling.builder import SchedulingSetup, build_scheduling
from kvroute.scheduling.timing import PluginTimings

log = logging.getLogger(__name__)

Loop = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PluginCapabilities:
    """The config's plugins sorted by what they declare; computed once by :func:`build_epp`."""

    hooks: RequestHooks
    attachables: tuple[DatastoreAttachable, ...] = ()
    listeners: tuple[DatastoreListener, ...] = ()  # only those that do not attach themselves
    background: tuple[BackgroundTask, ...] = ()
    closables: tuple[AsyncClosable, ...] = ()
    block_holders: tuple[PrefixBlockHolder, ...] = ()
    replicated: tuple[ReplicatedState, ...] = ()  # shared with active-active peers

    @classmethod
    def classify(cls, plugins: Mapping[str, object]) -> PluginCapabilities:
        items = tuple(plugins.values())
        attachables = tuple(p for p in items if isinstance(p, DatastoreAttachable))
        return cls(
            hooks=RequestHooks.of(items),
            attachables=attachables,
            listeners=tuple(
                p
                for p in items
                if isinstance(p, DatastoreListener) and not isinstance(p, DatastoreAttachable)
            ),
            background=tuple(p for p in items if isinstance(p, BackgroundTask)),
            closables=tuple(p for p in items if isinstance(p, AsyncClosable)),
            block_holders=tuple(p for p in items if isinstance(p, PrefixBlockHolder)),
            replicated=tuple(p for p in items if isinstance(p, ReplicatedState)),
        )


@dataclass(slots=True)
class EppGraph:
    """What :func:`build_epp` built; ``running()`` runs its background part."""

    datastore: Datastore
    setup: SchedulingSetup
    capabilities: PluginCapabilities
    director: Director
    loops: tuple[tuple[str, Loop], ...] = ()
    flow_control: FlowController | None = None  # None: flowControl.enabled is false

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the scraper and the plugins' background tasks; close the plugins on exit."""
        try:
            async with OwnedTasks() as tasks:
                for name, loop in self.loops:
                    tasks.spawn(supervised(loop), name)
                yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close every async-closable plugin, once each, in declaration order."""
        for plugin in self.capabilities.closables:
            try:
                await plugin.aclose()
            except Exception:
                log.exception("closing plugin %r failed", plugin)


def build_epp(
    config: EndpointPickerConfig,
    datastore: Datastore,
    *,
    registry: PluginRegistry | None = None,
    source: str = "<config>",
    resolver: Resolver | None = None,
    profile: str | None = None,
    rng: random.Random | None = None,
    director_rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    timings: PluginTimings | None = None,
    scrape_interval_s: float | None = None,
    emit_endpoint_scores: bool = False,
    flow_observer: FlowObserver | None = None,
    flow_control: bool = True,
) -> EppGraph:
    """Build the EPP's decision graph over ``datastore`` from ``config``.

    ``rng`` seeds the plugins' draws and, unless ``director_rng`` is given, the director's;
    ``clock`` is shared by the plugins and the director (the dry run and the benchmark pass a
    fixed or virtual clock). ``scrape_interval_s`` adds the metrics scraper to the graph's
    background loops (the EPP; the dry run and the benchmark feed metrics themselves).
    """
    registry = registry or default_registry()
    setup = build_scheduling(
        config, registry, source=source, profile=profile, rng=rng, clock=clock, timings=timings
    )
    caps = PluginCapabilities.classify(setup.plugins)
    for attachable in caps.attachables:
        attachable.attach(datastore)
    for listener in caps.listeners:
        datastore.subscribe(listener.endpoint_event)
    # Flow control: on by default; ``flowControl: {enabled: false}`` turns it off.
    # ``flow_control=False``: a caller that cannot hold requests (the virtual-time bench picks at
    # arrival, and drives the sans-IO queues itself) gets legacy admission.
    fc_setup = build_flow_control(config.flow_control, setup.plugins, registry, source)
    controller = None
    if fc_setup is not None and flow_control:
        controller = FlowController(
            fc_setup.settings,
            fc_setup.detector or setup.saturation_detector,
            datastore.endpoints,
            clock=clock,
            observer=flow_observer,
        )
    director = Director(
        datastore,
        resolver,
        setup.scheduler,
        setup.saturation_detector,
        caps.hooks,
        director_rng if director_rng is not None else rng,
        clock,
        timings=timings,
        emit_endpoint_scores=emit_endpoint_scores,
        flow_control=controller,
    )
    loops: list[tuple[str, Loop]] = []
    if scrape_interval_s is not None:
        layer = data_layer_setup(setup.effective_config, setup.plugins, source)
        if layer.runs_metrics:
            loops.append(("metrics-scraper", layer.collector(datastore, scrape_interval_s).run))
    for plugin in caps.background:
        loops.append((f"plugin {_name_of(plugin)}", plugin.run_background))
    return EppGraph(datastore, setup, caps, director, tuple(loops), controller)


def _name_of(plugin: object) -> str:
    return type(plugin).__name__


class OwnedTasks:
    """A TaskGroup whose tasks are cancelled when its ``async with`` block exits.

    ``asyncio.TaskGroup`` alone waits for its tasks on exit; background loops never end by
    themselves, so they are cancelled first, then the group is awaited.
    """

    def __init__(self) -> None:
        self._tg = asyncio.TaskGroup()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> OwnedTasks:
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


async def supervised(make: Loop, *, restart_after_s: float = 1.0) -> None:
    """Run a background loop; a crash is logged and restarted after a pause, never fatal."""
    while True:
        try:
            await make()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task crashed; restarting in %.0fs", restart_after_s)
            await asyncio.sleep(restart_after_s)
