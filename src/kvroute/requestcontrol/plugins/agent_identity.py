"""``agent-identity``: a RequestHeaderProcessor that names the agent session a request belongs
to (upstream ``requestcontrol/requestheader/agentidentity``).

It stores the first non-empty value of these headers as the ``agent-identity`` request
attribute: ``additionalSessionHeaders`` (config order, lowercased) then the built-in
``x-claude-code-session-id`` (Claude Code), ``x-session-affinity`` (OpenCode), ``session-id``
and ``session_id`` (Codex). No match: no attribute. The director makes the attribute the
request's fairness ID when no ``x-llm-d-inference-fairness-id`` (or
``x-gateway-inference-fairness-id``) header is present, so every turn of an agent session
shares one flow-control flow; otherwise the default flow.

Parameters: ``additionalSessionHeaders`` (list of header names, default empty; each must be a
non-empty string).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from kvroute.framework.hooks import RequestHeaderProcessor
from kvroute.framework.request import InferenceRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.requestcontrol.extensions import AGENT_IDENTITY_ATTRIBUTE
from kvroute.scheduling.plugins.params import PluginParams, parse_params

TYPE = "agent-identity"
DEFAULT_SESSION_HEADERS: tuple[str, ...] = (
    "x-claude-code-session-id",
    "x-session-affinity",
    "session-id",
    "session_id",
)


class AgentIdentityParams(PluginParams):
    additional_session_headers: tuple[str, ...] = Field(
        default=(), alias="additionalSessionHeaders"
    )

    @field_validator("additional_session_headers")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for h in value:
            if not h.strip():
                raise ValueError("header names must be non-empty")
        return value


class AgentIdentity:
    def __init__(self, name: str = TYPE, params: AgentIdentityParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        extra = (params or AgentIdentityParams()).additional_session_headers
        self.headers: tuple[str, ...] = tuple(h.lower() for h in extra) + DEFAULT_SESSION_HEADERS

    def process_request_headers(self, request: InferenceRequest) -> Mapping[str, str]:
        headers = request.headers
        for name in self.headers:
            value = headers.get(name)
            if value:
                return {AGENT_IDENTITY_ATTRIBUTE: value}
        return {}


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return AgentIdentity(name, parse_params(AgentIdentityParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[RequestHeaderProcessor] = AgentIdentity
