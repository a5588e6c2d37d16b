"""The transition table: every state has a row, a rejected stream swallows anything, and the
request side can only move forward (no request message once the response has started)."""

from __future__ import annotations

from kvroute.extproc.stream_states import TRANSITIONS, Event, State

REQUEST_EVENTS = {Event.REQUEST_HEADERS, Event.REQUEST_BODY}


def test_every_state_has_a_row_and_rejected_takes_everything() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.REJECTED] == frozenset(Event)


def test_no_request_message_after_the_response_started() -> None:
    for state in (State.ROUTED, State.RESPONSE_BODY, State.COMPLETE):
        assert not TRANSITIONS[state] & REQUEST_EVENTS, state
    assert Event.REQUEST_HEADERS not in TRANSITIONS[State.REQUEST_BODY]
