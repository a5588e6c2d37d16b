"""Passive health (issue 20 finding 5): consecutive failures eject, success restores."""

from __future__ import annotations

import logging

import pytest

from kvroute.datastore.health import PassiveHealth


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_three_consecutive_failures_eject_for_a_while_then_one_more_ejects_longer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    h = PassiveHealth(clock, threshold=3, base_ejection_s=10, max_ejection_s=15)
    with caplog.at_level(logging.WARNING):
        h.failure("a:1", "HTTP 500")
        h.failure("a:1", "HTTP 500")
        assert h.routable("a:1")
        h.failure("a:1", "HTTP 502")
        assert not h.routable("a:1")
        h.failure("a:1", "HTTP 500")  # while ejected: no second log line, no longer ejection
        clock.now += 10
        assert h.routable("a:1")
        h.failure("a:1", "HTTP 500")  # half-open probe failed: ejected again, doubled (capped)
        assert not h.routable("a:1")
        clock.now += 14.9
        assert not h.routable("a:1")
        clock.now += 0.2
        h.success("a:1")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "for 10s after 3 consecutive failures (last: HTTP 502)" in messages[0]
    assert "for 15s" in messages[1]
    assert "back in rotation" in messages[2]
    assert h.routable("a:1")


def test_a_success_resets_the_count_and_logs_nothing_when_never_ejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = PassiveHealth(_Clock(), threshold=2)
    with caplog.at_level(logging.WARNING):
        h.failure("a:1", "x")
        h.success("a:1")
        h.failure("a:1", "x")
    assert h.routable("a:1")
    assert caplog.records == []


def test_all_routable_is_false_only_while_an_ejection_is_in_force() -> None:
    clock = _Clock()
    h = PassiveHealth(clock, threshold=2, base_ejection_s=10.0)
    assert h.all_routable()
    h.failure("a:1", "HTTP 503")  # below the threshold: counted, not ejected
    assert h.all_routable()
    assert h.routable("a:1")
    h.failure("a:1", "HTTP 503")
    assert not h.all_routable()
    assert not h.routable("a:1")
    clock.now += 10.0
    assert h.all_routable()
    assert h.routable("a:1")
