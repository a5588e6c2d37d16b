"""``probabilistic-admitter``: parameters, the shedding curve, and denials through the director
built from a real EndpointPickerConfig (the plugin is loaded by type name from the registry)."""

from __future__ import annotations

import json
import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director, PassthroughResolver
from kvroute.requestcontrol.extensions import AdmissionDeniedError
from kvroute.requestcontrol.plugins.probabilistic_admitter import (
    ProbabilisticAdmitter,
    ProbabilisticAdmitterParams,
)
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.request import Criticality, InferenceRequest
from tests.fakes import NOW, make_endpoint

REGISTRY = default_registry(include_entry_points=False)


def _build(parameters: dict[str, object] | None = None) -> ProbabilisticAdmitter:
    ctx = PluginContext(random_source=random.Random(0))
    plugin = REGISTRY.create("probabilistic-admitter", "pa", parameters or {}, ctx)
    assert isinstance(plugin, ProbabilisticAdmitter)
    return plugin


def _req(priority: int) -> InferenceRequest:
    return InferenceRequest(request_id="r", incoming_model="m", target_model="m", priority=priority)


def test_defaults_are_upstreams() -> None:
    p = _build().params
    assert (p.queue_depth_threshold, p.kv_cache_util_threshold, p.power, p.k) == (
        5,
        0.8,
        5.0,
        300.0,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("queueDepthThreshold", 0), ("kvCacheUtilThreshold", 0.0), ("power", -1.0), ("k", 0)],
)
def test_non_positive_parameters_are_rejected_by_name(field: str, value: float) -> None:
    with pytest.raises(PluginValidationError, match=field):
        _build({field: value})


def test_unknown_parameter_is_rejected_by_name() -> None:
    with pytest.raises(PluginValidationError, match="threshold"):
        _build({"threshold": 1})


def test_saturation_is_the_mean_roofline_ratio() -> None:
    a = ProbabilisticAdmitter()
    pool = [make_endpoint("e0", waiting=5, kv=0.0), make_endpoint("e1", waiting=0, kv=0.4)]
    assert a.saturation(pool) == pytest.approx((1.0 + 0.5) / 2)
    assert a.shed_probability(0.15) == pytest.approx(0.15**5 * 300)  # ~2.3%
    assert a.shed_probability(0.34) == 1.0


def test_non_sheddable_and_empty_pools_are_always_admitted() -> None:
    a = ProbabilisticAdmitter(rng=random.Random(1))
    full = [make_endpoint("e0", waiting=50, kv=1.0)]
    assert a.admit_request(_req(0), full) is None
    assert a.admit_request(_req(3), full) is None
    assert a.admit_request(_req(-1), []) is None
    reason = a.admit_request(_req(-1), full)
    assert (
        reason == "probabilistic-admitter: rejected, saturation=10.000 prob=1.00"
    )  # max(50/5, 1/0.8)


def test_idle_pool_never_sheds_and_the_rate_follows_the_curve() -> None:
    a = ProbabilisticAdmitter(rng=random.Random(7))
    idle = [make_endpoint("e0")]
    assert all(a.admit_request(_req(-1), idle) is None for _ in range(200))
    # saturation 0.25 (kv 0.2 / 0.8): p = 0.25^5 * 300 ~ 0.293
    mid = [make_endpoint("e0", kv=0.2)]
    shed = sum(a.admit_request(_req(-1), mid) is not None for _ in range(4000))
    assert 0.26 < shed / 4000 < 0.33


def test_denial_through_the_director_is_500_with_upstreams_body() -> None:
    config = parse_epp_config(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: probabilistic-admitter, parameters: {queueDepthThreshold: 2}},"
        " {type: random-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: random-picker}]}]\n"
    )
    setup = build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)
    store = Datastore(clock=lambda: NOW)
    e = make_endpoint("e0", waiting=4)  # 4 / 2: saturation 2, p = 1
    store.upsert_endpoint(e.name, e.address, e.port, e.labels)
    store.update_metrics(e.name, e.metrics)
    director = Director(
        store, None, setup.scheduler, setup.saturation_detector, setup.hooks, clock=lambda: NOW
    )
    parsed = parse_request(json.dumps({"model": "m", "prompt": "hi"}).encode())
    ok = director.handle_request(parsed, {}, "r0")
    assert ok.target.name == "e0"  # standard priority: admitted however saturated
    director.handle_response_complete(ok)
    director.resolver = PassthroughResolver(Criticality.SHEDDABLE)  # priority -1
    with pytest.raises(AdmissionDeniedError) as info:
        director.handle_request(parsed, {}, "r1")
    assert info.value.http_status == 500
    assert info.value.response_body() == (
        "inference error: Internal - request cannot be admitted: "
        "probabilistic-admitter: rejected, saturation=2.000 prob=1.00"
    )


def test_params_model_accepts_upstream_names() -> None:
    p = ProbabilisticAdmitterParams.model_validate({"kvCacheUtilThreshold": 0.5, "power": 2})
    assert (p.kv_cache_util_threshold, p.power) == (0.5, 2.0)
