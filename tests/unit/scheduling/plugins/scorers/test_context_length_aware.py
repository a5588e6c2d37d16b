"""context-length-aware: label bands, the -scorer alias and the optional filter."""

from __future__ import annotations

from types import MappingProxyType

from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.context_length_aware import (
    RANGE_LABEL,
    ContextLengthAware,
    ContextLengthAwareParams,
    parse_range,
)
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import make_endpoint, make_state


def _req(tokens: int, max_tokens: int | None = None) -> InferenceRequest:
    body = {} if max_tokens is None else {"max_tokens": max_tokens}
    return InferenceRequest(
        request_id="r",
        incoming_model="m",
        target_model="m",
        prompt_text="x" * (4 * tokens),
        body=MappingProxyType(body),
    )


EPS = [
    make_endpoint("short", labels={RANGE_LABEL: "0-2048"}),
    make_endpoint("wide", labels={RANGE_LABEL: "0-32768"}),
    make_endpoint("long", labels={RANGE_LABEL: "8192-131072"}),
    make_endpoint("plain"),
    make_endpoint("broken", labels={RANGE_LABEL: "lots"}),
]


def test_bands() -> None:
    out = ContextLengthAware().score(make_state(), _req(1000), EPS)
    assert out["short"] == 1.0  # the narrowest in-range
    assert 0.3 < out["wide"] < out["short"]
    assert 0.0 <= out["long"] < 0.3
    assert out["plain"] == 0.5
    assert out["broken"] == 0.5


def test_max_tokens_counts_towards_length() -> None:
    out = ContextLengthAware().score(make_state(), _req(1000, max_tokens=2000), EPS)
    assert out["short"] < 0.3
    assert out["wide"] == 1.0


def test_filtering_keeps_in_range_or_all() -> None:
    f = ContextLengthAware(params=ContextLengthAwareParams(enable_filtering=True))
    assert [e.name for e in f.filter(make_state(), _req(10000), EPS)] == ["wide", "long"]
    assert len(f.filter(make_state(), _req(10**6), EPS)) == len(EPS)
    assert len(ContextLengthAware().filter(make_state(), _req(10000), EPS)) == len(EPS)


def test_parse_range() -> None:
    assert parse_range("10-20") == (10, 20)
    assert parse_range("20-10") is None
    assert parse_range("") is None
    assert parse_range("a-b") is None


def test_both_names_registered() -> None:
    reg = default_registry(include_entry_points=False)
    for t in ("context-length-aware", "context-length-aware-scorer"):
        p = reg.create(t, "c", {"enableFiltering": True}, PluginContext())
        assert p.typed_name.type == t
