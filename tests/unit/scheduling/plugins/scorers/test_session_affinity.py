"""session-affinity-scorer: bind at PreRequest, stick until overloaded, unknown key = new."""

from __future__ import annotations

import base64
from types import MappingProxyType

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.scorers.session_affinity import (
    SessionAffinityParams,
    SessionAffinityScorer,
)
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import make_endpoint, make_state


def _req(headers: dict[str, str]) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", incoming_model="m", target_model="m", headers=MappingProxyType(headers)
    )


def _sent(scorer: SessionAffinityScorer, req: InferenceRequest, ep, now: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    result = SchedulingResult({"default": ProfileResult((ep,))}, "default")
    scorer.pre_request(make_state(now), req, result)


def test_unknown_session_then_sticky() -> None:
    eps = [make_endpoint("a"), make_endpoint("b")]
    s = SessionAffinityScorer()
    req = _req({"x-session-id": "chat-1"})
    assert s.score(make_state(), req, eps) == {}  # new session: no preference
    _sent(s, req, eps[1])
    assert s.score(make_state(), req, eps) == {"b": 1.0}
    assert s.score(make_state(), _req({}), eps) == {}
    assert s.score(make_state(), _req({"x-session-id": "other"}), eps) == {}
    assert s.score(make_state(), req, eps[:1]) == {}  # bound endpoint not a candidate


def test_overloaded_endpoint_loses_its_sessions() -> None:
    s = SessionAffinityScorer()
    req = _req({"x-session-id": "chat-1"})
    busy = make_endpoint("b", waiting=40, running=10)
    _sent(s, req, busy)
    eps = [make_endpoint("a", running=2), busy]
    assert s.score(make_state(), req, eps) == {}
    _sent(s, req, eps[0])  # re-bound where the request went
    assert s.bound("chat-1") == "a"


def test_bindings_expire() -> None:
    s = SessionAffinityScorer(params=SessionAffinityParams(evictionTtlSeconds=5))
    req = _req({"x-session-id": "old"})
    _sent(s, req, make_endpoint("a"), now=0.0)
    _sent(s, _req({"x-session-id": "new"}), make_endpoint("a"), now=100.0)
    assert s.bound("old") is None
    assert s.bound("new") == "a"


def test_agent_identity_source_and_encoded_header() -> None:
    s = SessionAffinityScorer(
        params=SessionAffinityParams.model_validate({"sources": [{"attribute": "agent-identity"}]})
    )
    req = _req({"x-claude-code-session-id": "agent-7"})
    _sent(s, req, make_endpoint("a"))
    assert s.bound("agent-7") == "a"
    enc = SessionAffinityScorer(params=SessionAffinityParams(strategy="encoded_endpoint_header"))
    token = base64.b64encode(b"default/b").decode()
    eps = [make_endpoint("a"), make_endpoint("b")]
    assert enc.score(make_state(), _req({"x-session-token": token}), eps) == {"b": 1.0}
    assert enc.score(make_state(), _req({"x-session-token": "%%%"}), eps) == {}


def test_params_validated() -> None:
    reg = default_registry(include_entry_points=False)
    with pytest.raises(PluginValidationError, match="sources"):
        reg.create("session-affinity-scorer", "s", {"sources": [{}]}, PluginContext())
