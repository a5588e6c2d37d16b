"""lora-affinity-scorer: upstream's 1.0 active / 0.8 free slot / 0.6 waiting / 0 otherwise, plus
the EPP's in-flight adapters (``inflightAdapters``, on by default), read from the datastore's
in-flight ledger (``EndpointLoad.inflight_models``, which the director keeps)."""

from __future__ import annotations

import json
import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import RoutingDecision
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.plugins.scorers.lora_affinity import (
    MAX_NOT_ADAPTERS,
    RECHECK_S,
    LoraAffinityParams,
    LoraAffinityScorer,
    lora_affinity,
    lora_affinity_with_inflight,
)
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn
from kvroute.wiring import build_epp
from tests.fakes import NOW, make_endpoint, make_request, make_state

CASES = [
    ({"active": ["sql-lora"], "max_active": 1}, 1.0),
    ({"active": ["sql-lora", "other"], "max_active": 2}, 1.0),
    ({"active": ["other"], "max_active": 4}, 0.8),
    ({"waiting_models": ["sql-lora"], "max_active": 4}, 0.8),
    ({"active": ["a"], "waiting_models": ["sql-lora"], "max_active": 2}, 0.6),
    ({"active": ["a", "b"], "max_active": 2}, 0.0),
    ({}, 0.0),
]
IDS = [
    "adapter active",
    "adapter active among others",
    "free adapter slot",
    "waiting but slots free: free slot wins (0.8 before 0.6)",
    "waiting, no free slot",
    "no slot, not loaded",
    "server without LoRA (max 0)",
]


@pytest.mark.parametrize(("metrics", "expected"), CASES, ids=IDS)
def test_lora_affinity_scorer(metrics: dict[str, object], expected: float) -> None:
    e = make_endpoint("e0", **metrics)  # type: ignore[arg-type]
    scores = LoraAffinityScorer().score(make_state(), make_request("sql-lora"), [e])
    assert scores == {"e0": expected}


def test_scores_the_target_model_not_the_incoming_name() -> None:
    e = make_endpoint("e0", active=["sql-lora-v2"], max_active=1)
    request = make_request("sql-lora", target="sql-lora-v2")
    assert LoraAffinityScorer().score(make_state(), request, [e]) == {"e0": 1.0}


def _stored(store: Datastore, e: Endpoint) -> Endpoint:
    """``e`` in ``store``: the endpoint whose ``load`` is the datastore's ledger."""
    store.upsert_endpoint(e.name, e.address, e.port, e.labels)
    stored = store.update_metrics(e.name, e.metrics)
    assert stored is not None
    return stored


def _learn(scorer: LoraAffinityScorer, *adapters: str) -> None:
    """Let the scorer see a scrape (of some other endpoint) that lists ``adapters`` as adapters."""
    seen = make_endpoint("seen", waiting_models=adapters, max_active=len(adapters))
    for adapter in adapters:
        scorer.score(make_state(), make_request(adapter), [seen])


def _send(
    scorer: LoraAffinityScorer, store: Datastore, adapter: str, target: Endpoint
) -> InferenceRequest:
    """What the director does at send: count the request on the datastore's ledger."""
    _learn(scorer, adapter)
    request = make_request(adapter)
    store.on_request_sent(target.name, model=request.target_model)
    return request


def _finish(store: Datastore, request: InferenceRequest, target: Endpoint) -> None:
    """What the director does at completion (or client disconnect)."""
    store.on_request_finished(target.name, load=target.load, model=request.target_model)


INFLIGHT_CASES: list[tuple[dict[str, object], list[str], float]] = [
    ({"active": ["a"], "max_active": 3}, ["sql-lora"], 1.0),
    ({"active": ["a"], "max_active": 3}, ["b", "c"], 0.0),
    ({"active": ["a"], "max_active": 3}, ["b"], 0.8),
    ({"active": ["a", "b"], "max_active": 3}, ["a", "b", "a"], 0.8),
    ({"active": ["a"], "waiting_models": ["b"], "max_active": 3}, ["b", "c"], 0.0),
    ({"active": ["a"], "waiting_models": ["sql-lora"], "max_active": 2}, ["c"], 0.6),
    ({"max_active": 2}, [], 0.8),
]
INFLIGHT_IDS = [
    "adapter the EPP just sent counts as active before any scrape",
    "two new adapters in flight fill the free slots the scrape still shows",
    "one new adapter in flight leaves one slot",
    "in-flight adapters already active take no extra slot",
    "waiting adapter in flight is not counted twice",
    "waiting adapter and no slot left: 0.6 as upstream",
    "nothing in flight: upstream score",
]


@pytest.mark.parametrize(("metrics", "sent", "expected"), INFLIGHT_CASES, ids=INFLIGHT_IDS)
def test_inflight_adapters_count_as_active_and_use_slots(
    metrics: dict[str, object], sent: list[str], expected: float
) -> None:
    store = Datastore(clock=lambda: NOW)
    e = _stored(store, make_endpoint("e0", **metrics))  # type: ignore[arg-type]
    scorer = LoraAffinityScorer()
    for adapter in sent:
        _send(scorer, store, adapter, e)
    _learn(scorer, "sql-lora")  # the scored request is for an adapter some scrape has listed
    assert scorer.score(make_state(), make_request("sql-lora"), [e]) == {"e0": expected}


def test_completion_uncounts_and_forgets_idle_endpoints() -> None:
    store = Datastore(clock=lambda: NOW)
    e0 = _stored(store, make_endpoint("e0", max_active=1))
    scorer = LoraAffinityScorer()
    first = _send(scorer, store, "x", e0)
    second = _send(scorer, store, "x", e0)
    _learn(scorer, "y")
    assert scorer.inflight(e0) == {"x": 2}
    assert scorer.score(make_state(), make_request("y"), [e0]) == {"e0": 0.0}
    _finish(store, first, e0)
    assert scorer.inflight(e0) == {"x": 1}
    _finish(store, second, e0)
    assert scorer.inflight(e0) == {}
    assert e0.load.inflight_models == {}  # the ledger forgets a model with nothing in flight
    assert scorer.score(make_state(), make_request("y"), [e0]) == {"e0": 0.8}
    _finish(store, second, e0)  # a stray completion never goes negative
    assert scorer.inflight(e0) == {}


def test_base_model_is_scored_on_the_scrape_alone() -> None:
    """A name no scrape lists as an adapter (a base model) needs no slot: the EPP's in-flight
    adapters must not turn the "free slot" 0.8 into 0 and push base traffic elsewhere."""
    store = Datastore(clock=lambda: NOW)
    e0 = _stored(store, make_endpoint("e0", max_active=1))
    scorer = LoraAffinityScorer()
    _send(scorer, store, "x", e0)  # the only slot is taken by an in-flight adapter
    _learn(scorer, "y")
    assert scorer.score(make_state(), make_request("y"), [e0]) == {"e0": 0.0}
    assert scorer.score(make_state(), make_request("base"), [e0]) == {"e0": 0.8}


def test_upstream_formula_keeps_no_counts() -> None:
    store = Datastore(clock=lambda: NOW)
    e0 = _stored(store, make_endpoint("e0", max_active=1))
    scorer = LoraAffinityScorer(params=LoraAffinityParams(inflight_adapters=False))
    _send(scorer, store, "x", e0)
    assert scorer.inflight(e0) == {}
    assert scorer.score(make_state(), make_request("y"), [e0]) == {"e0": 0.8}


_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: lora-affinity-scorer
  parameters: %s
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: lora-affinity-scorer}
  - {pluginRef: max-score-picker}
"""


def test_config_parameters_and_hook_registration() -> None:
    registry = default_registry(include_entry_points=False)
    for text, inflight in (("{}", True), ("{inflightAdapters: false}", False)):
        setup = build_scheduling(parse_epp_config(_CONFIG % text), registry)
        scorer = setup.plugins["lora-affinity-scorer"]
        assert isinstance(scorer, LoraAffinityScorer)
        assert scorer.params.inflight_adapters is inflight
        # no request hooks of its own: it reads the datastore's ledger, which the director keeps
        assert scorer not in setup.hooks
    with pytest.raises(PluginValidationError, match="inflightAdapter"):
        build_scheduling(parse_epp_config(_CONFIG % "{inflightAdapter: true}"), registry)


def test_director_lifecycle_spreads_new_adapters_between_scrapes() -> None:
    """Through the real director: two endpoints with one free slot each and a scrape that never
    moves. The first request takes e0's slot; the second, for another adapter, must go to e1
    (upstream's formula would still see e0's free slot); completion gives the slot back."""
    registry = default_registry(include_entry_points=False)
    store = Datastore(clock=lambda: NOW)
    for e in (make_endpoint("e0", max_active=1), make_endpoint("e1", max_active=1)):
        store.upsert_endpoint(e.name, e.address, e.port)
        store.update_metrics(e.name, e.metrics)
    graph = build_epp(
        parse_epp_config(_CONFIG % "{}"),
        store,
        registry=registry,
        rng=random.Random(0),
        clock=lambda: NOW,
    )
    director = graph.director
    scorer = graph.setup.plugins["lora-affinity-scorer"]
    assert isinstance(scorer, LoraAffinityScorer)
    _learn(scorer, "lora-a", "lora-b")  # an earlier scrape elsewhere listed both as adapters

    def send(model: str) -> RoutingDecision:
        body = json.dumps({"model": model, "prompt": "hi"}).encode()
        return director.handle_request(parse_request(body), {}, f"r-{model}")

    first = send("lora-a")
    second = send("lora-b")
    assert {first.target.name, second.target.name} == {"e0", "e1"}
    assert scorer.inflight(first.target) == {"lora-a": 1}
    assert send("lora-a").target.name == first.target.name  # affinity to what it just sent
    director.handle_response_complete(first)
    assert scorer.inflight(first.target) == {"lora-a": 1}


def test_base_model_is_never_counted_and_does_not_herd() -> None:
    """A name no scrape lists as an adapter (the base model) keeps upstream's 0.8 everywhere, so
    concurrent base-model requests are spread by the load scorers, not pulled together."""
    store = Datastore(clock=lambda: NOW)
    e0 = _stored(store, make_endpoint("e0", max_active=2))
    e1 = _stored(store, make_endpoint("e1", max_active=2))
    scorer = LoraAffinityScorer()
    base = make_request("base")
    for _ in range(3):
        assert scorer.score(make_state(), base, [e0, e1]) == {"e0": 0.8, "e1": 0.8}
        store.on_request_sent("e0", model=base.target_model)
    assert scorer.inflight(e0) == {}


def test_adapter_is_counted_once_a_scrape_lists_it() -> None:
    """A name counts as an adapter from the first scrape that lists it: from then on every
    request for it in flight on the ledger counts, also those sent before it was known."""
    store = Datastore(clock=lambda: NOW)
    e0 = _stored(store, make_endpoint("e0", max_active=1))
    scorer = LoraAffinityScorer()
    fresh = make_request("fresh-lora")
    scorer.score(make_state(), fresh, [e0])
    store.on_request_sent("e0", model=fresh.target_model)
    assert scorer.inflight(e0) == {}  # not known as an adapter yet: upstream behaviour
    e0_scraped = _stored(store, make_endpoint("e0", waiting_models=["fresh-lora"], max_active=1))
    # "not an adapter" is remembered for RECHECK_S, so a lookup just after is not repeated ...
    assert scorer.score(make_state(NOW + RECHECK_S / 2), fresh, [e0_scraped]) == {"e0": 0.6}
    assert scorer.inflight(e0_scraped) == {}
    # ... and made again once it has expired: now the scrape lists it, and it is counted.
    later = make_state(NOW + 2 * RECHECK_S)
    assert scorer.score(later, fresh, [e0_scraped]) == {"e0": 1.0}  # in flight there: active
    assert scorer.inflight(e0_scraped) == {"fresh-lora": 1}
    store.on_request_finished("e0", load=e0_scraped.load, model=fresh.target_model)
    assert scorer.score(later, fresh, [e0_scraped]) == {"e0": 0.6}  # finished: the scrape's


def test_not_adapter_memory_is_bounded() -> None:
    scorer = LoraAffinityScorer()
    e0 = make_endpoint("e0", max_active=1)
    for i in range(MAX_NOT_ADAPTERS + 10):
        scorer.score(make_state(), make_request(f"client-chosen-{i}"), [e0])
    assert len(scorer._not_adapters) <= MAX_NOT_ADAPTERS


def test_neutral_unknown_models_gives_base_traffic_no_preference() -> None:
    """With ``neutralUnknownModels`` a base model gets no score (the same everywhere), while an
    adapter a scrape lists keeps upstream's formula."""
    scorer = LoraAffinityScorer(params=LoraAffinityParams(neutral_unknown_models=True))
    e0 = make_endpoint("e0", active=["ad-1"], max_active=2)
    e1 = make_endpoint("e1", active=["ad-2", "ad-3"], max_active=2)
    assert scorer.score(make_state(), make_request("base"), [e0, e1]) == {}
    assert scorer.score(make_state(), make_request("ad-1"), [e0, e1]) == {"e0": 1.0, "e1": 0.0}


def test_adapter_scores_are_a_unit_column_of_the_per_endpoint_formula() -> None:
    """Random pools: the scorer's column equals the per-endpoint formula (with and without the
    in-flight adapters), and every value is one of upstream's four levels (``unit`` holds)."""
    rng = random.Random(12)
    names = ["a1", "a2", "a3", "a4"]
    for inflight_adapters in (True, False):
        scorer = LoraAffinityScorer(
            params=LoraAffinityParams.model_validate({"inflightAdapters": inflight_adapters})
        )
        _learn(scorer, *names)
        for _ in range(200):
            eps = []
            for i in range(rng.randint(1, 10)):
                e = make_endpoint(
                    f"e{i}",
                    active=rng.sample(names, rng.randint(0, 2)),
                    waiting_models=rng.sample(names, rng.randint(0, 1)),
                    max_active=rng.randint(0, 4),
                )
                for m in rng.sample(names, rng.randint(0, 2)):
                    e.load.inflight_models[m] = 1
                eps.append(e)
            target = rng.choice(names)
            col = scorer.score(make_state(), make_request(target), eps)
            assert isinstance(col, ScoreColumn)
            assert col.unit
            if inflight_adapters:
                known = set(names)
                expected = {
                    e.name: lora_affinity_with_inflight(e, target, e.load.inflight_models, known)
                    for e in eps
                }
            else:
                expected = {e.name: lora_affinity(e, target) for e in eps}
            assert dict(col) == expected
            assert col.column is not None
            assert set(col.column) <= {0.0, 0.6, 0.8, 1.0}
