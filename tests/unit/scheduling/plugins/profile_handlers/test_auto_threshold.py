"""The ``nonCachedTokens: auto`` learner on synthetic costs (sans-IO, no scheduler)."""

from __future__ import annotations

import random

from kvroute.scheduling.plugins.profile_handlers.auto_threshold import AutoThreshold, context


def test_context_is_the_sign_of_the_queue_difference() -> None:
    assert (context(0, 3), context(2, 2), context(5, 1)) == (-1, 0, 1)


def test_uniform_prompts_split_while_the_prefill_queue_is_shorter() -> None:
    """One bucket (every prompt 8000 tokens). A split costs 0.02 s/token plus 0.01 per request
    waiting at the prefill side; kept whole, 0.03 plus 0.01 per request waiting at the decode
    pick. The learner must split when the prefill side's queue is shorter and keep the request
    whole when it is longer (the old threshold could only do all or nothing)."""
    auto = AutoThreshold(initial=2048, exploration=0.1, min_samples=10, rng=random.Random(1))
    rng = random.Random(2)
    for _ in range(3000):
        qs, qw = rng.randrange(4), rng.randrange(4)
        split = auto.choose(8000, qs, qw)
        cost = 0.02 + 0.01 * qs if split else 0.03 + 0.01 * qw
        auto.observe(8000, split, cost, qs, qw)
    assert auto.prefers_split(8000, context(0, 2))
    assert auto.prefers_split(8000, context(1, 1))  # 0.02 + q < 0.03 + q
    assert not auto.prefers_split(8000, context(3, 0))
    assert auto.threshold == 4096  # the bucket's lower edge: split wins at equal queues


def test_a_system_slowing_down_does_not_flip_the_verdict() -> None:
    """Every cost grows 0.5% per completion (a backlog building up) and splitting is 10%
    cheaper throughout. The minority mode's samples are old, so comparing raw averages would
    favour it; costs relative to the bucket's running baseline keep the verdict on split."""
    auto = AutoThreshold(initial=2048, exploration=0.05, min_samples=5, rng=random.Random(3))
    level = 0.02
    verdicts = []
    for _ in range(2000):
        split = auto.choose(8000)
        auto.observe(8000, split, level * (0.9 if split else 1.0))
        level *= 1.005
        verdicts.append(auto.prefers_split(8000))
    assert all(verdicts[-1500:])


def test_a_margin_keeps_near_ties_whole() -> None:
    """Splitting 1% cheaper is inside the 2% margin: the request stays whole."""
    auto = AutoThreshold(initial=64, exploration=0.5, min_samples=5, rng=random.Random(4))
    for _ in range(400):
        split = auto.choose(1000)
        auto.observe(1000, split, 0.99 if split else 1.0)
    assert not auto.prefers_split(1000)
    assert auto.threshold == 1024  # above the only learnt bucket, which is cheaper whole


def test_unlearnt_buckets_borrow_from_learnt_neighbours() -> None:
    auto = AutoThreshold(initial=100_000, exploration=0.5, min_samples=5, rng=random.Random(5))
    for _ in range(200):
        split = auto.choose(1500)
        auto.observe(1500, split, 0.5 if split else 1.0)
    assert auto.prefers_split(1500)
    assert auto.prefers_split(9000)  # a longer bucket follows the shorter learnt one
    assert not auto.prefers_split(9000, context(4, 0))  # only in the context it was learnt in
    assert not auto.prefers_split(300)  # shorter: the initial rule (300 < 100000)


def test_stall_charge_uses_the_fastest_prefill_rate_seen_and_only_when_on() -> None:
    off = AutoThreshold(2048, 0.05, 20, random.Random(0))
    assert off.stall_seconds(8000, 10, 0.25) == 0.0  # learns the rate, charges nothing
    assert off.prefill_rate == 32000
    on = AutoThreshold(2048, 0.05, 20, random.Random(0), charge_stalls=True)
    assert on.stall_seconds(1000, 4, None) == 0.0  # no rate yet
    on.stall_seconds(8000, 0, 0.25)  # 32k tokens/s
    on.stall_seconds(8000, 0, 2.0)  # queued: a slower apparent rate does not lower it
    assert on.prefill_rate == 32000
    assert on.stall_seconds(3200, 5, None) == 5 * 0.1
