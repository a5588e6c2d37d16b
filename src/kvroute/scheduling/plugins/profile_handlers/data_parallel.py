"""``data-parallel-profile-handler`` (upstream, deprecated there): one profile, DP-rank hand-off.

For a pod serving several data-parallel ranks behind one sidecar port: the single profile picks
a rank endpoint (``<pod>-rank-<i>`` on its own port, so its queue and KV signals are that
rank's); the request is sent to the pod's ``primaryPort`` (8000) and the PreRequest writes
``x-data-parallel-host-port: <ip:rank-port>``, which the sidecar (``--data-parallel-size N``)
turns into the local model-server port of that rank. Upstream prefers
``single-profile-handler`` with the rank's own port as the destination (Istio >= 1.28.1); this
handler is for deployments that still route every rank through the primary port.

Only the picked target is kept (a fallback on another rank of the same pod would reach the same
primary port). In-flight counts stay on the rank endpoint (its name is unchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.hooks import UPSTREAM_HEADERS
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import (
    CycleState,
    ProfileHandler,
    ProfileResult,
    SchedulingResult,
    StateKey,
)
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.profile_handlers.single_profile import SingleProfileHandler
from kvroute.scheduling.request import InferenceRequest

TYPE = "data-parallel-profile-handler"
DP_HEADER = "x-data-parallel-host-port"
_RANK: StateKey[Endpoint] = StateKey("data-parallel-rank")


class DataParallelParams(PluginParams):
    primary_port: int = Field(8000, ge=1, le=65535, alias="primaryPort")


class DataParallelProfileHandler(SingleProfileHandler):
    """The single profile, with the pick's rank sent to ``primaryPort`` (its header names the
    rank): profile checks, picking and failure reasons are the single-profile handler's."""

    def __init__(self, name: str = TYPE, params: DataParallelParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or DataParallelParams()

    def process_results(
        self,
        state: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        chosen = super().process_results(state, request, results)
        name = chosen.primary_profile
        result = chosen.profile_results[name]
        assert result is not None  # the single-profile handler raised otherwise
        rank = result.targets[0]
        state.write(_RANK, rank)
        primary = dataclasses.replace(rank, port=self.params.primary_port)
        return SchedulingResult({name: ProfileResult((primary,))}, name)

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        rank = state.get(_RANK, None)
        if rank is None:
            return
        headers = state.get(UPSTREAM_HEADERS, None)
        if headers is None:
            headers = {}
            state.write(UPSTREAM_HEADERS, headers)
        headers[DP_HEADER] = rank.hostport


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    return DataParallelProfileHandler(
        name, parse_params(DataParallelParams, name, TYPE, parameters)
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[ProfileHandler] = DataParallelProfileHandler
