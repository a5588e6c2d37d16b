"""Director: status codes, subset hints, admission, model resolution, hooks, completion.

Real parts throughout: the Datastore, the OpenAI parser, the resource loader and
ModelResolver, and the scheduler built from an EndpointPickerConfig.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from typing import Any

import pytest

from kvroute.config.epp_config import builtin_epp_config, parse_epp_config
from kvroute.config.resources import load_resources_text
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import EppError, ModelNotFoundError, NoCandidatesError, PoolExhaustedError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import ParsedRequest, parse_request
from kvroute.requestcontrol.director import Director, RoutingDecision, subset_candidates
from kvroute.requestcontrol.hooks import Usage
from kvroute.requestcontrol.model_resolution import ModelResolver
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import CycleState, CycleTrace, SchedulingResult
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.timing import PluginTimings
from tests.fakes import NOW, make_endpoint, names

REGISTRY = default_registry(include_entry_points=False)
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
QUEUE_KV = HEAD + (
    "plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]\n"
    "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer, weight: 2}, "
    "{pluginRef: kv-cache-utilization-scorer, weight: 2}]}]\n"
)
RESOURCES = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: pool}
spec:
  targetPortNumber: 8000
  selector: {app: vllm}
  extensionRef: {name: pool-epp}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: sql-lora}
spec:
  modelName: sql-lora
  criticality: Critical
  poolRef: {name: pool}
  targetModels: [{name: sql-lora-1fdg2, weight: 100}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: batch}
spec:
  modelName: batch-model
  criticality: Sheddable
  poolRef: {name: pool}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: background}
spec:
  priority: -5
  poolRef: {name: pool}
"""


def _store(endpoints: Sequence[Endpoint]) -> Datastore:
    store = Datastore(clock=lambda: NOW)
    for e in endpoints:
        store.upsert_endpoint(e.name, e.address, e.port, e.labels)
        store.update_metrics(e.name, e.metrics)
    return store


def _director(
    endpoints: Sequence[Endpoint],
    config: str = QUEUE_KV,
    *,
    resources: str | None = RESOURCES,
    hooks: Sequence[Any] = (),
    **kwargs: Any,
) -> tuple[Director, Datastore]:
    rng = random.Random(0)
    setup = build_scheduling(parse_epp_config(config), REGISTRY, rng=rng, clock=lambda: NOW)
    resolver = None
    if resources is not None:
        resolver = ModelResolver(load_resources_text(resources), random.Random(0))
    store = _store(endpoints)
    director = Director(
        store,
        resolver,
        setup.scheduler,
        setup.saturation_detector,
        [*setup.hooks, *hooks],
        rng,
        clock=lambda: NOW,
        **kwargs,
    )
    return director, store


def _parsed(model: str = "base", prompt: str = "hello", **extra: Any) -> ParsedRequest:
    return parse_request(json.dumps({"model": model, "prompt": prompt, **extra}).encode())


POOL = [
    make_endpoint("e0", waiting=3, kv=0.2),
    make_endpoint("e1", waiting=0, kv=0.1),
    make_endpoint("e2", waiting=10, kv=0.2),
]


def test_routes_to_the_best_endpoint_and_counts_it_in_flight() -> None:
    director, store = _director(POOL)
    decision = director.handle_request(_parsed(), {}, "r1")
    assert decision.target.name == "e1"
    assert decision.fallbacks == ()
    assert decision.endpoint_header == "10.0.0.2:8000"
    load = store.load_of("e1")
    assert load is not None
    assert (load.inflight, load.sent_since_scrape) == (1, 1)
    assert isinstance(decision.result, SchedulingResult)


def test_completion_after_the_target_was_replaced_leaves_the_new_counters_alone() -> None:
    director, store = _director(POOL)
    decision = director.handle_request(_parsed(), {}, "r1")
    assert decision.target.name == "e1"
    store.upsert_endpoint("e1", "10.0.9.9", 8000, {})  # the pod behind e1 was replaced
    store.on_request_sent("e1")  # a request counted on the new one
    director.handle_response_complete(decision)
    load = store.load_of("e1")
    assert load is not None
    assert load.inflight == 1


def test_first_token_moves_the_prompt_out_of_the_prefill_ledger_once() -> None:
    director, store = _director(POOL)
    decision = director.handle_request(_parsed(prompt="x" * 400), {}, "r1")
    load = store.load_of(decision.target.name)
    assert load is not None
    assert (load.inflight_tokens, load.prefill_tokens) == (100, 100)
    director.handle_first_token(decision)
    director.handle_first_token(decision)  # a second report changes nothing
    assert (load.inflight, load.inflight_tokens, load.prefill_tokens) == (1, 100, 0)
    other = director.handle_request(_parsed(prompt="y" * 80), {}, "r2")
    other_load = store.load_of(other.target.name)
    assert other_load is not None
    assert other_load.prefill_tokens == 20  # the first one's prompt is no longer there
    director.handle_response_complete(decision)
    director.handle_response_complete(other)  # no first token: released at completion
    director.handle_first_token(other)  # after completion: a no-op
    assert (load.inflight_tokens, load.prefill_tokens) == (0, 0)
    assert (other_load.inflight_tokens, other_load.prefill_tokens) == (0, 0)


def test_prefill_charge_is_the_prompt_not_cached_on_the_target() -> None:
    """With a prefix-cache producer the ledger is charged what the target must compute."""
    config = HEAD + (
        "plugins: [{type: prefix-cache-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix-cache-scorer}]}]\n"
    )
    director, store = _director([make_endpoint("only")], config)
    prompt = "the same long system prompt, sent twice. " * 100  # 4,100 chars: 1,025 tokens
    first = director.handle_request(_parsed(prompt=prompt), {}, "r1")
    assert first.prefill_tokens == first.inflight_tokens == 1025  # nothing cached yet
    second = director.handle_request(_parsed(prompt=prompt), {}, "r2")
    assert second.inflight_tokens == 1025
    assert 0 <= second.prefill_tokens < 100  # all but the last partial block is cached there
    load = store.load_of("only")
    assert load is not None
    assert load.prefill_tokens == first.prefill_tokens + second.prefill_tokens
    director.handle_first_token(second)
    director.handle_response_complete(first)
    director.handle_response_complete(second)
    assert (load.inflight_tokens, load.prefill_tokens) == (0, 0)


def test_fallback_list_in_picker_order() -> None:
    config = HEAD + (
        "plugins: [{type: queue-scorer}, "
        "{type: max-score-picker, parameters: {maxNumOfEndpoints: 3}}]\n"
    )
    director, _ = _director(POOL, config)
    decision = director.handle_request(_parsed(), {}, "r1")
    assert [decision.target.name, *names(decision.fallbacks)] == ["e1", "e0", "e2"]
    assert decision.endpoint_header == "10.0.0.2:8000,10.0.0.1:8000,10.0.0.3:8000"


def test_in_flight_accounting_spreads_back_to_back_requests() -> None:
    equal = [make_endpoint(f"e{i}") for i in range(3)]
    director, _ = _director(equal)
    targets = {director.handle_request(_parsed(), {}, f"r{i}").target.name for i in range(3)}
    assert targets == {"e0", "e1", "e2"}


STATUS_CASES = [
    ([], None, NoCandidatesError, 503, "failed to find endpoint candidates"),
    (POOL, [], NoCandidatesError, 503, "failed to find endpoint candidates"),
    (POOL, ["192.168.9.9:8000"], NoCandidatesError, 503, "failed to find endpoint candidates"),
]


@pytest.mark.parametrize(
    ("endpoints", "hint", "error", "status", "message"),
    STATUS_CASES,
    ids=["empty pool", "empty subset hint", "subset matches nothing"],
)
def test_no_candidates_is_503(
    endpoints: list[Endpoint],
    hint: list[str] | None,
    error: type[EppError],
    status: int,
    message: str,
) -> None:
    director, _ = _director(endpoints)
    with pytest.raises(error) as exc:
        director.handle_request(_parsed(), {}, "r1", hint)
    assert exc.value.http_status == status
    assert message in exc.value.message


SATURATED = [make_endpoint("e0", waiting=9, kv=0.9), make_endpoint("e1", waiting=7, kv=0.95)]


@pytest.mark.parametrize(
    ("model", "headers", "endpoints", "shed"),
    [
        ("batch-model", {}, SATURATED, True),
        ("base", {"x-gateway-inference-objective": "background"}, SATURATED, True),
        ("batch-model", {}, POOL, False),
        ("sql-lora", {}, SATURATED, False),
        ("base", {}, SATURATED, False),
        ("batch-model", {}, [make_endpoint("e0", age=1.0)], True),
    ],
    ids=[
        "sheddable model while saturated",
        "negative-priority objective while saturated",
        "sheddable with capacity",
        "critical while saturated",
        "standard (default) while saturated",
        "sheddable, only stale metrics",
    ],
)
def test_admission_sheds_only_sheddable_when_saturated(
    model: str, headers: dict[str, str], endpoints: list[Endpoint], shed: bool
) -> None:
    director, _ = _director(endpoints)
    if shed:
        with pytest.raises(PoolExhaustedError) as exc:
            director.handle_request(_parsed(model), headers, "r1")
        assert exc.value.http_status == 429
        assert exc.value.message == "system saturated, sheddable request dropped"
    else:
        assert director.handle_request(_parsed(model), headers, "r1").target.name in {
            e.name for e in endpoints
        }


def _decision_tree_config(**parameters: Any) -> str:
    config = builtin_epp_config("decision-tree", REGISTRY).model_dump(by_alias=True)
    for plugin in config["plugins"]:
        if plugin["type"] == "decision-tree-filter":
            plugin["parameters"] = dict(plugin.get("parameters") or {}, **parameters)
    return json.dumps(config)


def test_filter_leaving_nothing_is_429() -> None:
    # The legacy tree drops a Standard request (priority 0, so admission lets it through).
    config = _decision_tree_config(treatStandardAsCritical=False)
    director, _ = _director(SATURATED, config, resources=None)
    with pytest.raises(PoolExhaustedError) as exc:
        director.handle_request(_parsed(), {}, "r1")
    assert exc.value.http_status == 429
    assert exc.value.message.startswith("failed to find target endpoint:")


def test_decision_tree_places_standard_on_a_saturated_pool_by_default() -> None:
    config = builtin_epp_config("decision-tree", REGISTRY).model_dump_json(by_alias=True)
    director, _ = _director(SATURATED, config, resources=None)
    assert director.handle_request(_parsed(), {}, "r1").target.name in names(SATURATED)


def test_model_resolution_rewrites_target_and_keeps_incoming() -> None:
    director, _ = _director(POOL)
    decision = director.handle_request(_parsed("sql-lora"), {}, "r1")
    req = decision.request
    assert (req.incoming_model, req.target_model) == ("sql-lora", "sql-lora-1fdg2")
    assert req.body["model"] == "sql-lora-1fdg2"
    assert req.criticality.value == "Critical"
    assert req.priority == 1


def test_unknown_model_rejected_when_resolver_is_strict() -> None:
    store = _store(POOL)
    setup = build_scheduling(parse_epp_config(QUEUE_KV), REGISTRY)
    resolver = ModelResolver(load_resources_text(RESOURCES), unknown_model="reject")
    director = Director(store, resolver, setup.scheduler, setup.saturation_detector)
    with pytest.raises(ModelNotFoundError) as exc:
        director.handle_request(_parsed("nope"), {}, "r1")
    assert exc.value.http_status == 404


def test_without_resources_the_rewrite_header_still_applies() -> None:
    director, _ = _director(POOL, resources=None)
    decision = director.handle_request(
        _parsed("base"), {"x-gateway-model-name-rewrite": "base-v2"}, "r1"
    )
    assert decision.request.target_model == "base-v2"
    assert decision.request.incoming_model == "base"


def test_request_fields_come_from_parse_and_headers() -> None:
    director, _ = _director(POOL, resources=None)
    parsed = _parsed("base", prompt="abc", stream=True)
    decision = director.handle_request(
        parsed, {"x-gateway-inference-fairness-id": "tenant-a"}, "req-7"
    )
    req = decision.request
    assert req.request_id == "req-7"
    assert req.fairness_id == "tenant-a"
    assert req.stream is True
    assert req.prompt_text == "abc"
    assert req.request_size_bytes == len(parsed.raw)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, ["e0", "e1", "e2"]),
        (["10.0.0.1:8000", "10.0.0.3:9999"], ["e0", "e2"]),
        (["10.0.0.3"], ["e2"]),
        (["10.0.0.2:8000", "172.16.0.1:8000"], ["e1"]),
        ([], []),
    ],
    ids=["no hint", "ports ignored", "bare ip", "partial match", "empty"],
)
def test_subset_candidates(hint: list[str] | None, expected: list[str]) -> None:
    assert names(subset_candidates(POOL, hint)) == expected


def test_subset_filter_can_be_disabled() -> None:
    director, _ = _director(POOL, disable_subset_filter=True)
    assert director.handle_request(_parsed(), {}, "r1", ["172.16.0.1:8000"]).target.name == "e1"


class RecordingHooks:
    """A PrepareData + PreRequest + ResponseComplete plugin recording the order of calls."""

    def __init__(self, fail: str | None = None) -> None:
        self.typed_name = TypedName("recording-hooks", "rec")
        self.calls: list[str] = []
        self.fail = fail

    def _record(self, what: str) -> None:
        self.calls.append(what)
        if self.fail == what:
            raise RuntimeError(f"{what} broke")

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        self._record("prepare")

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        assert result.primary is not None
        self._record("pre_request")

    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None:
        self._record(f"complete:{endpoint.name}:{usage.completion_tokens if usage else None}")


def test_hooks_run_in_order_and_completion_is_idempotent() -> None:
    hooks = RecordingHooks()
    director, store = _director(POOL, hooks=[hooks])
    decision = director.handle_request(_parsed(max_tokens=10), {}, "r1")
    assert hooks.calls == ["prepare", "pre_request"]
    load = store.load_of("e1")
    assert load is not None
    assert load.inflight == 1
    assert load.inflight_tokens == decision.inflight_tokens > 0
    for _ in range(3):
        director.handle_response_complete(decision, Usage(completion_tokens=7))
    assert hooks.calls == ["prepare", "pre_request", "complete:e1:7"]
    assert (load.inflight, load.inflight_tokens) == (0, 0)
    assert decision.completed


@pytest.mark.parametrize("broken", ["prepare", "pre_request"], ids=["prepare data", "pre request"])
def test_failing_hook_is_logged_not_fatal(broken: str, caplog: pytest.LogCaptureFixture) -> None:
    hooks = RecordingHooks(fail=broken)
    director, _ = _director(POOL, hooks=[hooks])
    with caplog.at_level(logging.ERROR, logger="kvroute.requestcontrol.director"):
        decision = director.handle_request(_parsed(), {}, "r1")
    assert decision.target.name == "e1"
    assert f"{broken} broke" in caplog.text


def test_hook_timings_are_recorded() -> None:
    timings = PluginTimings()
    hooks = RecordingHooks()
    director, _ = _director(POOL, hooks=[hooks], timings=timings)
    director.handle_response_complete(director.handle_request(_parsed(), {}, "r1"))
    points = {k.extension_point for k in timings.drain() if k.plugin_name == "rec"}
    assert points == {"PrepareData", "PreRequest", "ResponseComplete"}


def test_random_endpoint_for_header_only_requests() -> None:
    director, _ = _director(POOL)
    seen = {director.random_endpoint().name for _ in range(60)}
    assert seen == {"e0", "e1", "e2"}
    empty, _ = _director([])
    with pytest.raises(EppError) as exc:
        empty.random_endpoint()
    assert exc.value.http_status == 500
    assert exc.value.message == "no pods available in datastore"


def test_trace_explains_candidates_and_admission() -> None:
    director, _ = _director(POOL)
    trace = CycleTrace()
    director.handle_request(_parsed("batch-model"), {}, "r1", ["10.0.0.1", "10.0.0.2"], trace=trace)
    assert (
        trace.notes[0] == "candidates: 2 of 3 endpoints match subset hint ['10.0.0.1', '10.0.0.2']"
    )
    assert trace.notes[1].startswith("admission: pool saturation 0.")
    assert "sheddable request admitted" in trace.notes[1]
    assert trace.totals["default"].keys() == {"e0", "e1"}


def test_decision_is_a_plain_record() -> None:
    director, _ = _director(POOL)
    decision = director.handle_request(_parsed(), {}, "r1")
    assert isinstance(decision, RoutingDecision)
    assert decision.resolved.incoming_model == "base"
    assert not decision.completed


def test_metrics_snapshot_is_what_the_datastore_holds() -> None:
    store = Datastore(clock=lambda: NOW)
    store.upsert_endpoint("e0", "10.0.0.1", 8000)
    store.update_metrics("e0", EndpointMetrics(waiting_queue_size=1, updated_at=NOW))
    setup = build_scheduling(parse_epp_config(QUEUE_KV), REGISTRY)
    director = Director(store, None, setup.scheduler, setup.saturation_detector)
    assert director.handle_request(_parsed(), {}, "r1").target.metrics.waiting_queue_size == 1


def test_an_endpoint_that_keeps_failing_is_not_picked_until_it_recovers() -> None:
    """Issue 20 finding 5: 5xx answers and retries away from the picked endpoint count as its
    failures; after three it leaves the candidate set (all of them stay if all are ejected)."""
    director, store = _director(POOL)
    for served, status in ((None, 500), ("10.0.0.3:8000", 200), (None, 503)):
        decision = director.handle_request(_parsed(), {}, "r")
        assert decision.target.name == "e1"
        director.handle_response_complete(decision, status=status, served=served)
    decision = director.handle_request(_parsed(), {}, "r")
    assert decision.target.name == "e0"  # next best, e1 is out
    director.handle_response_complete(decision, status=200, served="10.0.0.1:8000")
    for e in POOL:
        for _ in range(3):
            store.health.failure(e.hostport, "HTTP 500")
    assert director.handle_request(_parsed(), {}, "r").target.name == "e1"  # all out: all in
