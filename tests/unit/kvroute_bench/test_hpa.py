"""The HPA replica calculation: ratio and tolerance, stabilisation windows, rate limits."""

from __future__ import annotations

import pytest

from kvroute_bench.hpa import Hpa, HpaSpec


def test_desired_is_ceil_of_current_times_ratio() -> None:
    hpa = Hpa(HpaSpec(target=4.0, max_replicas=100))
    assert hpa.raw_recommendation(3, 10.0) == 8  # ceil(3 * 2.5)
    assert hpa.raw_recommendation(10, 1.0) == 3  # ceil(10 * 0.25)


def test_within_tolerance_the_count_is_kept() -> None:
    hpa = Hpa(HpaSpec(target=1.0))
    assert hpa.raw_recommendation(10, 1.09) == 10
    assert hpa.raw_recommendation(10, 0.91) == 10
    assert hpa.raw_recommendation(10, 1.11) == 12


def test_bounds_and_missing_metric() -> None:
    hpa = Hpa(HpaSpec(target=1.0, min_replicas=2, max_replicas=5))
    assert hpa.raw_recommendation(4, 100.0) == 5
    assert hpa.raw_recommendation(4, 0.0) == 2
    assert hpa.raw_recommendation(4, None) == 4


def test_scale_down_waits_for_the_highest_recommendation_of_its_window() -> None:
    hpa = Hpa(HpaSpec(target=1.0, max_replicas=50, scale_down_window=300.0))
    assert hpa.decide(0.0, 10, 1.0) == 10
    # Load falls at t=15: the raw recommendation is 5, but 10 was recommended within 300 s.
    assert hpa.decide(15.0, 10, 0.5) == 10
    assert hpa.decide(299.0, 10, 0.5) == 10
    assert hpa.decide(301.0, 10, 0.5) == 5


def test_scale_up_is_rate_limited_per_period() -> None:
    hpa = Hpa(HpaSpec(target=1.0, max_replicas=100, scale_down_window=0.0))
    # +100 % or +4 pods per 15 s, whichever is more: from 2, at most 6.
    assert hpa.decide(0.0, 2, 50.0) == 6
    # Within the same period the budget is spent (counted from the period's start, 2).
    assert hpa.decide(10.0, 6, 50.0) == 6
    assert hpa.decide(16.0, 6, 50.0) == 12


def test_a_bad_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="target"):
        HpaSpec(target=0.0)
    with pytest.raises(ValueError, match="min_replicas"):
        HpaSpec(target=1.0, min_replicas=3, max_replicas=2)
