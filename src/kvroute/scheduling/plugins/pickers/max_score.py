"""``max-score-picker``: the endpoints with the highest weighted total, ties broken at random.

Upstream shuffles the candidates and stable-sorts them by score, descending, then takes the top
``maxNumOfEndpoints``; that makes every ordering of equal scores equally likely. kvroute draws the
same distribution without shuffling everything: for one endpoint it picks uniformly among the
endpoints at the maximum; for k it sorts once and samples within each group of equal scores.

kvroute: ``tieTolerance`` (default 0 = upstream) widens the tie for a single pick to every endpoint
within that much of the best total, chosen uniformly.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import CycleState, Picker, ProfileResult, ScoredEndpoint
from kvroute.scheduling.plugins.params import parse_params
from kvroute.scheduling.plugins.pickers.picker_params import PickerParams
from kvroute.scheduling.profile import ScoredView, as_arrays

TYPE = "max-score-picker"


class MaxScorePicker:
    def __init__(
        self,
        name: str = TYPE,
        max_num_of_endpoints: int = 1,
        rng: random.Random | None = None,
        tie_tolerance: float = 0.0,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.max_num_of_endpoints = max_num_of_endpoints
        self.rng = rng or random.Random()
        self.tie_tolerance = tie_tolerance

    def pick(self, state: CycleState, scored: Sequence[ScoredEndpoint]) -> ProfileResult:
        k = self.max_num_of_endpoints
        if k == 1 and type(scored) is ScoredView and scored.column is not None:
            # The profile's totals as a list aligned with the endpoints (unique names): the same
            # values in the same order as the dict below, so the same max, ties and draw.
            col = scored.column
            if not col:
                return ProfileResult(())
            best = max(col) - self.tie_tolerance
            ties = [e for e, t in zip(scored.endpoints, col, strict=True) if t >= best]
            return ProfileResult((ties[0] if len(ties) == 1 else self.rng.choice(ties),))
        endpoints, totals = as_arrays(scored)
        n = len(endpoints)
        if n == 0:
            return ProfileResult(())
        if k == 1:
            best = max(totals.values()) - self.tie_tolerance
            ties = [e for e in endpoints if totals[e.name] >= best]
            return ProfileResult((ties[0] if len(ties) == 1 else self.rng.choice(ties),))
        return ProfileResult(tuple(top_k_random_ties(endpoints, totals, k, self.rng)))


def top_k_random_ties(
    endpoints: Sequence[Endpoint], totals: Mapping[str, float], k: int, rng: random.Random
) -> list[Endpoint]:
    """The k best by score, every ordering of equal scores equally likely."""
    ranked = sorted(endpoints, key=lambda e: totals[e.name], reverse=True)
    out: list[Endpoint] = []
    i, n = 0, len(ranked)
    while len(out) < k and i < n:
        s = totals[ranked[i].name]
        j = i + 1
        while j < n and totals[ranked[j].name] == s:
            j += 1
        need = k - len(out)
        group = ranked[i:j]
        out.extend(rng.sample(group, min(need, len(group))) if len(group) > 1 else group)
        i = j
    return out


class MaxScorePickerParams(PickerParams):
    # kvroute: totals within this much of the best count as ties (a uniform pick among them), so
    # a burst decided on one scrape spreads over near-equal endpoints; 0 = upstream (exact ties)
    tie_tolerance: float = Field(default=0.0, ge=0.0, alias="tieTolerance")


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> MaxScorePicker:
    params = parse_params(MaxScorePickerParams, name, TYPE, parameters)
    return MaxScorePicker(
        name, params.max_num_of_endpoints, handle_rng(handle), params.tie_tolerance
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Picker] = MaxScorePicker
