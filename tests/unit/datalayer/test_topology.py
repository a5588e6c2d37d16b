"""topology-extractor: a real Datastore; the extractor attached as the composition root does,
then endpoints added, relabelled and readdressed."""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.topology import TopologyExtractor
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.framework.topology import Topology, topology_of
from kvroute.plugins.lifecycle import DatastoreAttachable
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.wiring import build_epp

REGISTRY = default_registry(include_entry_points=False)
ZONE = "topology.kubernetes.io/zone"
LABELS = {
    "kubernetes.io/hostname": "node-1",
    "topology.kubernetes.io/rack": "rack-a",
    ZONE: "zone-1",
    "topology.kubernetes.io/region": "eu",
}


def build(params: dict[str, Any] | None = None, name: str = "topology-extractor") -> Any:
    plugin = REGISTRY.create("topology-extractor", name, params or {}, PluginContext())
    assert isinstance(plugin, TopologyExtractor)
    assert isinstance(plugin, DatastoreAttachable)
    return plugin


def topo(store: Datastore, name: str, key: str = "Topology") -> Topology | None:
    endpoint = store.get(name)
    assert endpoint is not None
    return topology_of(endpoint, key)


def test_stamps_existing_and_new_endpoints_from_the_default_labels() -> None:
    store = Datastore()
    store.upsert_endpoint("before", "10.0.0.1", 8000, LABELS)
    build().attach(store)
    assert topo(store, "before") == Topology("node-1", "rack-a", "zone-1", "eu")
    store.upsert_endpoint("after", "10.0.0.2", 8000, {ZONE: "zone-2"})
    assert topo(store, "after") == Topology(zone="zone-2")
    # the scheduler's snapshot carries the attribute too
    assert {e.name: topology_of(e) for e in store.endpoints()}["after"] == Topology(zone="zone-2")


def test_follows_label_changes_and_removes_a_topology_that_is_gone() -> None:
    store = Datastore()
    build().attach(store)
    store.upsert_endpoint("e", "10.0.0.1", 8000, {ZONE: "zone-1"})
    store.update_metrics("e", store.get("e").metrics)  # type: ignore[union-attr]
    store.upsert_endpoint("e", "10.0.0.1", 8000, {ZONE: "zone-9", "app": "x"})
    assert topo(store, "e") == Topology(zone="zone-9")
    store.upsert_endpoint("e", "10.0.0.1", 8000, {"app": "x"})  # no topology label left
    assert topo(store, "e") is None
    # a new address is a new server: stamped afresh
    store.upsert_endpoint("e", "10.0.0.7", 8000, {ZONE: "zone-3"})
    assert topo(store, "e") == Topology(zone="zone-3")


def test_configured_label_names_and_producer_key() -> None:
    store = Datastore()
    ext = build({"hostname": "gpu.host", "rack": "nvl72-domain", "zone": "", "region": ""}, "nvl")
    ext.attach(store)
    store.upsert_endpoint("e", "10.0.0.1", 8000, {"gpu.host": "h7", "nvl72-domain": "d3", **LABELS})
    assert topo(store, "e", "Topology/nvl") == Topology("h7", "d3", "zone-1", "eu")
    assert topo(store, "e") is None  # the default key is another producer's


def test_reattach_follows_only_the_new_store() -> None:
    ext = build()
    old, new = Datastore(), Datastore()
    ext.attach(old)
    ext.attach(new)
    old.upsert_endpoint("e", "10.0.0.1", 8000, LABELS)
    assert topo(old, "e") is None
    new.upsert_endpoint("e", "10.0.0.1", 8000, LABELS)
    assert topo(new, "e") is not None


@pytest.mark.parametrize("params", [{"host": "x"}, {"zone": 3}])
def test_bad_parameters_are_named(params: dict[str, Any]) -> None:
    with pytest.raises(PluginValidationError, match=f"topology-extractor.*{next(iter(params))}"):
        build(params)


def test_build_epp_attaches_a_top_level_extractor() -> None:
    config = parse_epp_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: topology-extractor}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: max-score-picker}]}]\n"
    )
    store = Datastore()
    store.upsert_endpoint("e", "10.0.0.1", 8000, {ZONE: "zone-1"})
    build_epp(config, store)
    assert topo(store, "e") == Topology(zone="zone-1")
