"""The anti-hotspot rule: the overloaded set, its threshold, and the holders-only shortcut."""

from __future__ import annotations

import random

from kvroute.datastore.endpoint import Endpoint
from kvroute.scheduling.plugins.prefix.hotspot import (
    HotspotGuard,
    HotspotPolicy,
    endpoint_load,
    held_not_overloaded,
)
from tests.fakes import make_endpoint


def _random_pool(rng: random.Random) -> list[Endpoint]:
    spread = rng.choice([3, 30, 300])
    return [
        make_endpoint(
            f"e{rng.randrange(40) if rng.random() < 0.05 else i}",  # the odd duplicate name
            waiting=rng.randrange(spread),
            running=rng.randrange(spread),
            sent=rng.randrange(4),
            inflight=rng.randrange(spread),
        )
        for i in range(rng.randint(1, 40))
    ]


def test_limit_is_the_threshold_of_the_overloaded_set() -> None:
    rng = random.Random(2)
    guard = HotspotGuard()
    for _ in range(300):
        eps = _random_pool(rng)
        limit = guard.limit(eps)
        over = guard.overloaded(eps)
        if limit is None:
            assert over == frozenset()
        else:
            assert over == frozenset(e.name for e in eps if endpoint_load(e) > limit)


def test_held_not_overloaded_is_the_old_dict_on_holders() -> None:
    """Equal to ``{e.name: 0 if e.name in overloaded else held.get(e.name, 0) / total}`` on the
    names it keeps, and 0 (absent) exactly where that dict has 0."""
    rng = random.Random(3)
    guard = HotspotGuard()
    for _ in range(300):
        eps = _random_pool(rng)
        total = rng.randint(1, 16)
        held = {f"e{i}": rng.randint(1, total) for i in range(45) if rng.random() < 0.3}
        got = guard.loads_over(eps)
        if got is None:
            continue
        loads, limit = got
        assert limit == guard.limit(eps)
        assert loads == [endpoint_load(e) for e in eps]
        over = guard.overloaded(eps)
        old = {e.name: 0.0 if e.name in over else held.get(e.name, 0) / total for e in eps}
        new = held_not_overloaded(eps, loads, held, total, limit)
        assert {n: old[n] for n in old if old[n] != 0.0} == new


def test_policy_none_never_overloads() -> None:
    eps = [make_endpoint("a", waiting=100), make_endpoint("b")]
    guard = HotspotGuard(HotspotPolicy.NONE)
    assert guard.limit(eps) is None
    assert guard.overloaded(eps) == frozenset()
