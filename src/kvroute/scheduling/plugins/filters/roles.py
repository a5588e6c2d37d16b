"""``prefill-filter``, ``decode-filter``, ``encode-filter``: keep endpoints by their P/D role.

The role is the pod label ``llm-d.ai/role`` with upstream's values: ``encode``, ``prefill``,
``decode``, ``encode-prefill``, ``prefill-decode``, ``encode-prefill-decode`` and ``both``
(prefill and decode). A value outside that set is treated as ``both`` and logged once per value
(a misspelt label must not take a server out of service). The decode filter also keeps
unlabelled endpoints, so an aggregated pool scheduled with a P/D config still routes; the prefill
and encode filters keep only endpoints that declare the stage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import EMPTY_REASON, CycleState, Filter
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

log = logging.getLogger(__name__)

ROLE_LABEL = "llm-d.ai/role"


class Stage(StrEnum):
    ENCODE = "encode"
    PREFILL = "prefill"
    DECODE = "decode"


# Upstream's role values and the stages each serves.
ROLE_STAGES: Mapping[str, frozenset[Stage]] = {
    "encode": frozenset({Stage.ENCODE}),
    "prefill": frozenset({Stage.PREFILL}),
    "decode": frozenset({Stage.DECODE}),
    "encode-prefill": frozenset({Stage.ENCODE, Stage.PREFILL}),
    "prefill-decode": frozenset({Stage.PREFILL, Stage.DECODE}),
    "encode-prefill-decode": frozenset(Stage),
    "both": frozenset({Stage.PREFILL, Stage.DECODE}),
}
BOTH = ROLE_STAGES["both"]

_warned: set[str] = set()


def stages_of(endpoint: Endpoint) -> frozenset[Stage] | None:
    """The stages ``endpoint`` serves; None when it carries no role label."""
    value = endpoint.labels.get(ROLE_LABEL)
    if value is None:
        return None
    stages = ROLE_STAGES.get(value)
    if stages is None:
        if value not in _warned:
            _warned.add(value)
            log.warning(
                "endpoint %s: unknown %s value %r, treated as 'both' (valid: %s)",
                endpoint.name,
                ROLE_LABEL,
                value,
                ", ".join(ROLE_STAGES),
            )
        return BOTH
    return stages


class RoleFilterParams(PluginParams):
    pass


class RoleFilter:
    """Keeps endpoints whose role serves ``stage`` (and, for decode, unlabelled ones)."""

    def __init__(self, type_name: str, name: str, stage: Stage, keep_unlabelled: bool) -> None:
        self.typed_name = TypedName(type_name, name)
        self.stage = stage
        self.keep_unlabelled = keep_unlabelled

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        out = []
        for e in endpoints:
            stages = stages_of(e)
            if self.keep_unlabelled if stages is None else self.stage in stages:
                out.append(e)
        if not out:
            state.write(EMPTY_REASON, f"no endpoint with {ROLE_LABEL} serving {self.stage}")
        return out


def _factory_for(type_name: str, stage: Stage, keep_unlabelled: bool) -> PluginFactory:
    def factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> RoleFilter:
        parse_params(RoleFilterParams, name, type_name, parameters)
        return RoleFilter(type_name, name, stage, keep_unlabelled)

    return factory


PLUGINS: Mapping[str, PluginFactory] = {
    "prefill-filter": _factory_for("prefill-filter", Stage.PREFILL, False),
    "decode-filter": _factory_for("decode-filter", Stage.DECODE, True),
    "encode-filter": _factory_for("encode-filter", Stage.ENCODE, False),
}

_: type[Filter] = RoleFilter
