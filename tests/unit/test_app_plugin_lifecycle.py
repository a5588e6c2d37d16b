"""The composition root connects stateful plugins to the datastore and closes them on exit."""

from __future__ import annotations

import asyncio

from kvroute.app import _plugin_lifecycle_tasks
from kvroute.config.epp_config import builtin_epp_config
from kvroute.datastore.store import Datastore
from kvroute.plugins.registry import default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer


def test_default_prefix_index_is_pruned_when_an_endpoint_leaves() -> None:
    registry = default_registry(include_entry_points=False)
    setup = build_scheduling(builtin_epp_config("default", registry), registry)
    scorer = setup.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer)
    store = Datastore()
    store.upsert_endpoint("a", "127.0.0.1", 8000, {})
    store.upsert_endpoint("b", "127.0.0.1", 8001, {})
    assert _plugin_lifecycle_tasks(store, setup.plugins) == ()  # nothing to close
    scorer.index.add("a", [1, 2, 3])
    scorer.index.add("b", [1, 2])
    store.remove_endpoint("a")
    assert scorer.index.servers() == frozenset({"b"})
    assert scorer.index.holders(1) == frozenset({"b"})


class _Attaching:
    """Stand-in with the precise scorer's lifecycle surface (attach/aclose)."""

    def __init__(self) -> None:
        self.attached: Datastore | None = None
        self.closed = False

    def attach(self, datastore: Datastore) -> None:
        self.attached = datastore

    async def aclose(self) -> None:
        self.closed = True


async def test_attaching_plugin_is_attached_and_closed_on_shutdown() -> None:
    store = Datastore()
    plugin = _Attaching()
    (task_factory,) = _plugin_lifecycle_tasks(store, {"p": plugin})
    assert plugin.attached is store
    task = asyncio.create_task(task_factory())
    await asyncio.sleep(0)
    assert not plugin.closed
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert plugin.closed
