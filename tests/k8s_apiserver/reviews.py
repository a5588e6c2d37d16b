"""TokenReview and SubjectAccessReview on the fake API server (for ``--metrics-endpoint-auth``).

kube-apiserver answers ``POST /apis/authentication.k8s.io/v1/tokenreviews`` with the review's
``status`` filled in (``authenticated``, ``user``) and ``POST
/apis/authorization.k8s.io/v1/subjectaccessreviews`` with ``status.allowed``; neither is
stored. :class:`ReviewingApiServer` does that from two tables a test fills: ``tokens`` (token ->
username) and ``allowed`` ((username, path) pairs that may ``get`` that non-resource URL).
``fail_reviews`` makes both answer 500 (an API server in trouble). Everything else is the plain
:class:`~tests.k8s_apiserver.server.FakeApiServer`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.k8s_apiserver.server import FakeApiServer
from tests.k8s_apiserver.wire import error_response, json_response

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class ReviewingApiServer(FakeApiServer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens: dict[str, str] = {}
        self.allowed: set[tuple[str, str]] = set()
        self.fail_reviews = False
        self.reviews: list[str] = []  # "token" / "access", in order

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path in (TOKEN_REVIEWS, ACCESS_REVIEWS):
            self.request_log.append((request.method, request.path_qs))
            return self._review(request.path, json.loads(await request.read()))
        return await super()._dispatch(request)

    def _review(self, path: str, body: dict[str, Any]) -> web.Response:
        if self.fail_reviews:
            return error_response(500, "InternalError", "etcdserver: request timed out")
        spec = body.get("spec") or {}
        if path == TOKEN_REVIEWS:
            self.reviews.append("token")
            user = self.tokens.get(str(spec.get("token")))
            status: dict[str, Any] = (
                {"authenticated": True, "user": {"username": user, "groups": ["scrapers"]}}
                if user is not None
                else {"authenticated": False, "error": "invalid bearer token"}
            )
        else:
            self.reviews.append("access")
            url = (spec.get("nonResourceAttributes") or {}).get("path", "")
            ok = (spec.get("user"), url) in self.allowed
            status = {"allowed": ok} if ok else {"allowed": False, "reason": "no RBAC rule"}
        return json_response({**body, "status": status}, status=201)
