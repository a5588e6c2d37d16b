"""``session-affinity-scorer`` (Affinity): keep a conversation on the endpoint holding its cache.

Formula (llm-d-router): 1 for the endpoint the request's session is bound to, 0 for the others
(only the bound endpoint is returned; the framework counts a missing key as 0); an unknown or
absent session key gives no preference (0 everywhere) and starts a new session bound at
PreRequest to wherever the request goes.

kvroute addition, "sticky until overloaded": the binding is not honoured (score 0 everywhere)
while its endpoint is overloaded by the prefix scorer's load-bound rule
(:mod:`~kvroute.scheduling.plugins.prefix.hotspot`: ``overloadAbsSlack`` requests *and*
``overloadRelSlack`` times busier than the least loaded candidate); the request then goes where
the other scorers send it and the session is re-bound there. A bound endpoint that is no longer
a candidate is treated the same way.

Session key, by ``strategy``:

* ``session_id`` (kvroute's default): the first of ``sources`` present: ``{header: NAME}`` (a
  request header) or ``{attribute: agent-identity}`` (the agent headers ``x-claude-code-session-
  id``, ``x-session-affinity``, ``session-id``, ``session_id``). Default sources
  ``[{header: x-session-id}]``. Bindings expire after ``evictionTtlSeconds`` (300) without use,
  swept every ``evictionSweepSeconds`` (10).
* ``encoded_endpoint_header``: the request header ``header`` (``x-session-token``) carries
  base64 ``namespace/name`` of the endpoint (as upstream writes it on responses); the endpoint of
  that name scores 1. (kvroute does not write the response header.)

Parameters: ``strategy``, ``header``, ``sources``, ``evictionTtlSeconds``,
``evictionSweepSeconds``, ``profileName`` (accepted; the primary profile's target is bound),
kvroute ``overloadAbsSlack`` (16), ``overloadRelSlack`` (1.5).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.hooks import PreRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, SchedulingResult, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.hotspot import HotspotGuard, endpoint_load
from kvroute.scheduling.request import InferenceRequest

TYPE = "session-affinity-scorer"
AGENT_IDENTITY_HEADERS = (
    "x-claude-code-session-id",
    "x-session-affinity",
    "session-id",
    "session_id",
)
MAX_SESSIONS = 100_000


class SessionSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str | None = None
    attribute: Literal["agent-identity", "SessionID"] | None = None

    @model_validator(mode="after")
    def _one(self) -> SessionSource:
        if (self.header is None) == (self.attribute is None):
            raise ValueError("each source needs exactly one of 'header' or 'attribute'")
        return self


class SessionAffinityParams(PluginParams):
    strategy: Literal["session_id", "encoded_endpoint_header"] = "session_id"
    header: str = "x-session-token"
    sources: tuple[SessionSource, ...] = (SessionSource(header="x-session-id"),)
    eviction_ttl_seconds: float = Field(default=300.0, gt=0.0, alias="evictionTtlSeconds")
    eviction_sweep_seconds: float = Field(default=10.0, gt=0.0, alias="evictionSweepSeconds")
    profile_name: str | None = Field(default=None, alias="profileName")
    overload_abs_slack: float = Field(default=16.0, ge=0.0, alias="overloadAbsSlack")
    overload_rel_slack: float = Field(default=1.5, ge=1.0, alias="overloadRelSlack")


class SessionAffinityScorer:
    category = ScorerCategory.AFFINITY

    def __init__(self, name: str = TYPE, params: SessionAffinityParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or SessionAffinityParams()
        self.guard = HotspotGuard(abs_slack=p.overload_abs_slack, rel_slack=p.overload_rel_slack)
        self._bound: dict[str, tuple[str, float]] = {}  # session -> (endpoint, last used)
        self._next_sweep = 0.0
        headers: list[str] = []
        for src in p.sources:
            if src.header is not None:
                headers.append(src.header.lower())
            elif src.attribute == "agent-identity":
                headers.extend(AGENT_IDENTITY_HEADERS)
            else:  # SessionID attribute: the session-id producer's header
                headers.append("x-session-id")
        self._headers = tuple(headers)

    def session_key(self, request: InferenceRequest) -> str | None:
        h = request.headers
        if self.params.strategy == "encoded_endpoint_header":
            raw = h.get(self.params.header.lower())
            if not raw:
                return None
            try:
                decoded = base64.b64decode(raw, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.rsplit("/", 1)[-1] or None
        for name in self._headers:
            v = h.get(name)
            if v:
                return v
        return None

    def _target_of(self, key: str) -> str | None:
        if self.params.strategy == "encoded_endpoint_header":
            return key
        got = self._bound.get(key)
        return got[0] if got is not None else None

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        # Only the bound endpoint is returned: a missing key contributes 0 (the framework adds
        # only the keys a scorer returns), so a request without a session costs nothing here.
        key = self.session_key(request)
        if key is None:
            return {}
        target = self._target_of(key)
        if target is None:
            return {}
        bound = [e for e in endpoints if e.name == target]
        if not bound:
            return {}
        limit = self.guard.limit(endpoints)  # overloaded: endpoint_load(e) > limit
        if limit is not None and any(endpoint_load(e) > limit for e in bound):
            return {}
        return {target: 1.0}

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.params.strategy != "session_id":
            return
        primary = result.primary
        if primary is None or not primary.targets:
            return
        key = self.session_key(request)
        if key is None:
            return
        now = state.now
        bound = self._bound
        if now >= self._next_sweep:
            horizon = now - self.params.eviction_ttl_seconds
            for k in [k for k, (_, t) in bound.items() if t < horizon]:
                del bound[k]
            self._next_sweep = now + self.params.eviction_sweep_seconds
        if key not in bound and len(bound) >= MAX_SESSIONS:
            bound.pop(next(iter(bound)))
        bound[key] = (primary.targets[0].name, now)

    def bound(self, key: str) -> str | None:
        got = self._bound.get(key)
        return got[0] if got is not None else None


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> SessionAffinityScorer:
    return SessionAffinityScorer(name, parse_params(SessionAffinityParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = SessionAffinityScorer
_p: type[PreRequest] = SessionAffinityScorer
