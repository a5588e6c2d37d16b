"""Metrics endpoint authentication as upstream's ``--metrics-endpoint-auth``: Kubernetes
TokenReview, then SubjectAccessReview (issue 20 finding 7).

Upstream (controller-runtime's ``WithAuthenticationAndAuthorization`` filter) checks a scraper's
``Authorization: Bearer <token>`` with a ``TokenReview`` (who is it?) and then a
``SubjectAccessReview`` for ``get`` on the request's non-resource URL (may it read
``/metrics``?). kvroute does the same with the lightkube client:

* no bearer token, a token the API server does not authenticate, or an API server that cannot
  be asked (down, an error status, a timeout): **401** (the last is logged at WARNING once per
  outage, and not cached: the next request asks again);
* authenticated but not allowed: **403**;
* decisions (allowed, 401 for a rejected token, 403) are cached per (token, path) for
  ``ttl_s`` (10 s) so a scraper every few seconds costs one review pair per TTL; keys are
  SHA-256 digests, the token itself is not kept. :class:`DecisionCache` is the sans-IO part.

RBAC for the EPP's service account: ``create`` on ``tokenreviews`` (authentication.k8s.io) and
``subjectaccessreviews`` (authorization.k8s.io), as upstream's chart grants; the scraper needs
``get`` on the non-resource URL ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 10.0
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class AuthDecision:
    status: int  # 200 allowed, 401 not authenticated, 403 not authorized
    reason: str
    user: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


class DecisionCache:
    """Decisions by (token digest, path) for ``ttl_s``; at most ``max_entries`` (oldest out)."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[bytes, str], tuple[float, AuthDecision]] = OrderedDict()

    @staticmethod
    def _key(token: str, path: str) -> tuple[bytes, str]:
        return hashlib.sha256(token.encode()).digest(), path

    def get(self, token: str, path: str) -> AuthDecision | None:
        key = self._key(token, path)
        hit = self._entries.get(key)
        if hit is None:
            return None
        expires, decision = hit
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return decision

    def put(self, token: str, path: str, decision: AuthDecision) -> None:
        key = self._key(token, path)
        self._entries[key] = (self._clock() + self.ttl_s, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' if there is none)."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _Client(Protocol):
    async def create(self, obj: Any) -> Any: ...


class TokenReviewAuthenticator:
    """See the module docstring. ``client``: a lightkube ``AsyncClient`` (or the same shape)."""

    def __init__(
        self,
        client: _Client,
        *,
        cache: DecisionCache | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._client = client
        self.cache = cache if cache is not None else DecisionCache()
        self._timeout_s = timeout_s
        self.reviews = 0  # TokenReviews sent (tests and the log read it)
        self._failing = False

    async def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await close()

    async def check(self, authorization: str, path: str) -> AuthDecision:
        token = bearer_token(authorization)
        if not token:
            return AuthDecision(401, "no bearer token")
        cached = self.cache.get(token, path)
        if cached is not None:
            return cached
        try:
            decision = await asyncio.wait_for(self._review(token, path), self._timeout_s)
        except Exception as exc:  # the API server could not be asked: not cached, 401
            if not self._failing:
                log.warning(
                    "metrics auth: TokenReview failed (%s: %s); answering 401 until the API "
                    "server answers again",
                    type(exc).__name__,
                    exc,
                )
            self._failing = True
            return AuthDecision(401, "the token could not be verified (Kubernetes API error)")
        if self._failing:
            log.warning("metrics auth: TokenReview works again")
            self._failing = False
        self.cache.put(token, path, decision)
        return decision

    async def _review(self, token: str, path: str) -> AuthDecision:
        from lightkube.models.authentication_v1 import TokenReviewSpec
        from lightkube.models.authorization_v1 import (
            NonResourceAttributes,
            SubjectAccessReviewSpec,
        )
        from lightkube.resources.authentication_v1 import TokenReview
        from lightkube.resources.authorization_v1 import SubjectAccessReview

        self.reviews += 1
        review = await self._client.create(TokenReview(spec=TokenReviewSpec(token=token)))
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            error = getattr(status, "error", None) or "not authenticated"
            return AuthDecision(401, f"token rejected: {error}")
        user = status.user
        access = await self._client.create(
            SubjectAccessReview(
                spec=SubjectAccessReviewSpec(
                    user=user.username,
                    groups=user.groups,
                    uid=user.uid,
                    extra=user.extra,
                    nonResourceAttributes=NonResourceAttributes(path=path, verb="get"),
                )
            )
        )
        name = user.username or ""
        if access.status is not None and access.status.allowed:
            return AuthDecision(200, "allowed", name)
        why = (access.status.reason if access.status is not None else None) or "RBAC"
        return AuthDecision(403, f"{name or 'the user'} may not get {path} ({why})", name)
