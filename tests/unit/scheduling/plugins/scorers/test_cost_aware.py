"""cost-aware-scorer: cheapest per token among endpoints that fit the TTFT SLO, else fastest."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from kvroute.errors import PluginValidationError
from kvroute.framework.accelerator import ACCELERATOR_LABEL, COST_LABEL
from kvroute.framework.request import Criticality
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.cost_aware import (
    CostAwareScorer,
    CostAwareScorerParams,
    request_ttft_slo_s,
)
from tests.fakes import make_endpoint, make_request, make_state

# Cheap per token: an H100 at $2/h (2.0 / 1.0) beats an A100 at $2.5/h (2.5 / 0.61 = 4.1).
CHEAP_H100 = {ACCELERATOR_LABEL: "h100", COST_LABEL: "2.0"}
A100 = {ACCELERATOR_LABEL: "a100"}
L4 = {ACCELERATOR_LABEL: "l4", COST_LABEL: "0.1"}  # 0.1 / 0.09 = 1.1 per token: cheapest


def _best(scores: dict[str, float]) -> str:
    return max(scores, key=lambda k: scores[k])


def test_the_cheapest_fitting_endpoint_wins() -> None:
    eps = [make_endpoint("h", labels=CHEAP_H100), make_endpoint("a", labels=A100)]
    scores = dict(CostAwareScorer().score(make_state(), make_request(), eps))
    assert _best(scores) == "h"
    assert scores == {"h": 1.0, "a": pytest.approx(0.6)}


def test_an_endpoint_predicted_to_miss_the_slo_loses_to_a_dearer_one_that_fits() -> None:
    # Idle L4: (50 ms) / 0.0896 = 0.56 s > 0.8 * 0.5 s: misses a 500 ms SLO, fits 1 s.
    eps = [make_endpoint("l4", labels=L4), make_endpoint("h", labels=CHEAP_H100)]
    scorer = CostAwareScorer()
    relaxed = dict(scorer.score(make_state(), make_request(), eps))
    assert _best(relaxed) == "l4"
    strict = make_request()
    strict = dataclasses.replace(strict, headers={"x-llm-d-slo-ttft-ms": "500"})
    assert _best(dict(scorer.score(make_state(), strict, eps))) == "h"


def test_load_pushes_a_cheap_endpoint_past_its_slo() -> None:
    busy = make_endpoint("l4", labels=L4, waiting=5)
    eps = [busy, make_endpoint("h", labels=CHEAP_H100)]
    assert _best(dict(CostAwareScorer().score(make_state(), make_request(), eps))) == "h"


def test_when_nothing_fits_the_fastest_wins() -> None:
    eps = [
        make_endpoint("l4", labels=L4, waiting=50),
        make_endpoint("h", labels=CHEAP_H100, waiting=40),
        make_endpoint("a", labels=A100, waiting=40),
    ]
    scores = dict(CostAwareScorer().score(make_state(), make_request(), eps))
    assert _best(scores) == "h"
    assert max(scores.values()) == 0.5


def test_critical_on_fastest() -> None:
    eps = [make_endpoint("l4", labels=L4), make_endpoint("h", labels=CHEAP_H100, waiting=2)]
    scorer = CostAwareScorer(params=CostAwareScorerParams(critical_on_fastest=True))
    assert _best(dict(scorer.score(make_state(), make_request(), eps))) == "l4"
    crit = make_request(criticality=Criticality.CRITICAL)
    assert _best(dict(scorer.score(make_state(), crit, eps))) == "h"


def test_bad_labels_read_as_the_default_class(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    odd = make_endpoint("odd", labels={ACCELERATOR_LABEL: "abacus", COST_LABEL: "free"})
    plain = make_endpoint("plain")
    scores = dict(CostAwareScorer().score(make_state(), make_request(), [odd, plain]))
    assert scores == {"odd": 1.0, "plain": 1.0}  # both the default h100 at its default cost


def test_slo_header_parsing() -> None:
    req = make_request()
    assert request_ttft_slo_s(req, 1000) == 1.0
    for value, want in (("250", 0.25), ("junk", 1.0), ("-5", 1.0)):
        r = dataclasses.replace(req, headers={"x-slo-ttft-ms": value})
        assert request_ttft_slo_s(r, 1000) == want


def test_registered_and_validated_by_the_registry() -> None:
    reg = default_registry(include_entry_points=False)
    assert "cost-aware-scorer" in reg
    built = reg.create("cost-aware-scorer", "c", {"defaultTtftSloMs": 300}, PluginContext())
    assert isinstance(built, CostAwareScorer)
    assert built.params.default_ttft_slo_ms == 300
    with pytest.raises(PluginValidationError, match="headroom"):
        reg.create("cost-aware-scorer", "c", {"headroom": 2}, PluginContext())


def test_a_pod_with_bad_labels_stays_in_the_pool_and_is_routed() -> None:
    """Issue 13: an unknown accelerator class or a malformed cost never drops the endpoint: it
    is stored, and a cost-aware profile routes to it (here the only candidate)."""
    import random

    from kvroute.config.epp_config import parse_epp_config
    from kvroute.datastore.store import Datastore
    from kvroute.scheduling.builder import build_scheduling

    store = Datastore()
    store.upsert_endpoint("odd", "10.0.0.9", 8000, {ACCELERATOR_LABEL: "abacus", COST_LABEL: "-3"})
    (stored,) = store.endpoints()
    config = parse_epp_config(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: cost-aware-scorer}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: cost-aware-scorer}, "
        "{pluginRef: max-score-picker}]}]\n"
    )
    setup = build_scheduling(config, default_registry(), rng=random.Random(0))
    result = setup.scheduler.schedule(make_request(), (stored,), state=make_state())
    assert result.primary is not None
    assert [e.name for e in result.primary.targets] == ["odd"]


def test_max_kv_utilization_keeps_a_nearly_full_cheap_endpoint_out() -> None:
    full = make_endpoint("l4", labels=L4, kv=0.9)
    eps = [full, make_endpoint("h", labels=CHEAP_H100)]
    assert _best(dict(CostAwareScorer().score(make_state(), make_request(), eps))) == "l4"
    capped = CostAwareScorer(params=CostAwareScorerParams(max_kv_utilization=0.8))
    assert _best(dict(capped.score(make_state(), make_request(), eps))) == "h"
    reg = default_registry(include_entry_points=False)
    with pytest.raises(PluginValidationError, match="maxKvUtilization"):
        reg.create("cost-aware-scorer", "c", {"maxKvUtilization": 1.5}, PluginContext())
