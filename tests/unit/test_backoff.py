"""The one retry policy: exponential, capped, full jitter, reset after a success."""

from __future__ import annotations

import random

import pytest

from kvroute.backoff import Backoff


def test_cap_doubles_and_saturates_without_overflow() -> None:
    b = Backoff(initial=0.1, maximum=5.0)
    assert [b.cap(n) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert b.cap(10_000) == 5.0
    assert b.cap(-3) == pytest.approx(0.1)


def test_full_jitter_spans_zero_to_cap() -> None:
    b = Backoff(initial=1.0, maximum=8.0, rng=random.Random(1))
    draws = [b.delay(3) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert min(draws) < 0.5  # the whole range, not [cap/2, cap]
    assert max(draws) > 7.5
    assert sum(draws) / len(draws) == pytest.approx(4.0, rel=0.1)


def test_minimum_is_a_floor() -> None:
    b = Backoff(initial=0.05, maximum=0.4, minimum=0.05, rng=random.Random(2))
    assert b.delay(0) == pytest.approx(0.05)
    assert all(0.05 <= b.delay(5) <= 0.4 for _ in range(500))


def test_same_seed_same_delays() -> None:
    a = Backoff(rng=random.Random(9))
    b = Backoff(rng=random.Random(9))
    assert [a.delay(n) for n in range(10)] == [b.delay(n) for n in range(10)]


def test_retries_count_and_reset() -> None:
    retries = Backoff(initial=1.0, maximum=100.0, rng=random.Random(3)).retries()
    delays = [retries.failed() for _ in range(5)]
    assert retries.failures == 5
    assert all(d <= 2.0**i for i, d in enumerate(delays))
    retries.reset()
    assert retries.failures == 0
    assert retries.failed() <= 1.0  # the first failure's cap again


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0.0}, {"initial": 2.0, "maximum": 1.0}, {"factor": 0.5}, {"minimum": 1.0}],
    ids=["zero initial", "initial above maximum", "shrinking", "minimum above initial"],
)
def test_invalid_policies(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
