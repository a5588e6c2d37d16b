"""Metric formulas on hand-computed data: percentiles, TPOT/NTPOT, goodput, censoring, gap."""

from __future__ import annotations

import math

import pytest

from kvroute.scheduling.request import Criticality
from kvroute_bench.metrics import (
    EngineCounters,
    RequestRecord,
    Slo,
    gap_closed,
    percentile,
    summarize,
)
from kvroute_bench.workload import BenchRequest


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # halfway between the 2nd and 3rd
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),  # pos = 3 * 0.9 = 2.7 -> 3 + 0.7 * (4 - 3)
        ([10.0, 0.0, 5.0], 0, 0.0),
        ([10.0, 0.0, 5.0], 100, 10.0),
        ([7.0], 99, 7.0),
        (list(range(101)), 99, 99.0),
    ],
    ids=["median-even", "p90-interpolated", "min-unsorted", "max", "single", "p99-of-0..100"],
)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def _req(i: int, out: int, crit: Criticality = Criticality.STANDARD, slo: float | None = None):
    return BenchRequest(f"r{i}", float(i), (1, 2, 3), out, None, crit, slo)


def test_tpot_and_ntpot_follow_inference_perf_definitions() -> None:
    # sent 1.0, first token 1.5, last token 3.5, 5 tokens: TPOT = 2.0/4, NTPOT = 2.5/5
    rec = RequestRecord(_req(1, 5), sent=1.0, first_token=1.5, finish=3.5, output_tokens=5)
    assert rec.ttft(99.0) == pytest.approx(0.5)
    assert rec.tpot() == pytest.approx(0.5)
    assert rec.ntpot(99.0) == pytest.approx(0.5)
    one = RequestRecord(_req(2, 1), sent=0.0, first_token=0.2, finish=0.2, output_tokens=1)
    assert one.tpot() is None  # undefined for a single token
    assert one.ntpot(99.0) == pytest.approx(0.2)


def test_summarize_counts_goodput_censoring_and_criticality() -> None:
    slo = Slo(ttft=1.0, tpot=0.1)
    recs = [
        # meets both SLOs
        RequestRecord(_req(0, 3), sent=0.0, first_token=0.5, finish=0.7, output_tokens=3),
        # TTFT 2.0 > 1.0: completes but not good
        RequestRecord(_req(1, 3), sent=1.0, first_token=3.0, finish=3.2, output_tokens=3),
        # critical with its own 0.3 s SLO, TTFT 0.4: misses
        RequestRecord(
            _req(2, 3, Criticality.CRITICAL, 0.3),
            sent=2.0,
            first_token=2.4,
            finish=2.6,
            output_tokens=3,
        ),
        # shed
        RequestRecord(_req(3, 3, Criticality.SHEDDABLE), sent=3.0, shed=True),
        # never finished: censored at end=10 -> TTFT 6.0
        RequestRecord(_req(4, 3), sent=4.0),
        # outside the window (warm-up): ignored
        RequestRecord(_req(5, 3), sent=-1.0, first_token=0.0, finish=0.1, output_tokens=3),
    ]
    m = summarize(
        recs,
        policy="p",
        offered_qps=1.0,
        window=(0.0, 5.0),
        end=10.0,
        output_tokens_in_window=12,
        counters=EngineCounters(prefix_queries=100, prefix_hits=25, adapter_loads=2),
        slo=slo,
    )
    assert (m.arrived, m.completed, m.shed, m.censored) == (5, 3, 1, 1)
    assert m.goodput_rps == pytest.approx(1 / 5.0)
    assert m.output_tok_s == pytest.approx(12 / 5.0)
    assert m.prefix_hit_rate == pytest.approx(0.25)
    assert m.adapter_loads_per_1k == pytest.approx(1000 * 2 / 5)
    # served TTFTs: 0.5, 2.0, 0.4, 6.0 (censored) -> p50 = (0.5 + 2.0) / 2
    assert m.ttft_p50 == pytest.approx(1.25)
    assert m.by_criticality["Sheddable"].shed_rate == 1.0
    assert m.by_criticality["Critical"].slo_ttft == pytest.approx(0.3)
    assert m.by_criticality["Critical"].slo_met_rate == 0.0
    # four requests finished inside [0, 5) (0.7, 3.2, 2.6 and the warm-up one at 0.1): throughput
    # is what the pool delivered in the window, whenever the request was sent
    assert m.achieved_qps == pytest.approx(4 / 5.0)


@pytest.mark.parametrize(
    ("rr", "policy", "oracle", "expected"),
    [
        (100.0, 40.0, 20.0, 0.75),
        (100.0, 100.0, 20.0, 0.0),
        (100.0, 120.0, 20.0, -0.25),
        (100.0, 20.0, 20.0, 1.0),
    ],
    ids=["three-quarters", "no-better-than-rr", "worse-than-rr", "matches-oracle"],
)
def test_gap_closed(rr: float, policy: float, oracle: float, expected: float) -> None:
    assert gap_closed(rr, policy, oracle) == pytest.approx(expected)


def test_gap_closed_is_undefined_when_the_oracle_is_no_better() -> None:
    assert math.isnan(gap_closed(10.0, 5.0, 10.0))
    assert math.isnan(gap_closed(10.0, 5.0, 12.0))
