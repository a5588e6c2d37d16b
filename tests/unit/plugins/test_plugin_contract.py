"""Contract over every registered plugin type: what the framework may rely on.

Every scorer returns only keys of its input with values in [0, 1] (given well-formed metrics);
every filter returns a subset of its input; every picker returns distinct input endpoints. The
test iterates over the registry, so a newly registered plugin is covered without editing it.
"""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from kvroute.datalayer.http_source import PollingExtractor
from kvroute.datalayer.plugins import (
    CoreMetricsExtractor,
    DataLayerSource,
    MetricsDataSource,
    RequestParser,
)
from kvroute.datalayer.topology import TopologyExtractor
from kvroute.errors import PluginValidationError
from kvroute.flowcontrol.policies import is_fairness, is_ordering, is_usage_limit
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import (
    is_filter,
    is_hook,
    is_picker,
    is_profile_handler,
    is_scorer,
)
from kvroute.scheduling.interfaces import Filter, Picker, Scorer
from kvroute.scheduling.plugins.prefix.producer import TokenProducer
from kvroute.scheduling.plugins.profile_handlers.disagg import Decider
from kvroute.scheduling.profile import ScoredView
from kvroute.scheduling.request import Criticality
from tests.fakes import NOW, make_endpoint, make_request, make_state

REGISTRY = default_registry(include_entry_points=False)
TYPES = sorted(REGISTRY.types)

ENDPOINT_SETS = {
    "mixed": [
        make_endpoint("e0"),
        make_endpoint("e1", waiting=12, running=30, kv=0.93, sent=3),
        make_endpoint("e2", waiting=3, kv=0.4, active=["lora-a"], max_active=2),
        make_endpoint("e3", waiting=1, kv=0.1, waiting_models=["lora-a"], max_active=1),
        make_endpoint("e4", kv=0.7, age=5.0),
        make_endpoint("e5", never_scraped=True),
    ],
    "single": [make_endpoint("e0", waiting=2, kv=0.5)],
    "all saturated": [make_endpoint(f"e{i}", waiting=50 + i, kv=0.99) for i in range(4)],
    "empty": [],
}
REQUESTS = [
    make_request("base", criticality=Criticality.CRITICAL, prompt="x" * 300),
    make_request("lora-a", criticality=Criticality.STANDARD),
    make_request("base", criticality=Criticality.SHEDDABLE, prompt="shared prefix " * 20),
]


def _build(type_name: str) -> Any:
    """The plugin with default parameters; skipped if the type has required parameters.

    Such a plugin (e.g. one that needs a tokenizer directory) must then prove the contract in
    its own tests; this test cannot invent its parameters.
    """
    ctx = PluginContext(clock=lambda: NOW, random_source=random.Random(0))
    try:
        return REGISTRY.create(type_name, type_name, {}, ctx)
    except PluginValidationError as exc:
        pytest.skip(f"{type_name} has required parameters: {exc.message}")


DATA_LAYER_TYPES = (
    MetricsDataSource,
    CoreMetricsExtractor,
    RequestParser,
    Decider,
    DataLayerSource,
    PollingExtractor,
    TopologyExtractor,  # stamps endpoint attributes from labels (attached to the datastore)
)


def test_registry_has_the_upstream_built_ins() -> None:
    expected = {
        "queue-scorer",
        "running-requests-size-scorer",
        "kv-cache-utilization-scorer",
        "lora-affinity-scorer",
        "max-score-picker",
        "random-picker",
        "weighted-random-picker",
        "single-profile-handler",
        "utilization-detector",
        "decision-tree-filter",
        "metrics-data-source",
        "core-metrics-extractor",
        "openai-parser",
    }
    assert expected <= set(TYPES)


@pytest.mark.parametrize("type_name", TYPES)
def test_plugin_builds_with_defaults_and_names_itself(type_name: str) -> None:
    plugin = _build(type_name)
    assert plugin.typed_name.type == type_name
    assert plugin.typed_name.name == type_name
    assert (
        is_filter(plugin)
        or is_scorer(plugin)
        or is_picker(plugin)
        or is_profile_handler(plugin)
        or callable(getattr(plugin, "prepare_data", None))
        # request-control hooks: admitters, request-header processors, screeners
        or is_hook(plugin)
        # data-layer/parser plugins only carry validated parameters for the composition root;
        # P/D deciders are consulted by disagg-profile-handler; the other dataLayer.sources
        # (dcgm, models) run through the lifecycle with the extractors bound under them
        or isinstance(plugin, DATA_LAYER_TYPES)
        # flow-control policies (ordering / fairness / usage limit)
        or is_ordering(plugin)
        or is_fairness(plugin)
        or is_usage_limit(plugin)
        # token-producer (estimate backend): its tokens are the level-1 blocks the prefix
        # producer already cuts, so it only validates its parameters at load
        or isinstance(plugin, TokenProducer)
    )


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("endpoint_set", sorted(ENDPOINT_SETS))
def test_plugin_contract(type_name: str, endpoint_set: str) -> None:
    plugin = _build(type_name)
    endpoints = ENDPOINT_SETS[endpoint_set]
    input_names = [e.name for e in endpoints]
    for request in REQUESTS:
        state = make_state()
        prepare = getattr(plugin, "prepare_data", None)
        if callable(prepare):
            prepare(state, request, endpoints)
        if is_scorer(plugin):
            scores = cast(Scorer, plugin).score(state, request, endpoints)
            assert set(scores) <= set(input_names), type_name
            assert all(0.0 <= v <= 1.0 for v in scores.values()), (type_name, scores)
        if is_filter(plugin):
            kept = [e.name for e in cast(Filter, plugin).filter(state, request, endpoints)]
            assert set(kept) <= set(input_names), type_name
            assert len(kept) == len(set(kept)), type_name
        if is_picker(plugin):
            view = ScoredView(endpoints, {n: (i % 3) / 2 for i, n in enumerate(input_names)})
            picked = [e.name for e in cast(Picker, plugin).pick(state, view).targets]
            assert set(picked) <= set(input_names), type_name
            assert len(picked) == len(set(picked)), type_name
            assert bool(picked) == bool(endpoints), type_name
