"""``prefill-load-scorer`` (Distribution): prefer endpoints with less prompt work still ahead.

Input: ``EndpointLoad.prefill_tokens``, the EPP's own ledger of the uncached prompt tokens of
requests it sent to ``e`` whose first response chunk it has not seen yet (estimated prompt
tokens less what the prefix-cache producer found cached on ``e`` this cycle; all of them
without one). The director charges it at send and releases it at the first chunk
(``Director.handle_first_token``), or at completion when no chunk was observed (``tap``
response mode, no response-body processing). A server that just received a long prompt is
therefore seen as busy exactly while it prefills it, and no longer once it streams: the
freshest signal of what delays the next first token. This is the charge upstream's
``inflight-load-producer`` keeps (prompt tokens released at the first streamed chunk);
kvroute's ``token-load-scorer`` keeps prompt tokens until completion.

Formula, with ``b(e)`` the prefill tokens and ``hi`` / ``lo`` the largest / smallest among the
candidates::

    mode: max        score(e) = 1 if hi == 0 else (hi - b(e)) / hi
    mode: minmax     score(e) = 1 if hi == lo else (hi - b(e)) / (hi - lo)
    mode: threshold  score(e) = 1 - min(1, b(e) / thresholdTokens)

``max`` (the default) scales by the busiest candidate, so a difference of a few tokens between
two nearly idle servers stays small; ``minmax`` stretches any difference to the full range.

``prefixHitThreshold`` (0 = off): when some candidate already caches at least that fraction of
the prompt (``PREFIX_CACHE_MATCH``, written by the prefix-cache producer in PrepareData), the
scorer returns no scores and leaves the choice to the affinity scorers. A request continuing a
cached conversation then goes where its cache is, as llm-d's affinity filter keeps it, while
requests with no such prefix are spread by prefill load.

``prefixHitMargin`` (0 = off; used only with ``prefixHitThreshold``): when the gate closes, the
candidates whose cached share is within ``prefixHitMargin`` of the best candidate's (e.g. every
server holding a shared system prompt, for a conversation's first turn) are still scored among
themselves by the formula above; the others get no score (0). When fewer than two candidates
are that close (a conversation's later turns, whose history one server holds) it returns no
scores, as without the margin. So prefill load still chooses between equal caches, and never
pulls a request away from the one server that holds most of it. ``prefixHitMarginScope``
says who is scored when two or more are that close: ``near`` (the default) only they, ``all``
every candidate (the gate opens, as if no candidate held the prefix).

Parameters (kvroute; no upstream plugin of this name): ``mode`` (``max``), ``thresholdTokens``
(8192, used by ``threshold`` only; about one scheduler step's token budget),
``prefixHitThreshold`` (0, in [0, 1]), ``prefixHitMargin`` (0, in [0, 1]; needs
``prefixHitThreshold``), ``prefixHitMarginScope`` (``near``). Memory: none of its own (the
counter lives on the endpoint's load ledger).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn

TYPE = "prefill-load-scorer"
CHARS_PER_TOKEN = 4  # the director's and the prefix index's estimate for untokenised text


class PrefillLoadParams(PluginParams):
    mode: Literal["max", "minmax", "threshold"] = "max"
    threshold_tokens: int = Field(default=8192, ge=1, alias="thresholdTokens")
    prefix_hit_threshold: float = Field(default=0.0, ge=0.0, le=1.0, alias="prefixHitThreshold")
    prefix_hit_margin: float = Field(default=0.0, ge=0.0, le=1.0, alias="prefixHitMargin")
    prefix_hit_margin_scope: Literal["near", "all"] = Field(
        default="near", alias="prefixHitMarginScope"
    )

    @model_validator(mode="after")
    def _margin_needs_threshold(self) -> PrefillLoadParams:
        if self.prefix_hit_margin > 0.0 and self.prefix_hit_threshold <= 0.0:
            raise ValueError("prefixHitMargin needs prefixHitThreshold > 0 (it refines that gate)")
        return self


class PrefillLoadScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE, params: PrefillLoadParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or PrefillLoadParams()

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        hit = self.params.prefix_hit_threshold
        if hit > 0.0:
            info = state.get(PREFIX_CACHE_MATCH, None)
            if info is not None and info.cached_tokens:
                prompt = len(request.prompt_text) / CHARS_PER_TOKEN
                best = max(info.cached_tokens.values())
                if prompt > 0 and best >= hit * prompt:
                    margin = self.params.prefix_hit_margin
                    if margin <= 0.0:
                        return {}
                    floor = best - margin * prompt
                    cached = info.cached_tokens
                    if self.params.prefix_hit_margin_scope == "near" or floor <= 0:
                        near = [e for e in endpoints if cached.get(e.name, 0) >= floor]
                        if len(near) < 2:
                            return {}
                        if self.params.prefix_hit_margin_scope == "near":
                            endpoints = near
                    elif _fewer_than_two_near(endpoints, cached, floor):
                        return {}
        return self._formula(endpoints)

    def _formula(self, endpoints: Sequence[Endpoint]) -> Mapping[str, float]:
        loads = [e.load.prefill_tokens for e in endpoints]
        mode = self.params.mode
        if mode == "threshold":
            limit = float(self.params.threshold_tokens)
            return ScoreColumn(endpoints, [1.0 - min(1.0, b / limit) for b in loads])
        hi = max(loads)
        lo = min(loads) if mode == "minmax" else 0
        if hi <= lo:
            return ScoreColumn.uniform(endpoints, 1.0)
        span = float(hi - lo)
        return ScoreColumn(endpoints, [(hi - b) / span for b in loads])


def _fewer_than_two_near(
    endpoints: Sequence[Endpoint], cached: Mapping[str, int], floor: float
) -> bool:
    """``len([e for e in endpoints if cached.get(e.name, 0) >= floor]) < 2`` for ``floor > 0``
    (only a server in ``cached`` can reach it), counting by C-level ``list.count`` over the
    candidates' names for the few servers at or above the floor."""
    names: list[str] | None = None
    count = 0
    for name, tokens in cached.items():
        if tokens >= floor:
            if names is None:
                names = [e.name for e in endpoints]
            count += names.count(name)
            if count >= 2:
                return False
    return True


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> PrefillLoadScorer:
    return PrefillLoadScorer(name, parse_params(PrefillLoadParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = PrefillLoadScorer
