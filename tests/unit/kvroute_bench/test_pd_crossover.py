"""The crossover measurement through kvroute's decider (virtual time)."""

from __future__ import annotations

from kvroute_bench import pd_crossover
from kvroute_bench.pd_crossover import BucketRow, observed_crossover
from kvroute_sim.config import engine_profile

ENGINE = engine_profile("h100-llama3-8b", max_model_len=16384)


def test_observed_crossover_is_the_edge_from_which_every_longer_bucket_mostly_splits() -> None:
    rows = [
        BucketRow(256, 10, 0.6, 0.01, 0.01),  # an outlier below a bucket kept whole
        BucketRow(512, 10, 0.1, 0.01, 0.01),
        BucketRow(1024, 10, 0.9, 0.01, 0.01),
        BucketRow(2048, 10, 1.0, 0.01, 0.01),
    ]
    assert observed_crossover(rows) == 1024
    assert observed_crossover(rows[:2]) is None


def test_mixed_lengths_report_what_auto_decided_per_bucket() -> None:
    rows, res, threshold = pd_crossover.mixed(4, 2, 4.0, 20.0, ENGINE, "rdma")
    assert sum(r.requests for r in rows) == res.completed > 0
    assert [r.low for r in rows] == sorted(r.low for r in rows)
    assert all(128 <= r.low < 16384 and 0.0 <= r.split_share <= 1.0 for r in rows)
    # Not learnt in 80 requests: the initial rule (split from 2048 tokens), 5% exploring.
    assert threshold == 2048
    assert {r.low for r in rows if r.split_share > 0.5} >= {4096, 8192}
