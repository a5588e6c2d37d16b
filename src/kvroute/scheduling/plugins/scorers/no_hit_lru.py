"""``no-hit-lru-scorer`` (Distribution): spread requests whose prefix is cached nowhere.

Formula (llm-d-router). A request is *cold* when the ``prefix-cache-scorer`` named by
``prefixPluginName`` matched no block on any candidate. For a cold request, with the LRU list of
endpoints that received cold requests (most recent first, at most ``lruSize``)::

    never used for a cold request      1.0
    used, rank i of n in the LRU       (n - 1 - i) / n ... i.e. the least recently used scores
                                       highest, the most recently used 0
    warm request                       0.5 for every endpoint (no preference)

Only cold dispatches update the LRU (PreRequest), so new prefixes fan out across the pool and
later requests sharing them follow their cache. Parameters (upstream): ``lruSize`` 1024,
``prefixPluginType`` (accepted; must be ``prefix-cache-scorer``), ``prefixPluginName``
(``prefix-cache-scorer``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.hooks import PreRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, SchedulingResult, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.approximate import TYPE as PREFIX_TYPE
from kvroute.scheduling.plugins.prefix.consumer import (
    DEFAULT_PREFIX_PLUGIN,
    PrefixMatcher,
    find_prefix_plugin,
)
from kvroute.scheduling.request import InferenceRequest

TYPE = "no-hit-lru-scorer"


class NoHitLruParams(PluginParams):
    lru_size: int = Field(default=1024, ge=1, alias="lruSize")
    prefix_plugin_type: str = Field(default=PREFIX_TYPE, alias="prefixPluginType")
    prefix_plugin_name: str = Field(default=DEFAULT_PREFIX_PLUGIN, alias="prefixPluginName")


class NoHitLruScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str, params: NoHitLruParams, prefix: PrefixMatcher) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params
        self.prefix = prefix
        self._lru: OrderedDict[str, None] = OrderedDict()  # least recent first

    def _cold(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> bool:
        match = self.prefix.match(state, request, endpoints)
        return not any(match.matched.get(e.name, 0) > 0 for e in endpoints)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not self._cold(state, request, endpoints):
            return dict.fromkeys([e.name for e in endpoints], 0.5)
        lru = self._lru
        rank = {n: i for i, n in enumerate(lru)}  # 0 = least recently used
        n = len(rank)
        out: dict[str, float] = {}
        for e in endpoints:
            i = rank.get(e.name)
            out[e.name] = 1.0 if i is None else (n - i - 1) / n if n > 1 else 0.0
        return out

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        primary = result.primary
        if primary is None or not primary.targets:
            return
        target = primary.targets[0]
        match = self.prefix.match(state, request, primary.targets)
        if any(v > 0 for v in match.matched.values()):
            return
        lru = self._lru
        lru.pop(target.name, None)
        lru[target.name] = None
        while len(lru) > self.params.lru_size:
            lru.popitem(last=False)


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> NoHitLruScorer:
    params = parse_params(NoHitLruParams, name, TYPE, parameters)
    if params.prefix_plugin_type != PREFIX_TYPE:
        raise PluginValidationError(
            f"plugin {name!r} ({TYPE}): parameters.prefixPluginType: only {PREFIX_TYPE!r} "
            f"produces prefix-match data here, got {params.prefix_plugin_type!r}"
        )
    prefix = find_prefix_plugin(handle, params.prefix_plugin_name, name, TYPE)
    return NoHitLruScorer(name, params, prefix)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = NoHitLruScorer
_p: type[PreRequest] = NoHitLruScorer
