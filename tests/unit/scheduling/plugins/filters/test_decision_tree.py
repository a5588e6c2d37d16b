"""decision-tree-filter: every branch of the legacy (v0.2/v0.3) scheduling tree."""

from __future__ import annotations

import random

import pytest

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PoolExhaustedError
from kvroute.requestcontrol.admission import SHED_MESSAGE, AdmissionController
from kvroute.scheduling.interfaces import EMPTY_REASON, EXPLAIN
from kvroute.scheduling.plugins.filters.decision_tree import (
    DROP_REASON,
    DecisionTreeFilter,
    DecisionTreeParams,
    least_kv_cache,
    least_queuing,
)
from kvroute.scheduling.plugins.pickers.random_picker import RandomPicker
from kvroute.scheduling.plugins.profile_handlers.single_profile import SingleProfileHandler
from kvroute.scheduling.profile import SchedulerProfile
from kvroute.scheduling.request import Criticality
from kvroute.scheduling.scheduler import Scheduler
from tests.fakes import make_endpoint, make_request, make_state, names

CRIT = Criticality.CRITICAL
SHED = Criticality.SHEDDABLE
STD = Criticality.STANDARD

# (endpoints, criticality, params, expected survivors)
CASES: list[tuple[list[Endpoint], Criticality, dict[str, object], list[str]]] = [
    (
        [
            make_endpoint("e0", waiting=0, kv=0.9, max_active=2),
            make_endpoint("e1", waiting=3, kv=0.5, active=["lora"], max_active=2),
            make_endpoint("e2", waiting=3, kv=0.2, active=["lora"], max_active=2),
        ],
        CRIT,
        {},
        ["e2"],
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.1, max_active=2),
            make_endpoint("e1", waiting=2, kv=0.1, active=["lora"], max_active=2),
        ],
        CRIT,
        {"loraAffinityThreshold": 0.0},
        ["e0"],
    ),
    (
        [
            make_endpoint("e0", waiting=5, kv=0.1, waiting_models=["lora"], max_active=1),
            make_endpoint("e1", waiting=0, kv=0.1, active=["x"], max_active=1),
        ],
        CRIT,
        {},
        ["e0"],
    ),
    (
        [
            make_endpoint("e0", waiting=9, kv=0.3, active=["x"], max_active=1),
            make_endpoint("e1", waiting=1, kv=0.6, active=["y"], max_active=1),
            make_endpoint("e2", waiting=1, kv=0.2, active=["z"], max_active=1),
        ],
        CRIT,
        {},
        ["e2"],
    ),
    (
        [
            make_endpoint("e0", waiting=200, kv=0.1, max_active=2),
            make_endpoint("e1", waiting=130, kv=0.9, active=["a", "b"], max_active=2),
            make_endpoint("e2", waiting=130, kv=0.5, max_active=2),
        ],
        CRIT,
        {},
        ["e2"],
    ),
    (
        [
            make_endpoint("e0", waiting=4, kv=0.7, max_active=1),
            make_endpoint("e1", waiting=6, kv=0.1, max_active=1),
            make_endpoint("e2", waiting=1, kv=0.85, max_active=1),
        ],
        SHED,
        {},
        ["e0"],
    ),
    (
        [
            make_endpoint("e0", waiting=6, kv=0.1),
            make_endpoint("e1", waiting=0, kv=0.81),
        ],
        SHED,
        {},
        [],
    ),
    (
        [make_endpoint("e0", waiting=6, kv=0.1), make_endpoint("e1", waiting=0, kv=0.81)],
        STD,
        {},
        ["e1"],
    ),
    (
        [make_endpoint("e0", waiting=6, kv=0.1), make_endpoint("e1", waiting=0, kv=0.81)],
        STD,
        {"treatStandardAsCritical": False},
        [],
    ),
    (
        [
            make_endpoint("e0", waiting=3, kv=0.9, active=["lora"], max_active=2),
            make_endpoint("e1", waiting=1, kv=0.2, active=["x", "y"], max_active=2),
        ],
        STD,
        {},
        ["e0"],
    ),
    (
        [make_endpoint("e0", waiting=6, kv=0.1), make_endpoint("e1", waiting=0, kv=0.81)],
        SHED,
        {"queueThresholdCritical": 10},
        ["e0"],
    ),
    (
        [make_endpoint("e0", waiting=3, kv=0.6), make_endpoint("e1", waiting=1, kv=0.45)],
        SHED,
        {"kvCacheThreshold": 0.5},
        ["e1"],
    ),
    (
        [make_endpoint("e0", waiting=20, kv=0.1), make_endpoint("e1", waiting=12, kv=0.2)],
        CRIT,
        {"queueingThresholdLoRA": 10},
        ["e1"],
    ),
]
IDS = [
    "critical: affinity group, then least queue, then least kv",
    "critical: affinity threshold 0 takes the free-slot group",
    "critical: waiting adapter counts as affinity",
    "critical: no affinity and no free slot passes input on",
    "critical: every queue >= 128 -> least queuing then low-cost LoRA then least kv",
    "sheddable: capacity branch keeps queue <= 5 and kv <= 0.8",
    "sheddable: no capacity -> dropped",
    "standard takes the critical branch by default -> not dropped",
    "standard as sheddable (legacy, treatStandardAsCritical false) -> dropped",
    "standard gets LoRA affinity like critical, ignoring the capacity test",
    "custom queue threshold for sheddable capacity",
    "custom kv threshold for sheddable capacity",
    "custom LoRA queueing threshold",
]


@pytest.mark.parametrize(("endpoints", "criticality", "params", "expected"), CASES, ids=IDS)
def test_decision_tree(
    endpoints: list[Endpoint],
    criticality: Criticality,
    params: dict[str, object],
    expected: list[str],
) -> None:
    tree = DecisionTreeFilter(
        params=DecisionTreeParams.model_validate(params), rng=random.Random(0)
    )
    request = make_request("lora", criticality=criticality)
    assert names(tree.filter(make_state(), request, endpoints)) == expected


def test_affinity_threshold_is_a_probability() -> None:
    endpoints = [
        make_endpoint("e0", waiting=0, kv=0.1, max_active=2),
        make_endpoint("e1", waiting=0, kv=0.1, active=["lora"], max_active=2),
    ]
    tree = DecisionTreeFilter(
        params=DecisionTreeParams(lora_affinity_threshold=0.7), rng=random.Random(1)
    )
    request = make_request("lora", criticality=CRIT)
    picks = [names(tree.filter(make_state(), request, endpoints)) for _ in range(2000)]
    affinity_share = sum(p == ["e1"] for p in picks) / len(picks)
    assert affinity_share == pytest.approx(0.7, abs=0.04)
    assert all(p in (["e0"], ["e1"]) for p in picks)


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        ([0, 3, 10], ["e0", "e1"]),
        ([5, 5], ["e0", "e1"]),
        ([0, 1], ["e0"]),
        ([0, 2, 6], ["e0", "e1"]),
    ],
    ids=[
        "integer division of spread",
        "all equal",
        "spread below n truncates to 0",
        "spread 6 over 3",
    ],
)
def test_least_queuing_band(queues: list[int], expected: list[str]) -> None:
    endpoints = [make_endpoint(f"e{i}", waiting=q) for i, q in enumerate(queues)]
    assert names(least_queuing(make_request(), endpoints)) == expected


def test_least_kv_band_uses_float_division() -> None:
    endpoints = [make_endpoint(f"e{i}", kv=kv) for i, kv in enumerate([0.1, 0.2, 0.7])]
    assert names(least_kv_cache(make_request(), endpoints)) == ["e0", "e1"]


def test_drop_records_reason_and_path() -> None:
    state = make_state()
    notes: list[str] = []
    state.write(EXPLAIN, notes)
    tree = DecisionTreeFilter()
    out = tree.filter(state, make_request(criticality=SHED), [make_endpoint("e0", waiting=50)])
    assert out == []
    assert state.read(EMPTY_REASON) == DROP_REASON
    assert notes[0] == "Sheddable request: sheddable branch"
    assert notes[-1] == "drop request: 1 -> 0"


def test_drop_becomes_429_with_reason_through_the_scheduler() -> None:
    profile = SchedulerProfile("decision-tree", [DecisionTreeFilter()], [], RandomPicker())
    scheduler = Scheduler(SingleProfileHandler(), {"decision-tree": profile})
    with pytest.raises(PoolExhaustedError) as exc:
        scheduler.schedule(
            make_request(criticality=SHED), [make_endpoint("e0", kv=0.99)], state=make_state()
        )
    assert exc.value.http_status == 429
    assert DROP_REASON in exc.value.message
    assert "decision-tree-filter" in exc.value.message


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([make_endpoint("e0", waiting=6), make_endpoint("e1", waiting=4, kv=0.5)], 0.0),
        ([make_endpoint("e0", waiting=6), make_endpoint("e1", kv=0.81)], 1.0),
        ([make_endpoint("e0", waiting=5, kv=0.8)], 0.0),
        ([], 1.0),
    ],
    ids=["one endpoint with capacity", "none with capacity", "at both thresholds", "empty"],
)
def test_legacy_saturation_agrees_with_the_sheddable_branch(
    endpoints: list[Endpoint], expected: float
) -> None:
    tree = DecisionTreeFilter()
    assert tree.saturation(endpoints, 0.0) == expected
    dropped = not tree.filter(make_state(), make_request(criticality=SHED), endpoints)
    assert dropped == (expected == 1.0)


@pytest.mark.parametrize(
    ("criticality", "params", "shed"),
    [
        (SHED, {}, True),
        (STD, {}, False),
        (CRIT, {}, False),
        (STD, {"treatStandardAsCritical": False}, False),
    ],
    ids=[
        "sheddable is shed when saturated",
        "standard is admitted when saturated",
        "critical is admitted when saturated",
        "legacy tree still never sheds standard at admission (priority 0)",
    ],
)
def test_saturation_detector_role_only_sheds_sheddable(
    criticality: Criticality, params: dict[str, object], shed: bool
) -> None:
    """Admission over the tree's detector on a saturated pool: only priority < 0 gets 429."""
    tree = DecisionTreeFilter(params=DecisionTreeParams.model_validate(params))
    saturated = [make_endpoint("e0", waiting=50, kv=0.95), make_endpoint("e1", kv=0.99)]
    assert tree.saturation(saturated, 0.0) == 1.0
    admission = AdmissionController(tree)
    request = make_request("lora", criticality=criticality)
    if shed:
        with pytest.raises(PoolExhaustedError, match=SHED_MESSAGE):
            admission.admit(request, saturated, 0.0)
    else:
        admission.admit(request, saturated, 0.0)


def test_standard_is_placed_on_a_saturated_pool_through_the_scheduler() -> None:
    profile = SchedulerProfile("decision-tree", [DecisionTreeFilter()], [], RandomPicker())
    scheduler = Scheduler(SingleProfileHandler(), {"decision-tree": profile})
    saturated = [make_endpoint("e0", waiting=50, kv=0.95), make_endpoint("e1", waiting=9, kv=0.99)]
    result = scheduler.schedule(make_request(criticality=STD), saturated, state=make_state())
    assert result.primary is not None
    assert names(result.primary.targets) == ["e1"]
