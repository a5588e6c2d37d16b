"""``single-profile-handler``: run the one configured profile once; its result is primary.

Upstream semantics: the config must define exactly one scheduling profile (checked when the
config loads), and a cycle whose profile found no endpoint fails with 429 ``failed to find target
endpoint: <why>``; the reason names the filter that emptied the candidate list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.errors import ConfigError, PoolExhaustedError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import (
    PROFILE_FAILURES,
    CycleState,
    ProfileHandler,
    ProfileResult,
    ProfileRunner,
    SchedulingResult,
)
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "single-profile-handler"


class SingleProfileParams(PluginParams):
    pass


class SingleProfileHandler:
    def __init__(self, name: str = TYPE) -> None:
        self.typed_name = TypedName(TYPE, name)

    def check_profiles(self, names: Sequence[str]) -> None:
        if len(names) != 1:
            raise ConfigError(
                f"{self.typed_name.type} {self.typed_name.name!r} needs exactly one scheduling "
                "profile, "
                f"got {len(names)}: {', '.join(names) or '(none)'}"
            )

    def pick(
        self,
        state: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, ProfileRunner],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        return () if results else tuple(profiles)

    def process_results(
        self,
        state: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        ((name, result),) = results.items()
        if result is None or not result.targets:
            reason = state.get(PROFILE_FAILURES, {}).get(name, "picker returned no endpoint")
            raise PoolExhaustedError(f"failed to find target endpoint: {reason}")
        return SchedulingResult({name: result}, name)


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> SingleProfileHandler:
    parse_params(SingleProfileParams, name, TYPE, parameters)
    return SingleProfileHandler(name)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[ProfileHandler] = SingleProfileHandler
