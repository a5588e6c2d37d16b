"""disaggregatedset-rollout-screener: the weighting rules (upstream README's 2P:10D rollout),
the screen over a real Datastore it follows, its parameters, and a Director built by
build_epp from the README's own config shape."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.framework.request import InferenceRequest
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.extensions import ScreenedOutError
from kvroute.requestcontrol.plugins.disaggregatedset_rollout import (
    DisaggregatedSetRolloutScreener,
    pick_revision,
    revision_shares,
)
from kvroute.wiring import build_epp
from tests.fakes import NOW

REGISTRY = default_registry(include_entry_points=False)
REV = "disaggregatedset.x-k8s.io/revision"
ROLE = "disaggregatedset.x-k8s.io/role"
SET = "disaggregatedset.x-k8s.io/name"
SLICE = "disaggregatedset.x-k8s.io/slice"

PARAMS: dict[str, Any] = {
    "scope": {"labelSelector": f"{SET}=my-set"},
    "headerSelectors": [
        {"name": "revision", "headerName": "X-Disagg-Revision", "labelKey": REV, "mode": "strict"},
        {"name": "slice", "headerName": "x-disagg-slice", "labelKey": SLICE, "mode": "prefer"},
    ],
    "revisionGating": {"mode": "max-role", "requireRoles": {"values": ["prefill", "decode"]}},
}

# The README's step: old revision A = 2 prefill + 9 decode, new revision B = 1 + 1.
STEP = {"A": {"prefill": 2, "decode": 9}, "B": {"prefill": 1, "decode": 1}}


def test_max_role_weights_by_the_globally_largest_role() -> None:
    shares = revision_shares(STEP, ["prefill", "decode"], "max-role")
    assert shares == pytest.approx({"A": 0.9, "B": 0.1})


def test_sum_weights_by_all_required_roles() -> None:
    shares = revision_shares(STEP, ["prefill", "decode"], "sum")
    assert shares == pytest.approx({"A": 11 / 13, "B": 2 / 13})


def test_a_revision_missing_a_role_gets_nothing() -> None:
    counts = {"A": {"prefill": 2, "decode": 8}, "B": {"decode": 2}}  # README step 2
    for mode in ("sum", "max-role"):
        assert revision_shares(counts, ["prefill", "decode"], mode) == {"A": 1.0}
    assert revision_shares({}, ["prefill"], "sum") == {}


def test_max_role_ties_go_to_the_first_required_role() -> None:
    counts = {"A": {"prefill": 3, "decode": 1}, "B": {"prefill": 1, "decode": 3}}
    assert revision_shares(counts, ["prefill", "decode"], "max-role") == {"A": 0.75, "B": 0.25}
    assert revision_shares(counts, ["decode", "prefill"], "max-role") == {"A": 0.25, "B": 0.75}


@pytest.mark.parametrize(("draw", "expected"), [(0.0, "A"), (0.899, "A"), (0.9, "B"), (0.999, "B")])
def test_pick_revision_in_sorted_order(draw: float, expected: str) -> None:
    assert pick_revision({"B": 0.1, "A": 0.9}, draw) == expected
    assert pick_revision({}, draw) == ""


def build(params: dict[str, Any] | None = None, seed: int = 0) -> DisaggregatedSetRolloutScreener:
    ctx = PluginContext(random_source=random.Random(seed))
    plugin = REGISTRY.create("disaggregatedset-rollout-screener", "rs", params or PARAMS, ctx)
    assert isinstance(plugin, DisaggregatedSetRolloutScreener)
    return plugin


def pool(store: Datastore, counts: dict[str, dict[str, int]], **extra: str) -> None:
    n = 0
    for rev, per in counts.items():
        for role, k in per.items():
            for _ in range(k):
                n += 1
                labels = {SET: "my-set", REV: rev, ROLE: role, **extra}
                store.upsert_endpoint(f"{rev}-{role}-{n}-rank-0", f"10.1.0.{n}", 8000, labels)


def req(headers: dict[str, str] | None = None) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", incoming_model="m", target_model="m", headers=headers or {}
    )


def revisions(endpoints: Any) -> set[str]:
    return {e.labels[REV] for e in endpoints}


def test_screen_keeps_one_covered_revision_at_its_share() -> None:
    store = Datastore()
    pool(store, STEP)
    screener = build()
    screener.attach(store)
    assert screener.counts() == STEP
    assert screener.shares() == pytest.approx({"A": 0.9, "B": 0.1})
    chosen: Counter[str] = Counter()
    for _ in range(2000):
        kept = screener.screen(req(), store.endpoints())
        (rev,) = revisions(kept)  # exactly one revision reaches the profiles
        assert len(kept) == sum(STEP[rev].values())  # all of its endpoints, both roles
        chosen[rev] += 1
    assert 0.87 < chosen["A"] / 2000 < 0.93


def test_counts_follow_the_datastore() -> None:
    store = Datastore()
    screener = build()
    screener.attach(store)
    assert screener.screen(req(), store.endpoints()) == []  # nothing counted: fails closed
    pool(store, {"B": {"decode": 2}})
    assert screener.shares() == {"B": 0.0}  # no prefill: uncovered
    assert screener.screen(req(), store.endpoints()) == []
    store.upsert_endpoint(
        "b-p-rank-0", "10.2.0.1", 8000, {SET: "my-set", REV: "B", ROLE: "prefill"}
    )
    store.upsert_endpoint(
        "b-p-rank-1", "10.2.0.1", 8001, {SET: "my-set", REV: "B", ROLE: "prefill"}
    )
    assert screener.counts()["B"] == {"decode": 2, "prefill": 1}  # ranks of one pod count once
    assert revisions(screener.screen(req(), store.endpoints())) == {"B"}
    store.remove_endpoint("b-p-rank-0")
    store.remove_endpoint("b-p-rank-1")
    assert screener.screen(req(), store.endpoints()) == []


def test_scope_and_missing_labels_are_not_counted() -> None:
    store = Datastore()
    pool(store, {"A": {"prefill": 1, "decode": 1}})
    # another set's prefill pod does not cover revision C; a pod without a role is ignored
    store.upsert_endpoint("other", "10.3.0.1", 8000, {SET: "other", REV: "C", ROLE: "prefill"})
    store.upsert_endpoint("c-dec", "10.3.0.2", 8000, {SET: "my-set", REV: "C", ROLE: "decode"})
    store.upsert_endpoint("norole", "10.3.0.3", 8000, {SET: "my-set", REV: "C"})
    screener = build()
    screener.attach(store)
    assert screener.counts() == {"A": {"prefill": 1, "decode": 1}, "C": {"decode": 1}}
    for _ in range(20):
        assert revisions(screener.screen(req(), store.endpoints())) == {"A"}


def test_strict_header_pins_the_revision_without_a_draw() -> None:
    store = Datastore()
    pool(store, STEP)
    screener = build()
    screener.attach(store)
    for _ in range(50):
        kept = screener.screen(req({"x-disagg-revision": "B"}), store.endpoints())
        assert revisions(kept) == {"B"}
        assert len(kept) == 2
    assert screener.screen(req({"x-disagg-revision": "Z"}), store.endpoints()) == []
    assert screener.strict_no_match == {"revision": 1}
    # a prefer selector does not screen
    kept = screener.screen(
        req({"x-disagg-revision": "A", "x-disagg-slice": "9"}), store.endpoints()
    )
    assert len(kept) == 11


def test_strict_header_cannot_reach_an_uncovered_revision() -> None:
    store = Datastore()
    pool(store, {"A": {"prefill": 1, "decode": 1}, "B": {"decode": 1}})
    screener = build()
    screener.attach(store)
    assert screener.screen(req({"x-disagg-revision": "B"}), store.endpoints()) == []


def test_disabled_gating_keeps_strict_selectors_only() -> None:
    params = {**PARAMS, "revisionGating": {"mode": "disabled"}}
    store = Datastore()
    pool(store, {"A": {"decode": 2}, "B": {"decode": 1}})
    store.upsert_endpoint("plain", "10.4.0.1", 8000, {})
    screener = build(params)
    screener.attach(store)
    assert len(screener.screen(req(), store.endpoints())) == 4  # no coverage, no draw
    kept = screener.screen(req({"x-disagg-revision": "A"}), store.endpoints())
    assert revisions(kept) == {"A"}
    assert screener.counts() == {}  # nothing is counted when gating is off


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scope": {}}, "scope.labelSelector"),
        ({"scope": {"labelSelector": "a in (b"}}, "scope.labelSelector"),
        ({"revisionGating": None}, "revisionGating"),
        ({"revisionGating": {"mode": "random"}}, "revisionGating.mode"),
        ({"revisionGating": {"mode": "sum"}}, "requireRoles is required"),
        ({"revisionGating": {"mode": "sum", "requireRoles": {"values": []}}}, "at least one"),
        ({"revisionGating": {"mode": "sum", "requireRoles": {"values": ["p", "p"]}}}, "duplicate"),
        ({"revisionGating": {"mode": "sum", "requireRoles": {"values": [""]}}}, "values\\[0\\]"),
        ({"revisionGating": {"mode": "disabled", "gate": 1}}, "revisionGating.gate"),
        ({"headerSelectors": [{"name": "x", "headerName": "h", "labelKey": "k"}]}, "mode"),
        (
            {
                "headerSelectors": [
                    {"name": "x", "headerName": "h", "labelKey": "k", "mode": "hard"}
                ]
            },
            "headerSelectors.0.mode",
        ),
        (
            {
                "headerSelectors": [
                    {"name": "x", "headerName": "H", "labelKey": "k", "mode": "strict"},
                    {"name": "y", "headerName": "h", "labelKey": "j", "mode": "strict"},
                ]
            },
            "duplicate headerName",
        ),
        (
            {
                "headerSelectors": [
                    {"name": "x", "headerName": "a", "labelKey": "k", "mode": "strict"},
                    {"name": "x", "headerName": "b", "labelKey": "j", "mode": "strict"},
                ]
            },
            "duplicate name",
        ),
        ({"labelSelector": "a=b"}, "labelSelector"),
    ],
)
def test_bad_parameters_are_named(change: dict[str, Any], field: str) -> None:
    params = {**PARAMS, **change}
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(PluginValidationError, match=f"disaggregatedset-rollout-screener.*{field}"):
        build(params)


README_CONFIG = f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disaggregatedset-rollout-screener
  name: rollout-screener
  parameters:
    scope: {{labelSelector: "{SET}=my-set"}}
    headerSelectors:
    - {{name: revision, headerName: x-disagg-revision, labelKey: {REV}, mode: strict}}
    - {{name: slice, headerName: x-disagg-slice, labelKey: {SLICE}, mode: prefer}}
    revisionGating:
      mode: max-role
      requireRoles: {{values: [prefill, decode]}}
- type: header-label-affinity-scorer
  name: slice-affinity
  parameters: {{headerName: x-disagg-slice, labelKey: {SLICE}}}
- type: weighted-random-picker
  name: picker
schedulingProfiles:
- name: decode
  plugins:
  - {{pluginRef: slice-affinity, weight: 3}}
  - {{pluginRef: picker}}
"""


def test_director_routes_only_to_the_covered_revision() -> None:
    store = Datastore(clock=lambda: NOW)
    # A is covered; B (the new revision) has decode pods but no prefill pod yet.
    pool(store, {"A": {"prefill": 1, "decode": 2}, "B": {"decode": 3}})
    graph = build_epp(
        parse_epp_config(README_CONFIG),
        store,
        registry=REGISTRY,
        rng=random.Random(1),
        clock=lambda: NOW,
    )
    parsed = parse_request(json.dumps({"model": "m", "prompt": "hi"}).encode())
    targets: Counter[str] = Counter()
    for i in range(40):
        decision = graph.director.handle_request(parsed, {}, f"r{i}")
        target = store.by_hostport(decision.result.primary.targets[0].hostport)  # type: ignore[union-attr]
        assert target is not None
        targets[target.labels[REV]] += 1
        graph.director.handle_response_complete(decision, None)
    assert targets == {"A": 40}
    with pytest.raises(ScreenedOutError):
        graph.director.handle_request(parsed, {"x-disagg-revision": "B"}, "strict-b")
