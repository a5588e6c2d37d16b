"""P/D deciders: whether a request's prefill runs on a separate prefill endpoint.

* ``prefix-based-pd-decider`` (upstream): with ``in`` the prompt's estimated tokens (characters
  ÷ 4, as upstream), false when ``nonCachedTokens`` is 0, when ``in < promptTokens`` (if > 0) or
  ``in < nonCachedTokens``; otherwise true iff ``in - cachedBlocks·blockSize ≥ nonCachedTokens``
  where ``cachedBlocks`` is what the decode pick already holds (the prefix producer's
  :class:`~kvroute.framework.scheduling.PrefixCacheMatchInfo`; none published means false).
* ``nonCachedTokens: auto`` (kvroute): the threshold is learnt; see :class:`AutoThreshold`.
* ``always-disagg-pd-decider``: always true. ``always-disagg-multimodal-decider``: true when a
  chat message carries an ``image_url``, ``video_url`` or ``input_audio`` part.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.request import Usage
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, SchedulingResult
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.params import PluginParams, parse_params
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

    @model_validator(mode="after")
    def _check(self) -> PrefixDeciderParams:
        if isinstance(self.non_cached_tokens, int) and self.non_cached_tokens < 0:
            raise ValueError("nonCachedTokens must be >= 0 or 'auto'")
        if self.non_cached_tokens != "auto":
            for key, value in (
                ("autoInitialTokens", self.auto_initial_tokens),
                ("autoExploration", self.auto_exploration),
                ("autoMinSamples", self.auto_min_samples),
            ):
                if value is not None:
                    raise ValueError(f"{key} needs nonCachedTokens: auto")
        return self


@dataclass(slots=True)
class _Ewma:
    value: float = 0.0
    n: int = 0

    def add(self, x: float, alpha: float) -> None:
        self.value = x if self.n == 0 else self.value + alpha * (x - self.value)
        self.n += 1


class AutoThreshold:
    """Learns the uncached-token threshold from the latencies requests actually see.

    Rule: uncached prompt lengths fall in power-of-two buckets ``[2^b, 2^(b+1))``. For each
    bucket and mode (aggregated, disaggregated) an EWMA (alpha = 0.1) tracks the request's cost,
    end-to-end seconds per output token (``(t_complete - t_scheduled) / max(1, completion)``),
    which carries both the extra hop a split adds and the decode stalls it removes. A fraction
    ``exploration`` of requests takes the mode the threshold would not choose, so both modes keep
    being measured. After each completion the threshold becomes the lower edge of the lowest
    bucket from which every bucket with ``min_samples`` in both modes is cheaper disaggregated;
    if the highest such bucket is cheaper aggregated, the threshold moves above it. Until some
    bucket has enough samples the threshold stays at ``initial``.
    """

    ALPHA = 0.1

    def __init__(
        self, initial: int, exploration: float, min_samples: int, rng: random.Random
    ) -> None:
        self.threshold = initial
        self.exploration = exploration
        self.min_samples = min_samples
        self.rng = rng
        self.cost: dict[tuple[int, bool], _Ewma] = {}

    @staticmethod
    def bucket(tokens: int) -> int:
        return max(0, int(math.log2(max(1, tokens))))

    def choose(self, tokens: int) -> bool:
        wanted = tokens >= self.threshold
        if self.exploration > 0 and self.rng.random() < self.exploration:
            return not wanted
        return wanted

    def observe(self, tokens: int, disaggregated: bool, cost: float) -> None:
        key = (self.bucket(tokens), disaggregated)
        self.cost.setdefault(key, _Ewma()).add(cost, self.ALPHA)
        self._update()

    def _update(self) -> None:
        m = self.min_samples
        verdicts: dict[int, bool] = {}
        for (b, _), _e in self.cost.items():
            agg, dis = self.cost.get((b, False)), self.cost.get((b, True))
            if agg is not None and dis is not None and agg.n >= m and dis.n >= m:
                verdicts[b] = dis.value < agg.value
        if not verdicts:
            return
        threshold = None
        for b in sorted(verdicts, reverse=True):
            if not verdicts[b]:
                break
            threshold = 2**b
        self.threshold = threshold if threshold is not None else 2 ** (max(verdicts) + 1)


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
            )
        self._pending: OrderedDict[str, tuple[int, float, bool]] = OrderedDict()

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
        self._pending[request.request_id] = (tokens, started, False)
        while len(self._pending) > _MAX_PENDING:  # requests that never reached PreRequest
            self._pending.popitem(last=False)
        return self.auto.choose(tokens)

    # -- learning hooks (only with nonCachedTokens: auto) --------------------------------------

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.auto is None:
            return
        found = self._pending.pop(request.request_id, None)
        if found is None:
            return
        primary = result.primary
        target = primary.targets[0].hostport if primary is not None and primary.targets else ""
        split = any(
            r is not None and r.targets and r.targets[0].hostport != target
            for name, r in result.profile_results.items()
            if name != result.primary_profile
        )
        self._pending[request.request_id] = (found[0], found[1], split)

    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None:
        if self.auto is None or self._clock is None:
            return
        found = self._pending.pop(request.request_id, None)
        if found is None:
            return
        tokens, started, split = found
        out = usage.completion_tokens if usage is not None else 0
        self.auto.observe(tokens, split, (self._clock() - started) / max(1, out))


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
