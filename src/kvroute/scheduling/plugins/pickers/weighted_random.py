"""``weighted-random-picker``: sample endpoints with probability proportional to their score.

Upstream uses A-Res (Efraimidis-Spirakis weighted reservoir sampling): each endpoint draws
``key = U ** (1 / score)`` with ``U`` uniform in (0, 1) and the ``maxNumOfEndpoints`` largest keys
win, which samples without replacement in proportion to score. A score <= 0 can never beat a
positive one: kvroute gives it a negative random key, so zero-scored endpoints come last in random
order, and when every score is 0 the pick is uniformly random (upstream's fallback).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import CycleState, Picker, ProfileResult, ScoredEndpoint
from kvroute.scheduling.plugins.params import parse_params
from kvroute.scheduling.plugins.pickers.picker_params import PickerParams
from kvroute.scheduling.profile import as_arrays

TYPE = "weighted-random-picker"


class WeightedRandomPicker:
    def __init__(
        self, name: str = TYPE, max_num_of_endpoints: int = 1, rng: random.Random | None = None
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.max_num_of_endpoints = max_num_of_endpoints
        self.rng = rng or random.Random()

    def pick(self, state: CycleState, scored: Sequence[ScoredEndpoint]) -> ProfileResult:
        endpoints, totals = as_arrays(scored)
        if not endpoints:
            return ProfileResult(())
        rand = self.rng.random
        keys: list[float] = []
        for e in endpoints:
            s = totals[e.name]
            # 1 - random() is in (0, 1]: U must not be 0, where U ** (1/s) loses the ordering.
            keys.append((1.0 - rand()) ** (1.0 / s) if s > 0.0 else -rand() - 1e-12)
        k = min(self.max_num_of_endpoints, len(endpoints))
        best = heapq.nlargest(k, range(len(endpoints)), key=keys.__getitem__)
        return ProfileResult(tuple(endpoints[i] for i in best))


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> WeightedRandomPicker:
    params = parse_params(PickerParams, name, TYPE, parameters)
    return WeightedRandomPicker(name, params.max_num_of_endpoints, handle_rng(handle))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Picker] = WeightedRandomPicker
