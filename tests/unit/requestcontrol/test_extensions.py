"""The director's RequestHeaderProcessor, Screener and Admitter steps, through a real Director.

Real parts: the Datastore, the OpenAI parser and the scheduler built from an
EndpointPickerConfig. The screener, header processor and admitter are small test plugins
written here (the real screener plugin is another change's); they record what they saw.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore
from kvroute.errors import EppError, ErrorCode
from kvroute.flowcontrol.queues import FlowControlSettings
from kvroute.flowcontrol.runtime import FlowController
from kvroute.framework.hooks import RequestHooks
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import ParsedRequest, parse_request
from kvroute.requestcontrol.director import Director
from kvroute.requestcontrol.extensions import AdmissionDeniedError, ScreenedOutError
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import NOW, make_endpoint

REGISTRY = default_registry(include_entry_points=False)
CONFIG = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins: [{type: queue-scorer}]\n"
    "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]\n"
)
POOL = [make_endpoint(f"e{i}", waiting=i) for i in range(3)]  # e0 is the queue-scorer's best


def _director(hooks: Sequence[Any]) -> tuple[Director, Datastore]:
    setup = build_scheduling(parse_epp_config(CONFIG), REGISTRY, rng=random.Random(0))
    store = Datastore(clock=lambda: NOW)
    for e in POOL:
        store.upsert_endpoint(e.name, e.address, e.port, e.labels)
        store.update_metrics(e.name, e.metrics)
    director = Director(
        store,
        None,
        setup.scheduler,
        setup.saturation_detector,
        [*setup.hooks, *hooks],
        random.Random(0),
        clock=lambda: NOW,
    )
    return director, store


def _parsed() -> ParsedRequest:
    return parse_request(json.dumps({"model": "m", "prompt": "hi"}).encode())


class KeepOnly:
    """A screener keeping the named endpoints (in the order it is given them)."""

    def __init__(self, name: str, keep: set[str], log: list[str]) -> None:
        self.typed_name = TypedName("keep-only", name)
        self.keep = keep
        self.log = log

    def screen(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        self.log.append(f"screen:{self.typed_name.name}:{len(endpoints)}")
        return [e for e in reversed(endpoints) if e.name in self.keep]


class Recorder:
    """PrepareData that logs the candidates it was given."""

    def __init__(self, log: list[str]) -> None:
        self.typed_name = TypedName("recorder", "recorder")
        self.log = log

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        self.log.append("prepare:" + ",".join(e.name for e in endpoints))


class Deny:
    def __init__(self, reason: str | None, log: list[str], name: str = "deny") -> None:
        self.typed_name = TypedName("deny", name)
        self.reason = reason
        self.log = log

    def admit_request(self, request: InferenceRequest, endpoints: Sequence[Endpoint]) -> str | None:
        self.log.append(f"admit:{self.typed_name.name}:" + ",".join(e.name for e in endpoints))
        return self.reason


class Tagger:
    def __init__(self, attrs: Mapping[str, str], name: str = "tagger") -> None:
        self.typed_name = TypedName("tagger", name)
        self.attrs = attrs
        self.seen: list[InferenceRequest] = []

    def process_request_headers(self, request: InferenceRequest) -> Mapping[str, str]:
        self.seen.append(request)
        return self.attrs


def test_hooks_classify_the_new_extension_points() -> None:
    log: list[str] = []
    hooks = RequestHooks.of([KeepOnly("k", set(), log), Deny(None, log), Tagger({})])
    assert [len(hooks.screeners), len(hooks.admitters), len(hooks.header_processors)] == [1, 1, 1]
    assert not hooks.prepare_data
    assert bool(hooks)


def test_screeners_intersect_in_candidate_order_before_prepare_data() -> None:
    log: list[str] = []
    a = KeepOnly("a", {"e1", "e2"}, log)
    b = KeepOnly("b", {"e0", "e1", "e2"}, log)
    director, _ = _director([Recorder(log), a, b])
    decision = director.handle_request(_parsed(), {}, "r1")
    # each screener sees all candidates; the intersection keeps the candidates' order
    assert log == ["screen:a:3", "screen:b:3", "prepare:e1,e2"]
    assert decision.target.name == "e1"  # e0 (empty queue) was screened out


def test_screeners_leaving_nothing_answer_503_rejected_no_endpoints() -> None:
    log: list[str] = []
    director, store = _director([KeepOnly("a", {"e0"}, log), KeepOnly("b", {"e1"}, log)])
    with pytest.raises(ScreenedOutError) as info:
        director.handle_request(_parsed(), {}, "r1")
    err = info.value
    assert (err.http_status, err.code, err.reason_header) == (
        503,
        ErrorCode.SERVICE_UNAVAILABLE,
        "rejected-no-endpoints",
    )
    assert err.response_body() == (
        "inference error: ServiceUnavailable - screeners eliminated all endpoint candidates"
    )
    assert all((store.load_of(e.name) or e.load).inflight == 0 for e in POOL)


def test_admitter_runs_after_prepare_data_and_its_denial_is_500() -> None:
    log: list[str] = []
    director, store = _director(
        [Recorder(log), Deny(None, log, "first"), Deny("too busy", log, "second"), Deny("x", log)]
    )
    with pytest.raises(AdmissionDeniedError) as info:
        director.handle_request(_parsed(), {}, "r1")
    assert log == ["prepare:e0,e1,e2", "admit:first:e0,e1,e2", "admit:second:e0,e1,e2"]
    err = info.value
    assert isinstance(err, EppError)
    assert err.http_status == 500
    assert err.response_body() == (
        "inference error: Internal - request cannot be admitted: too busy"
    )
    assert all((store.load_of(e.name) or e.load).inflight == 0 for e in POOL)


def test_admitters_that_admit_let_the_request_schedule() -> None:
    log: list[str] = []
    director, _ = _director([Deny(None, log)])
    assert director.handle_request(_parsed(), {}, "r1").target.name == "e0"
    assert log == ["admit:deny:e0,e1,e2"]


@pytest.mark.parametrize(
    ("headers", "attrs", "expected"),
    [
        ({}, {"agent-identity": "sess-1"}, "sess-1"),
        ({"x-llm-d-inference-fairness-id": "tenant"}, {"agent-identity": "sess-1"}, "tenant"),
        ({"x-gateway-inference-fairness-id": "gw"}, {"agent-identity": "sess-1"}, "gw"),
        ({}, {"other": "v"}, "default-flow"),
    ],
)
def test_header_processor_attributes_and_fairness_id(
    headers: dict[str, str], attrs: dict[str, str], expected: str
) -> None:
    tagger = Tagger(attrs)
    director, _ = _director([tagger])
    decision = director.handle_request(_parsed(), headers, "r1")
    assert dict(decision.request.attributes) == attrs
    assert decision.request.fairness_id == expected
    assert tagger.seen[0].headers == headers  # it ran on the assembled request


def test_later_header_processor_overrides_an_attribute() -> None:
    director, _ = _director([Tagger({"k": "1", "a": "x"}, "t1"), Tagger({"k": "2"}, "t2")])
    decision = director.handle_request(_parsed(), {}, "r1")
    assert dict(decision.request.attributes) == {"k": "2", "a": "x"}


async def test_async_path_with_flow_control_uses_agent_identity_as_flow() -> None:
    setup = build_scheduling(parse_epp_config(CONFIG), REGISTRY, rng=random.Random(0))
    store = Datastore(clock=lambda: NOW)
    for e in POOL:
        store.upsert_endpoint(e.name, e.address, e.port, e.labels)
        store.update_metrics(e.name, e.metrics)
    fc = FlowController(
        FlowControlSettings(), setup.saturation_detector, store.endpoints, clock=lambda: NOW
    )
    director = Director(
        store,
        None,
        setup.scheduler,
        setup.saturation_detector,
        [Tagger({"agent-identity": "sess-9"})],
        clock=lambda: NOW,
        flow_control=fc,
    )
    decision = await director.handle_request_async(_parsed(), {}, "r1")
    assert decision.request.fairness_id == "sess-9"
