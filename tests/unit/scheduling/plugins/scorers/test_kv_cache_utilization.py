"""kv-cache-utilization-scorer: 1 - usage (the framework clamps out-of-range usage)."""

from __future__ import annotations

import pytest

from kvroute.scheduling.plugins.scorers.kv_cache_utilization import KvCacheUtilizationScorer
from tests.fakes import make_endpoint, make_request, make_state


@pytest.mark.parametrize(
    ("kv", "expected"),
    [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (1.2, -0.2)],
    ids=["empty cache", "quarter used", "full", "over-reporting exporter (framework clamps)"],
)
def test_kv_cache_utilization_scorer(kv: float, expected: float) -> None:
    e = make_endpoint("e0", kv=kv)
    scores = KvCacheUtilizationScorer().score(make_state(), make_request(), [e])
    assert scores["e0"] == pytest.approx(expected)
