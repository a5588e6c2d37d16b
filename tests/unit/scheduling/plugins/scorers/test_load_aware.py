"""load-aware-scorer: llm-d-router's absolute waiting-queue score (maximum 0.5)."""

from __future__ import annotations

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.load_aware import LoadAwareParams, LoadAwareScorer
from tests.fakes import make_endpoint, make_request, make_state


@pytest.mark.parametrize(
    ("threshold", "queues", "expected"),
    [
        (128, [0, 64, 128, 500], [0.5, 0.25, 0.0, 0.0]),
        (10, [1, 9], [0.45, 0.05]),
        (4, [0, 0], [0.5, 0.5]),  # not normalised: equal idle endpoints both score 0.5
    ],
)
def test_load_aware_formula(threshold: int, queues: list[int], expected: list[float]) -> None:
    endpoints = [make_endpoint(f"e{i}", waiting=q) for i, q in enumerate(queues)]
    scorer = LoadAwareScorer(params=LoadAwareParams(threshold=threshold))
    scores = scorer.score(make_state(), make_request(), endpoints)
    assert [scores[e.name] for e in endpoints] == pytest.approx(expected)


def test_registered_and_validated_at_load() -> None:
    registry = default_registry(include_entry_points=False)
    plugin = registry.create("load-aware-scorer", "la", {"threshold": 32}, PluginContext())
    assert isinstance(plugin, LoadAwareScorer)
    assert plugin.threshold == 32
    with pytest.raises(PluginValidationError, match=r"parameters\.threshold"):
        registry.create("load-aware-scorer", "la", {"threshold": 0}, PluginContext())
