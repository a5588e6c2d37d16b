"""utilization-detector: mean per-endpoint saturation for admission; a fail-open filter."""

from __future__ import annotations

import pytest

from kvroute.config.duration import parse_go_duration
from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext
from kvroute.scheduling.interfaces import EXPLAIN
from kvroute.scheduling.plugins.filters.utilization_detector import (
    PLUGINS,
    UtilizationDetector,
    UtilizationParams,
)
from tests.fakes import NOW, make_endpoint, make_request, make_state, names

SATURATION_CASES = [
    ([make_endpoint("e0")], 0.0),
    ([make_endpoint("e0", waiting=5)], 1.0),
    ([make_endpoint("e0", kv=0.4)], 0.5),
    ([make_endpoint("e0", waiting=2, kv=0.72)], 0.9),
    ([make_endpoint("e0", waiting=10), make_endpoint("e1")], 1.0),
    ([make_endpoint("e0", waiting=4), make_endpoint("e1", kv=0.4)], 0.65),
    ([make_endpoint("e0", age=0.5)], 1.0),
    ([make_endpoint("e0", never_scraped=True), make_endpoint("e1")], 0.5),
    ([make_endpoint("e0", age=0.19)], 0.0),
    ([], 1.0),
]
SATURATION_IDS = [
    "idle",
    "queue at threshold",
    "half the kv threshold",
    "max of queue and kv ratios",
    "mean over endpoints reaches 1",
    "mean of two partial loads",
    "stale metrics count as saturated",
    "never scraped counts as saturated",
    "just under the staleness threshold is fresh",
    "no candidates is saturated",
]


@pytest.mark.parametrize(("endpoints", "expected"), SATURATION_CASES, ids=SATURATION_IDS)
def test_saturation(endpoints: list[Endpoint], expected: float) -> None:
    assert UtilizationDetector().saturation(endpoints, NOW) == pytest.approx(expected)


FILTER_CASES = [
    (
        [make_endpoint("e0", waiting=1), make_endpoint("e1", waiting=5), make_endpoint("e2")],
        {},
        ["e0", "e2"],
    ),
    (
        [make_endpoint("e0", kv=0.79), make_endpoint("e1", kv=0.8)],
        {},
        ["e0"],
    ),
    (
        [make_endpoint("e0", age=1.0), make_endpoint("e1", waiting=4)],
        {},
        ["e1"],
    ),
    (
        [make_endpoint("e0", waiting=6), make_endpoint("e1", kv=0.95)],
        {},
        ["e0", "e1"],
    ),
    (
        [make_endpoint("e0", waiting=6), make_endpoint("e1", waiting=8)],
        {"headroom": 0.5},
        ["e0"],
    ),
    (
        [make_endpoint("e0", waiting=2), make_endpoint("e1", waiting=3)],
        {"queueDepthThreshold": 3},
        ["e0"],
    ),
    (
        [make_endpoint("e0", age=0.3), make_endpoint("e1", age=0.1)],
        {"metricsStalenessThreshold": "1s"},
        ["e0", "e1"],
    ),
]
FILTER_IDS = [
    "queue at threshold removed",
    "kv at threshold removed",
    "stale removed",
    "all saturated: fail open",
    "headroom raises the limits",
    "custom queue threshold",
    "custom staleness threshold",
]


@pytest.mark.parametrize(("endpoints", "params", "expected"), FILTER_CASES, ids=FILTER_IDS)
def test_filter(endpoints: list[Endpoint], params: dict[str, object], expected: list[str]) -> None:
    detector = UtilizationDetector(params=UtilizationParams.model_validate(params))
    assert names(detector.filter(make_state(), make_request(), endpoints)) == expected


def test_fail_open_is_explained_when_tracing() -> None:
    state = make_state()
    notes: list[str] = []
    state.write(EXPLAIN, notes)
    UtilizationDetector().filter(state, make_request(), [make_endpoint("e0", waiting=9)])
    assert any("failing open" in n for n in notes)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kvCacheUtilThreshold": 0.0}, "kvCacheUtilThreshold"),
        ({"kvCacheUtilThreshold": 1.5}, "kvCacheUtilThreshold"),
        ({"queueDepthThreshold": 0}, "queueDepthThreshold"),
        ({"metricsStalenessThreshold": "soon"}, "metricsStalenessThreshold"),
        ({"headroom": -1}, "headroom"),
        ({"queueDepth": 3}, "queueDepth"),
    ],
    ids=["kv zero", "kv above 1", "queue zero", "bad duration", "negative headroom", "unknown key"],
)
def test_invalid_params_name_plugin_and_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginValidationError) as exc:
        PLUGINS["utilization-detector"]("sd", params, PluginContext())
    assert "plugin 'sd' (utilization-detector)" in exc.value.message
    assert f"parameters.{field}" in exc.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("1s", 1.0), ("1.5s", 1.5), ("1m30s", 90.0), ("500us", 0.0005), (2, 2.0)],
    ids=["ms", "s", "fractional", "compound", "us", "bare number"],
)
def test_go_durations(text: str | int, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "ms", "1d", "-1s", "1s junk"], ids=str)
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)
