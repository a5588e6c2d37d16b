"""Reflector policy pieces (pure): backoff bounds and 410 recognition for both wire forms."""

from __future__ import annotations

import random

import httpx2
import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from kvroute.backoff import Backoff
from kvroute.k8s.reflector import is_gone


@pytest.mark.parametrize(
    ("attempt", "lo", "hi"),
    [(0, 0.1, 0.2), (1, 0.2, 0.4), (3, 0.8, 1.6), (20, 5.0, 10.0)],
    ids=["first", "second", "fourth", "capped"],
)
def test_backoff_is_jittered_exponential_and_capped(attempt: int, lo: float, hi: float) -> None:
    # Full jitter, as the reflector's docstring says: uniform(0, cap), so draws below the old
    # half-jitter floor ``lo`` (cap / 2) occur too.
    b = Backoff(initial=0.2, maximum=10.0, rng=random.Random(7))
    draws = [b.delay(attempt) for _ in range(200)]
    assert all(0 <= d <= hi for d in draws)
    assert min(draws) < lo <= max(draws)


def _http_error(code: int) -> httpx2.HTTPStatusError:
    request = httpx2.Request("GET", "http://x/api/v1/pods")
    response = httpx2.Response(code, request=request)
    return httpx2.HTTPStatusError("x", request=request, response=response)


@pytest.mark.parametrize(
    ("exc", "gone"),
    [
        (ApiError(status=Status(code=410, reason="Expired")), True),
        (ApiError(status=Status(code=500, reason="InternalError")), False),
        (_http_error(410), True),
        (_http_error(503), False),
        (ConnectionResetError(), False),
    ],
    ids=["error-event-410", "error-event-500", "http-410", "http-503", "network"],
)
def test_is_gone(exc: BaseException, gone: bool) -> None:
    assert is_gone(exc) is gone
