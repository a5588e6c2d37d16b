"""header-based-testing-filter: the conformance suite's forced endpoint selection."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from kvroute.scheduling.interfaces import EMPTY_REASON
from kvroute.scheduling.plugins.filters.header_based_testing import HeaderBasedTestingFilter
from tests.fakes import make_endpoint, make_request, make_state, names

EPS = [make_endpoint(f"e{i}") for i in range(3)]  # 10.0.0.1 .. 10.0.0.3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("10.0.0.2", ["e1"]),
        ("10.0.0.3,10.0.0.1", ["e2", "e0"]),
        (" 10.0.0.1 , 10.0.0.2:8000 ", ["e0", "e1"]),
        ("10.0.0.1,10.0.0.1", ["e0"]),
        ("192.168.1.1", []),
        ("", []),
        (None, []),
    ],
    ids=[
        "one",
        "header order kept",
        "spaces and ports",
        "duplicates once",
        "unknown",
        "empty",
        "absent",
    ],
)
def test_header_based_testing_filter(header: str | None, expected: list[str]) -> None:
    headers = {} if header is None else {"test-epp-endpoint-selection": header}
    request = replace(make_request(), headers=MappingProxyType(headers))
    state = make_state()
    assert names(HeaderBasedTestingFilter().filter(state, request, EPS)) == expected
    if not expected:
        assert "test-epp-endpoint-selection" in state.read(EMPTY_REASON)
