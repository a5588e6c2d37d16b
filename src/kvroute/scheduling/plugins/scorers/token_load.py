"""``token-load-scorer`` (Distribution): prefer endpoints with fewer tokens in flight.

Formula (llm-d-router)::

    score(e) = 1 - min(1, inflight_tokens(e) / queueThresholdTokens)

Input: ``EndpointLoad.inflight_tokens``, the EPP's own ledger of the tokens it has sent to ``e``
and not yet seen finish (counted by the director at send, uncounted at completion), so the
signal is as fresh as the last response rather than the last scrape.

Parameters (upstream names and defaults): ``queueThresholdTokens`` 4194304. kvroute:
``normalize`` (default ``false`` = upstream's absolute formula). With ``true`` the score is a
min-max over the candidates (least loaded 1, most loaded 0), which still separates endpoints
when every load is far below the threshold, as it is on a pool of 8B-model servers (a few
hundred thousand tokens at most); kvroute's default profile uses that form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.scorers.queue import min_max_low_is_best
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn

TYPE = "token-load-scorer"


class TokenLoadParams(PluginParams):
    queue_threshold_tokens: int = Field(default=4_194_304, ge=1, alias="queueThresholdTokens")
    normalize: bool = False


class TokenLoadScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE, params: TokenLoadParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or TokenLoadParams()

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        if self.params.normalize:
            return min_max_low_is_best(endpoints, [e.load.inflight_tokens for e in endpoints])
        limit = float(self.params.queue_threshold_tokens)
        loads = [e.load.inflight_tokens for e in endpoints]
        lo = min(loads)
        if lo == max(loads):  # the same formula, evaluated once (an idle pool)
            return ScoreColumn.uniform(endpoints, 1.0 - min(1.0, lo / limit))
        return ScoreColumn(endpoints, [1.0 - min(1.0, b / limit) for b in loads])


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> TokenLoadScorer:
    return TokenLoadScorer(name, parse_params(TokenLoadParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = TokenLoadScorer
