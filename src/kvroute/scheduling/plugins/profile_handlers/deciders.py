"""P/D deciders: whether a request's prefill runs on a separate prefill endpoint.

* ``prefix-based-pd-decider`` (upstream): with ``in`` the prompt's estimated tokens (characters
  ÷ 4, as upstream), false when ``nonCachedTokens`` is 0, when ``in < promptTokens`` (if > 0) or
  ``in < nonCachedTokens``; otherwise true iff ``in - cachedBlocks·blockSize ≥ nonCachedTokens``
  where ``cachedBlocks`` is what the decode pick already holds (the prefix producer's
  :class:`~kvroute.framework.scheduling.PrefixCacheMatchInfo`; none published means false).
* ``nonCachedTokens: auto`` (kvroute): the split is learnt per length bucket; see
  :mod:`~kvroute.scheduling.plugins.profile_handlers.auto_threshold`.
* ``always-disagg-pd-decider``: always true. ``always-disagg-multimodal-decider``: true when a
  chat message carries an ``image_url``, ``video_url`` or ``input_audio`` part.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.request import Usage
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, SchedulingResult, StateKey
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.filters.roles import Stage, stages_of
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.profile_handlers.auto_threshold import AutoThreshold
from kvroute.scheduling.request import InferenceRequest

PREFIX_TYPE = "prefix-based-pd-decider"
ALWAYS_TYPE = "always-disagg-pd-decider"
MULTIMODAL_TYPE = "always-disagg-multimodal-decider"
CHARS_PER_TOKEN = 4
_MAX_PENDING = 65536


def prompt_tokens(request: InferenceRequest) -> int:
    return len(request.prompt_text) // CHARS_PER_TOKEN


def uncached_tokens(state: CycleState, request: InferenceRequest, decode: Endpoint) -> int | None:
    """Prompt tokens the decode pick does not cache; None when no prefix producer ran."""
    info = state.get(PREFIX_CACHE_MATCH, None)
    if info is None:
        return None
    cached = info.cached_tokens.get(decode.name, 0)
    return max(0, prompt_tokens(request) - cached)


class PrefixDeciderParams(PluginParams):
    non_cached_tokens: int | Literal["auto"] = Field(0, alias="nonCachedTokens")
    prompt_tokens: int = Field(0, ge=0, alias="promptTokens")
    # kvroute: the learner's knobs, only with ``nonCachedTokens: auto``.
    auto_initial_tokens: int | None = Field(None, ge=1, alias="autoInitialTokens")
    auto_exploration: float | None = Field(None, ge=0.0, le=0.5, alias="autoExploration")
    auto_min_samples: int | None = Field(None, ge=1, alias="autoMinSamples")
    auto_charge_stalls: bool | None = Field(None, alias="autoChargeStalls")

    @model_validator(mode="after")
    def _check(self) -> PrefixDeciderParams:
        if isinstance(self.non_cached_tokens, int) and self.non_cached_tokens < 0:
            raise ValueError("nonCachedTokens must be >= 0 or 'auto'")
        if self.non_cached_tokens != "auto":
            for key, value in (
                ("autoInitialTokens", self.auto_initial_tokens),
                ("autoExploration", self.auto_exploration),
                ("autoMinSamples", self.auto_min_samples),
                ("autoChargeStalls", self.auto_charge_stalls),
            ):
                if value is not None:
                    raise ValueError(f"{key} needs nonCachedTokens: auto")
        return self


class PrefixBasedPdDecider:
    def __init__(
        self,
        name: str = PREFIX_TYPE,
        params: PrefixDeciderParams | None = None,
        *,
        clock: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = TypedName(PREFIX_TYPE, name)
        self.params = p = params or PrefixDeciderParams()
        self._clock = clock
        self.auto: AutoThreshold | None = None
        if p.non_cached_tokens == "auto":
            self.auto = AutoThreshold(
                p.auto_initial_tokens or 2048,
                0.05 if p.auto_exploration is None else p.auto_exploration,
                p.auto_min_samples or 20,
                rng or random.Random(),
                charge_stalls=p.auto_charge_stalls is not False,  # default on
            )
        # request id -> (uncached tokens, start, split, load if split, load if whole, requests
        # running or waiting where its prefill runs)
        self._pending: OrderedDict[str, tuple[int, float, bool, float, float, float]] = (
            OrderedDict()
        )

    @property
    def threshold(self) -> int:
        return self.auto.threshold if self.auto is not None else int(self.params.non_cached_tokens)

    def disaggregate(
        self, state: CycleState, request: InferenceRequest, decode: Endpoint | None
    ) -> bool:
        if decode is None:
            return False
        n_in = prompt_tokens(request)
        p = self.params
        if p.prompt_tokens > 0 and n_in < p.prompt_tokens:
            return False
        uncached = uncached_tokens(state, request, decode)
        if self.auto is None:
            t = int(p.non_cached_tokens)
            if t == 0 or n_in < t or uncached is None:
                return False
            return uncached >= t
        tokens = n_in if uncached is None else uncached
        started = self._clock() if self._clock is not None else state.now
        whole_load = float(decode.metrics.waiting_queue_size)
        candidates: tuple[Endpoint, ...] = state.get(_CANDIDATES, ())
        split_load = _prefill_queue(candidates, decode)
        self._pending[request.request_id] = (tokens, started, False, split_load, whole_load, 0.0)
        while len(self._pending) > _MAX_PENDING:  # requests that never reached PreRequest
            self._pending.popitem(last=False)
        return self.auto.choose(tokens, split_load, whole_load)

    # -- learning hooks (only with nonCachedTokens: auto) --------------------------------------

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        if self.auto is not None:
            state.write(_CANDIDATES, tuple(endpoints))

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.auto is None:
            return
        found = self._pending.pop(request.request_id, None)
        if found is None:
            return
        primary = result.primary
        decode = primary.targets[0] if primary is not None and primary.targets else None
        target = decode.hostport if decode is not None else ""
        prefill = next(
            (
                r.targets[0]
                for name, r in result.profile_results.items()
                if name != result.primary_profile
                and r is not None
                and r.targets
                and r.targets[0].hostport != target
            ),
            None,
        )
        where = prefill if prefill is not None else decode
        others = 0.0  # the streams there and the queue behind it all wait for its prefill
        if where is not None:
            others = float(where.metrics.running_queue_size + where.metrics.waiting_queue_size)
        self._pending[request.request_id] = (*found[:2], prefill is not None, *found[3:5], others)

    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None:
        if self.auto is None or self._clock is None:
            return
        found = self._pending.pop(request.request_id, None)
        if found is None:
            return
        tokens, started, split, split_load, whole_load, others = found
        out = usage.completion_tokens if usage is not None else 0
        first = usage.first_token_at if usage is not None else None
        stall = self.auto.stall_seconds(tokens, others, None if first is None else first - started)
        cost = (self._clock() - started + stall) / max(1, out)
        self.auto.observe(tokens, split, cost, split_load, whole_load)


# The candidates of this cycle (PrepareData), for the loads ``auto`` compares.
_CANDIDATES: StateKey[tuple[Endpoint, ...]] = StateKey("pd-decider-candidates")


def _prefill_queue(endpoints: Sequence[Endpoint], decode: Endpoint) -> float:
    """The shortest waiting queue among the endpoints other than ``decode`` that serve
    prefill (0 when there is none: then nothing can split anyway)."""
    queues = [
        e.metrics.waiting_queue_size
        for e in endpoints
        if e.name != decode.name and Stage.PREFILL in (stages_of(e) or ())
    ]
    return float(min(queues, default=0))


class AlwaysDisaggPdDecider:
    def __init__(self, name: str = ALWAYS_TYPE) -> None:
        self.typed_name = TypedName(ALWAYS_TYPE, name)

    def disaggregate(
        self, state: CycleState, request: InferenceRequest, decode: Endpoint | None
    ) -> bool:
        return True


_MEDIA_PARTS = frozenset({"image_url", "video_url", "input_audio"})


class AlwaysDisaggMultimodalDecider:
    def __init__(self, name: str = MULTIMODAL_TYPE) -> None:
        self.typed_name = TypedName(MULTIMODAL_TYPE, name)

    def disaggregate(
        self, state: CycleState, request: InferenceRequest, decode: Endpoint | None
    ) -> bool:
        messages = request.body.get("messages")
        if not isinstance(messages, list):
            return False
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") in _MEDIA_PARTS:
                        return True
        return False


class _NoParams(PluginParams):
    pass


def _prefix(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    params = parse_params(PrefixDeciderParams, name, PREFIX_TYPE, parameters)
    return PrefixBasedPdDecider(name, params, clock=handle.now, rng=handle_rng(handle))


def _always(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    parse_params(_NoParams, name, ALWAYS_TYPE, parameters)
    return AlwaysDisaggPdDecider(name)


def _multimodal(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    parse_params(_NoParams, name, MULTIMODAL_TYPE, parameters)
    return AlwaysDisaggMultimodalDecider(name)


PLUGINS: Mapping[str, PluginFactory] = {
    PREFIX_TYPE: _prefix,
    ALWAYS_TYPE: _always,
    MULTIMODAL_TYPE: _multimodal,
}
