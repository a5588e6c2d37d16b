"""``session-affinity-filter`` and ``multicluster-session-affinity-filter``: pin a session, hard.

Upstream's filter (the hard form of ``session-affinity-scorer``): when the request's session
points at an endpoint that is among the candidates, that endpoint is the only one kept;
otherwise (no session, an undecodable token, an unbound session, or the bound endpoint gone)
every candidate passes, so the filter never empties the set. The multicluster variant is the
same filter under its own type: in a cluster-scoped EPP the endpoints are clusters, so it pins
a session to its cluster without any translation (as upstream, a pure delegation).

Parameters (upstream's names and defaults):

* ``strategy``: ``encoded_endpoint_header`` (the default) or ``session_id``; only the block of
  the chosen strategy is used.
* ``encodedEndpointHeaderConfig.header`` (``x-session-token``): the request header carries the
  base64 of ``namespace/name`` of the endpoint to pin to (an endpoint matches by its full name,
  or by ``name`` alone when kvroute names it without a namespace). Stateless. kvroute does not
  write this header on responses (it has no response-header hook yet), so the client (or a proxy
  in front) must produce the token; upstream's filter writes it back itself.
* ``sessionIdConfig``: ``sources`` (in priority order, each exactly one of ``header: NAME`` or
  ``attribute: agent-identity`` / ``SessionID``; default ``[{header: x-session-id}]``),
  ``evictionTtlSeconds`` (300) and ``evictionSweepSeconds`` (10); 0 means the default, as
  upstream. A session is bound at PreRequest to the endpoint the request went to (rebinding it
  when its endpoint had left the candidates); the bindings and their expiry are the stock
  ``session-affinity-scorer``'s (:mod:`kvroute.scheduling.plugins.scorers.session_affinity`),
  which this filter reuses.
* ``profileName``: accepted; the primary profile's target is what is bound (as the scorer).

Unlike the kvroute scorer, there is no "sticky until overloaded" escape: a filter is a hard pin,
as upstream.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.hooks import PreRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Filter, SchedulingResult
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.scorers.session_affinity import (
    SessionAffinityParams,
    SessionAffinityScorer,
    SessionSource,
)
from kvroute.scheduling.request import InferenceRequest

TYPE = "session-affinity-filter"
MULTICLUSTER_TYPE = "multicluster-session-affinity-filter"
DEFAULT_TTL_S = 300.0
DEFAULT_SWEEP_S = 10.0


class EncodedEndpointHeaderConfig(PluginParams):
    header: str = Field(default="x-session-token", min_length=1)


class SessionIdConfig(PluginParams):
    sources: tuple[SessionSource, ...] = ()
    eviction_ttl_seconds: float = Field(default=0.0, ge=0.0, alias="evictionTtlSeconds")
    eviction_sweep_seconds: float = Field(default=0.0, ge=0.0, alias="evictionSweepSeconds")


class SessionAffinityFilterParams(PluginParams):
    strategy: Literal["encoded_endpoint_header", "session_id"] = "encoded_endpoint_header"
    encoded_endpoint_header_config: EncodedEndpointHeaderConfig = Field(
        default_factory=EncodedEndpointHeaderConfig, alias="encodedEndpointHeaderConfig"
    )
    session_id_config: SessionIdConfig = Field(
        default_factory=SessionIdConfig, alias="sessionIdConfig"
    )
    profile_name: str = Field(default="", alias="profileName")


class SessionAffinityFilter:
    """Keep only the session's endpoint when it is a candidate (see the module docstring)."""

    def __init__(
        self,
        name: str = TYPE,
        params: SessionAffinityFilterParams | None = None,
        type_name: str = TYPE,
    ) -> None:
        self.typed_name = TypedName(type_name, name)
        self.params = p = params or SessionAffinityFilterParams()
        self._header = p.encoded_endpoint_header_config.header.lower()
        ids = p.session_id_config
        self.bindings = SessionAffinityScorer(
            name,
            SessionAffinityParams(
                strategy="session_id",
                sources=ids.sources or (SessionSource(header="x-session-id"),),
                eviction_ttl_seconds=ids.eviction_ttl_seconds or DEFAULT_TTL_S,
                eviction_sweep_seconds=ids.eviction_sweep_seconds or DEFAULT_SWEEP_S,
                profile_name=p.profile_name or None,
            ),
        )

    def target(self, request: InferenceRequest) -> str | None:
        """The endpoint name the request's session points at (None: no preference)."""
        if self.params.strategy == "session_id":
            key = self.bindings.session_key(request)
            return self.bindings.bound(key) if key is not None else None
        raw = request.headers.get(self._header)
        if not raw:
            return None
        try:
            return base64.b64decode(raw, validate=True).decode() or None
        except (binascii.Error, UnicodeDecodeError):
            return None

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        target = self.target(request)
        if target is None:
            return endpoints
        short = target.rpartition("/")[2]
        for e in endpoints:
            if e.name == target or ("/" not in e.name and e.name == short):
                return [e]
        return endpoints

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.params.strategy == "session_id":
            self.bindings.pre_request(state, request, result)


def _make(type_name: str) -> PluginFactory:
    def factory(
        name: str, parameters: Mapping[str, Any], handle: PluginHandle
    ) -> SessionAffinityFilter:
        params = parse_params(SessionAffinityFilterParams, name, type_name, parameters)
        return SessionAffinityFilter(name, params, type_name)

    return factory


PLUGINS: Mapping[str, PluginFactory] = {
    TYPE: _make(TYPE),
    MULTICLUSTER_TYPE: _make(MULTICLUSTER_TYPE),
}

_: type[Filter] = SessionAffinityFilter
_p: type[PreRequest] = SessionAffinityFilter
