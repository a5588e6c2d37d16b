"""``predicted-latency-producer``: per-endpoint TTFT/TPOT predictions, learned from responses.

The producer is a PrepareData, PreRequest and ResponseComplete hook:

* ``prepare_data`` (``predictInProduce``, default true) predicts every candidate up front;

* ``predict`` (called by ``latency-scorer`` or ``prefix-cache-affinity-filter``) computes, once
  per cycle and cached in the CycleState, each candidate's predicted (TTFT, TPOT) from its
  send-time features with :class:`~kvroute.scheduling.plugins.latency.predictor.LatencyPredictor`;
* ``pre_request`` records the chosen endpoint's features, the send time and the prediction, and
  adds the request's uncached prompt to that endpoint's prefill backlog;
* ``headroom`` (the EPP's ``kvroute_pool_predicted_ttft_headroom_seconds``, an autoscaling
  signal): the mean over the last ``HEADROOM_WINDOW_S`` seconds of (TTFT SLO - predicted TTFT)
  of the requests sent with a TTFT SLO header, per accelerator class of the picked endpoint;
* ``response_complete`` turns what the EPP observed into targets: TTFT = first response chunk
  (``Usage.first_token_at``) - send time; TPOT = (completion - first chunk) / (output tokens -
  1) with the output tokens from the response's usage. Both update the endpoint's model and the
  pool-wide one. A response whose first chunk was not observed teaches nothing about TTFT.

Parameters (upstream names; the sidecar-specific ones are accepted and have no effect here):
``sloBufferFactor`` (1.0, multiplies the TPOT SLO in ``latency-scorer``), ``contextTTL`` ("5m":
a request not completed after that is forgotten), ``streamingMode`` (false), ``endpointRoleLabel``,
``predictInProduce`` (true: predict in PrepareData; false: on first use),
``useEncoderCacheFeatures`` (false, no effect). kvroute: ``prefixPluginName``
(``prefix-cache-scorer``; when no such plugin exists every prompt token counts as uncached),
``forgettingFactor`` (0.995), ``warmupSamples`` (8).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from kvroute.config.duration import GoDuration
from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.accelerator import endpoint_hardware
from kvroute.framework.hooks import PreRequest, ResponseComplete
from kvroute.framework.request import Usage
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, SchedulingResult, StateKey
from kvroute.scheduling.plugins.latency.predictor import DEFAULT_WARMUP, LatencyPredictor
from kvroute.scheduling.plugins.latency.slo import parse_slo
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.request import InferenceRequest

TYPE = "predicted-latency-producer"
CHARS_PER_TOKEN = 4
SWEEP_EVERY = 256
HEADROOM_WINDOW_S = 60.0  # the autoscaling signal's averaging window
HEADROOM_SAMPLES = 4096  # at most this many recent SLO requests are kept for it


class PredictedLatencyParams(PluginParams):
    slo_buffer_factor: float = Field(default=1.0, gt=0.0, alias="sloBufferFactor")
    context_ttl: GoDuration = Field(default=300.0, alias="contextTTL")
    streaming_mode: bool = Field(default=False, alias="streamingMode")
    endpoint_role_label: str = Field(default="", alias="endpointRoleLabel")
    predict_in_produce: bool = Field(default=True, alias="predictInProduce")
    use_encoder_cache_features: bool = Field(default=False, alias="useEncoderCacheFeatures")
    prefix_plugin_name: str = Field(default="prefix-cache-scorer", alias="prefixPluginName")
    forgetting_factor: float = Field(default=0.995, gt=0.5, le=1.0, alias="forgettingFactor")
    warmup_samples: int = Field(default=DEFAULT_WARMUP, ge=1, alias="warmupSamples")


@dataclass(frozen=True, slots=True)
class _Pending:
    endpoint: str
    sent_at: float
    x_ttft: tuple[float, ...]
    x_tpot: tuple[float, ...]
    predicted_ttft: float | None


class PredictedLatencyProducer:
    def __init__(
        self,
        name: str = TYPE,
        params: PredictedLatencyParams | None = None,
        handle: PluginHandle | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or PredictedLatencyParams()
        self.predictor = LatencyPredictor(lam=p.forgetting_factor, warmup=p.warmup_samples)
        self._handle = handle
        self._prefix: PrefixCacheScorer | bool | None = False  # False = not looked up yet
        self._key: StateKey[Mapping[str, tuple[float, float]]] = StateKey(
            f"latency-prediction/{name}"
        )
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._sends = 0
        # (send time, accelerator class, TTFT SLO - predicted TTFT) of recent SLO requests
        self._headroom: deque[tuple[float, str, float]] = deque(maxlen=HEADROOM_SAMPLES)

    def _prefix_plugin(self) -> PrefixCacheScorer | None:
        if self._prefix is False:
            found: PrefixCacheScorer | None = None
            if self._handle is not None:
                try:
                    plugin = self._handle.plugin(self.params.prefix_plugin_name)
                except PluginValidationError:
                    plugin = None
                if isinstance(plugin, PrefixCacheScorer):
                    found = plugin
            self._prefix = found
        return self._prefix if isinstance(self._prefix, PrefixCacheScorer) else None

    def _match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> tuple[float, Mapping[str, int], int]:
        """(prompt tokens, matched blocks per endpoint, total blocks) of this request."""
        prompt = len(request.prompt_text) / CHARS_PER_TOKEN
        prefix = self._prefix_plugin()
        if prefix is None:
            return prompt, {}, 0
        match = prefix.match(state, request, endpoints)
        return prompt, match.matched, match.total_blocks

    def uncached(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> dict[str, float]:
        """Uncached prompt tokens of this request on each candidate (prefix-match estimate)."""
        prompt, got, total = self._match(state, request, endpoints)
        if total == 0:
            return {e.name: prompt for e in endpoints}
        return {e.name: prompt * (1.0 - got.get(e.name, 0) / total) for e in endpoints}

    def predict(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, tuple[float, float]] | None:
        """(TTFT s, TPOT s) per candidate, computed once per cycle; None while cold."""
        cached = state.get(self._key, None)
        if cached is not None and all(e.name in cached for e in endpoints):
            return cached
        prompt, got, total = self._match(state, request, endpoints)
        out = self.predictor.predict_many(endpoints, prompt, got, total, state.now)
        if out is None:
            return None
        if cached:
            out = {**cached, **out}
        state.write(self._key, out)
        return out

    # -- hooks ---------------------------------------------------------------------------------

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        """PrepareData (upstream's ``predictInProduce``, default true): predict every candidate
        before the filters run, so each consumer reads the same cached predictions."""
        if self.params.predict_in_produce:
            self.predict(state, request, endpoints)

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        primary = result.primary
        if primary is None or not primary.targets:
            return
        target = primary.targets[0]
        now = state.now
        u = self.uncached(state, request, (target,))[target.name]
        pr = self.predictor
        x_ttft = pr.ttft_features(target, u, now)
        x_tpot = pr.tpot_features(target)
        preds = state.get(self._key, None)
        got = preds.get(target.name) if preds is not None else None
        if got is None:
            got = pr.predict(target.name, x_ttft, x_tpot)
        predicted = None if got is None else got[0]
        pr.sent(target.name, u, predicted, now)
        if predicted is not None:
            slo = parse_slo(request.headers).ttft_s
            if slo is not None:
                cls = endpoint_hardware(target.labels).name
                self._headroom.append((now, cls, slo - predicted))
        self._pending[(request.request_id, target.name)] = _Pending(
            target.name, now, x_ttft, x_tpot, predicted
        )
        self._sends += 1
        if self._sends % SWEEP_EVERY == 0:
            horizon = now - self.params.context_ttl
            for key in [k for k, v in self._pending.items() if v.sent_at < horizon]:
                del self._pending[key]

    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None:
        pending = self._pending.pop((request.request_id, endpoint.name), None)
        if pending is None or usage is None or usage.first_token_at is None:
            return
        now = self._handle.now() if self._handle is not None else usage.first_token_at
        ttft = usage.first_token_at - pending.sent_at
        tpot = None
        if usage.completion_tokens > 1:
            tpot = max(0.0, now - usage.first_token_at) / (usage.completion_tokens - 1)
        self.predictor.observe(
            pending.endpoint, pending.x_ttft, ttft, pending.x_tpot, tpot, pending.predicted_ttft
        )

    def pending(self) -> int:
        return len(self._pending)

    def headroom(self, now: float, window_s: float = HEADROOM_WINDOW_S) -> dict[str, float]:
        """Mean (TTFT SLO - predicted TTFT) in seconds per accelerator class over the requests
        sent with a TTFT SLO in the last ``window_s``; a class with none is absent."""
        recent = self._headroom
        while recent and recent[0][0] < now - window_s:
            recent.popleft()
        sums: dict[str, list[float]] = {}
        for _, cls, h in recent:
            acc = sums.setdefault(cls, [0.0, 0.0])
            acc[0] += h
            acc[1] += 1.0
        return {cls: total / n for cls, (total, n) in sums.items()}


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PredictedLatencyProducer:
    params = parse_params(PredictedLatencyParams, name, TYPE, parameters)
    return PredictedLatencyProducer(name, params, handle)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_p: type[PreRequest] = PredictedLatencyProducer
_r: type[ResponseComplete] = PredictedLatencyProducer
