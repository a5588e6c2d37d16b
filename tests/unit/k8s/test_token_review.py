"""The sans-IO half of ``kvroute.k8s.token_review``: the decision cache and the header parser;
the authenticator's error handling against a client that fails (the API-server side is in
``tests/integration/test_metrics_token_review.py``)."""

from __future__ import annotations

from typing import Any

from kvroute.k8s.token_review import (
    AuthDecision,
    DecisionCache,
    TokenReviewAuthenticator,
    bearer_token,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_expires_after_the_ttl_and_keys_on_token_and_path() -> None:
    clock = Clock()
    cache = DecisionCache(ttl_s=10.0, clock=clock)
    ok = AuthDecision(200, "allowed", "prom")
    cache.put("t", "/metrics", ok)
    assert cache.get("t", "/metrics") == ok
    assert cache.get("t", "/pool") is None
    assert cache.get("u", "/metrics") is None
    clock.now += 9.9
    assert cache.get("t", "/metrics") == ok
    clock.now += 0.1
    assert cache.get("t", "/metrics") is None
    assert len(cache) == 0


def test_cache_is_bounded_and_keeps_no_raw_token() -> None:
    cache = DecisionCache(max_entries=2)
    for token in ("a", "b", "c"):
        cache.put(token, "/metrics", AuthDecision(401, "no"))
    assert len(cache) == 2
    assert cache.get("a", "/metrics") is None
    assert all(isinstance(k[0], bytes) and len(k[0]) == 32 for k in cache._entries)


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    assert bearer_token("Basic abc") == ""
    assert bearer_token("") == ""
    assert bearer_token("Bearer") == ""


class FailingClient:
    def __init__(self) -> None:
        self.calls = 0

    async def create(self, obj: Any) -> Any:
        self.calls += 1
        raise ConnectionError("connection refused")


async def test_api_errors_are_401_and_not_cached() -> None:
    client = FailingClient()
    auth = TokenReviewAuthenticator(client)
    for _ in range(2):
        decision = await auth.check("Bearer t", "/metrics")
        assert decision.status == 401
    assert client.calls == 2
    assert (await auth.check("", "/metrics")).status == 401
    assert client.calls == 2  # no token: the API server is not asked
