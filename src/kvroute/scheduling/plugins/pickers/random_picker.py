"""``random-picker``: uniform random endpoints, ignoring scores (upstream semantics).

Returns ``maxNumOfEndpoints`` distinct endpoints in random order. It is the final step of the
legacy decision tree, which narrows the candidates with filters and then picks at random.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import CycleState, Picker, ProfileResult, ScoredEndpoint
from kvroute.scheduling.plugins.params import parse_params
from kvroute.scheduling.plugins.pickers.picker_params import PickerParams
from kvroute.scheduling.profile import as_arrays

TYPE = "random-picker"


class RandomPicker:
    def __init__(
        self, name: str = TYPE, max_num_of_endpoints: int = 1, rng: random.Random | None = None
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.max_num_of_endpoints = max_num_of_endpoints
        self.rng = rng or random.Random()

    def pick(self, state: CycleState, scored: Sequence[ScoredEndpoint]) -> ProfileResult:
        endpoints, _totals = as_arrays(scored)
        if not endpoints:
            return ProfileResult(())
        if self.max_num_of_endpoints == 1:
            return ProfileResult((self.rng.choice(endpoints),))
        k = min(self.max_num_of_endpoints, len(endpoints))
        return ProfileResult(tuple(self.rng.sample(list(endpoints), k)))


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> RandomPicker:
    params = parse_params(PickerParams, name, TYPE, parameters)
    return RandomPicker(name, params.max_num_of_endpoints, handle_rng(handle))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Picker] = RandomPicker
