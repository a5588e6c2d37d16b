"""``ReportWaits``: the deadlines of exchanges waiting for their tap report (sans-IO)."""

from __future__ import annotations

from kvroute.extproc.tap_wait import ReportWaits


def test_due_keys_pop_in_deadline_order_per_wait_length() -> None:
    waits = ReportWaits()
    assert waits.add("a", 10.0, now=0.0) == 10.0
    waits.add("b", 10.0, now=1.0)
    waits.add("c", 1.0, now=2.0)  # a shorter wait: due before both
    assert waits.next_deadline() == 3.0
    assert waits.pop_due(2.9) == []
    assert waits.pop_due(3.0) == ["c"]
    assert waits.next_deadline() == 10.0
    assert waits.pop_due(10.5) == ["a"]
    assert "b" in waits
    assert len(waits) == 1
    assert waits.pop_due(100.0) == ["b"]
    assert waits.next_deadline() is None
    assert len(waits) == 0


def test_a_discarded_key_is_never_due_and_the_next_one_becomes_the_head() -> None:
    waits = ReportWaits()
    waits.add("a", 5.0, now=0.0)
    waits.add("b", 5.0, now=1.0)
    waits.discard("a")
    waits.discard("a")  # twice: no-op
    waits.discard("never")
    assert waits.next_deadline() == 6.0
    assert waits.pop_due(5.5) == []
    assert waits.pop_due(6.0) == ["b"]


def test_adding_a_waiting_key_again_moves_its_deadline() -> None:
    waits = ReportWaits()
    waits.add("a", 5.0, now=0.0)
    waits.add("b", 5.0, now=1.0)
    waits.add("a", 5.0, now=2.0)  # re-held: now after b
    assert waits.pop_due(6.0) == ["b"]
    assert waits.pop_due(7.0) == ["a"]
    waits.add("c", 5.0, now=0.0)
    waits.add("c", 1.0, now=0.0)  # another wait length: only the new one counts
    assert len(waits) == 1
    assert waits.pop_due(1.0) == ["c"]
    assert waits.pop_due(5.0) == []
