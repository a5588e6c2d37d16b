"""The one wiring function: plugins classified once, their lifecycle run wherever it builds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kvroute.config.epp_config import builtin_epp_config, parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginHandle, PluginRegistry, default_registry
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.wiring import PluginCapabilities, build_epp

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def test_default_prefix_index_is_pruned_when_an_endpoint_leaves() -> None:
    registry = default_registry(include_entry_points=False)
    store = Datastore()
    store.upsert_endpoint("a", "127.0.0.1", 8000, {})
    store.upsert_endpoint("b", "127.0.0.1", 8001, {})
    graph = build_epp(builtin_epp_config("default", registry), store, registry=registry)
    scorer = graph.setup.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer)
    assert graph.capabilities.closables == ()  # nothing to close
    assert graph.capabilities.listeners == (scorer,)
    scorer.index.add("a", [1, 2, 3])
    scorer.index.add("b", [1, 2])
    store.remove_endpoint("a")
    assert scorer.index.servers() == frozenset({"b"})
    assert scorer.index.holders(1) == frozenset({"b"})


class _Attaching:
    """Stand-in with the precise scorer's lifecycle surface (attach/run_background/aclose)."""

    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("test-attaching", name)
        self.attached: Datastore | None = None
        self.runs = 0
        self.restarted = asyncio.Event()
        self.closed = False

    def attach(self, datastore: Datastore) -> None:
        self.attached = datastore

    def endpoint_event(self, event: object) -> None:  # attaches itself: never subscribed
        raise AssertionError("an attaching plugin follows the datastore itself")

    async def run_background(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("first run crashes: the supervisor restarts it")
        self.restarted.set()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> _Attaching:
    return _Attaching(name)


def _graph(store: Datastore) -> tuple[Any, _Attaching]:
    registry = PluginRegistry(dict(default_registry(include_entry_points=False).factories))
    registry.register("test-attaching", _factory)
    config = parse_epp_config(HEAD + "plugins: [{type: test-attaching}, {type: queue-scorer}]\n")
    graph = build_epp(config, store, registry=registry)
    plugin = graph.setup.plugins["test-attaching"]
    assert isinstance(plugin, _Attaching)
    return graph, plugin


async def test_attaching_plugin_is_attached_run_supervised_and_closed_on_shutdown() -> None:
    store = Datastore()
    graph, plugin = _graph(store)
    assert plugin.attached is store  # attached when the graph is built
    caps = graph.capabilities
    assert caps.attachables == (plugin,)
    assert caps.listeners == ()
    assert caps.background == (plugin,)
    assert caps.closables == (plugin,)
    store.upsert_endpoint("a", "127.0.0.1", 8000)  # not a listener: no AssertionError
    async with graph.running():
        # crashed once, restarted after the supervisor's pause
        await asyncio.wait_for(plugin.restarted.wait(), 5)
        assert not plugin.closed
    assert plugin.closed


def test_capabilities_are_classified_once_by_protocol() -> None:
    registry = default_registry(include_entry_points=False)
    config = parse_epp_config(
        HEAD
        + "plugins:\n"
        + "- {type: metrics-data-source, parameters: {scheme: https, path: /m}}\n"
        + "- {type: core-metrics-extractor}\n"
        + "- {type: lora-affinity-scorer}\n"
        + "- {type: prefix-cache-scorer}\n"
    )
    graph = build_epp(config, Datastore(), registry=registry, scrape_interval_s=0.05)
    caps = PluginCapabilities.classify(graph.setup.plugins)
    plugins = graph.setup.plugins
    assert caps.hooks.prepare_data == (plugins["prefix-cache-scorer"],)
    assert caps.hooks.pre_request == (plugins["prefix-cache-scorer"],)
    assert caps.hooks.response_complete == ()  # lora-affinity reads the datastore's ledger
    assert [name for name, _ in graph.loops] == ["metrics-scraper"]
    assert build_epp(config, Datastore(), registry=registry).loops == ()  # no interval: no scraper


def test_request_control_plugins_reach_the_director() -> None:
    """Admitters, header processors and screeners declared in a config are classified once at
    load and handed to the director (issue 18)."""
    config = parse_epp_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: probabilistic-admitter}, {type: agent-identity}, "
        "{type: random-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: random-picker}]}]\n"
    )
    graph = build_epp(config, Datastore())
    hooks = graph.director.hooks
    assert [a.typed_name.type for a in hooks.admitters] == ["probabilistic-admitter"]
    assert [h.typed_name.type for h in hooks.header_processors] == ["agent-identity"]
    assert hooks.screeners == ()
