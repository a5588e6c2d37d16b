"""``lora-affinity-scorer`` (Affinity): prefer endpoints that have the request's LoRA adapter.

Formula (upstream), for adapter ``m = request.target_model``::

    1.0  m is in active_models                                   (no load needed)
    0.8  len(active_models) + len(waiting_models) < max_active   (a free adapter slot)
    0.6  m is in waiting_models                                  (being loaded; will queue)
    0.0  otherwise                                               (would evict another adapter)

Metrics consumed: ``active_models``, ``waiting_models``, ``max_active_models`` (from vLLM's
``vllm:lora_requests_info``). A base-model request scores 0.8 on servers with free slots and 0
elsewhere, exactly as upstream; give the scorer a small weight if that matters.

Upstream's formula reads only the last scrape, and under load that herds (docs/benchmarks.md,
multi-LoRA): between two scrapes every request for a new adapter sees the same "free slot" on
the same replicas, so one replica receives more distinct adapters than it has slots; and every
request for a hot adapter scores 1.0 on the few replicas that hold it, so they queue while the
rest of the pool idles. The correction (``inflightAdapters``, default on; ``false`` is
upstream's formula) reads the EPP's own in-flight ledger, the datastore's per-endpoint count of
requests per target model (``EndpointLoad.inflight_models``: counted by the director when a
request is sent, uncounted when it finishes or the client disconnects). An adapter with
requests in flight on ``e`` counts as active there, and the distinct adapters in flight count
against ``max_active_models``, so the "free slot" score disappears as soon as the EPP itself has
filled the slots, not a scrape later.

Measured (docs/benchmarks.md, multi-LoRA): p90 TTFT at 250 QPS drops from seconds to tens of ms,
with no loss at 50-150 QPS. An anti-hotspot cap (the prefix scorer's load-bound rule: affinity 0
on servers far busier than the least loaded) was tried as well and made things worse -- moving a
hot adapter to a server whose slots are all taken makes it wait for a slot -- so it is not here.

Only adapters count: a target model counts once some scrape has listed it as a running or
waiting adapter on some endpoint. A base model never appears there, so base-model traffic
neither occupies a counted slot nor pulls later base requests onto the same server; a
brand-new adapter counts from the first scrape that shows it (a name found in no adapter list is
looked up again after ``RECHECK_S`` = 50 ms, the default scrape interval), and until then scores
by upstream's formula on the scrape alone. So does a base model: the EPP's in-flight adapters do
not count against the "free slot" test for a request that needs no slot (counting them steered
base traffic away from every server the EPP had just given LoRA work, `kvroute demo`). The cost
is one extra pass over the endpoints' adapter sets per model not known as an adapter every
50 ms. (With 1 s instead, the multi-LoRA benchmark lost most of the gain at 250-300 QPS: every
stage starts with no adapter resident, and one second of uncounted herding builds queues that
last.)
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn

TYPE = "lora-affinity-scorer"
RECHECK_S = 0.05  # how long a name found in no adapter list stays "not an adapter"
MAX_NOT_ADAPTERS = 4096


class LoraAffinityParams(PluginParams):
    inflight_adapters: bool = Field(default=True, alias="inflightAdapters")
    # kvroute: a model no scrape lists as an adapter (a base model) gets no score at all (the
    # same for every endpoint), so base-model traffic is left to the other scorers (the default
    # profile sets it)
    neutral_unknown_models: bool = Field(default=False, alias="neutralUnknownModels")


def lora_affinity(endpoint: Endpoint, adapter: str) -> float:
    """Upstream's score from the last scrape alone."""
    m = endpoint.metrics
    if adapter in m.active_models:
        return 1.0
    if len(m.active_models) + len(m.waiting_models) < m.max_active_models:
        return 0.8
    if adapter in m.waiting_models:
        return 0.6
    return 0.0


def lora_affinity_with_inflight(
    endpoint: Endpoint,
    adapter: str,
    inflight: Mapping[str, int] | None,
    adapters: Container[str] | None = None,
) -> float:
    """Upstream's score with the EPP's in-flight adapters on ``endpoint`` counted as active.

    ``inflight`` is requests per target model in flight on ``endpoint``; only the names in
    ``adapters`` (all of them when None) take an adapter slot.
    """
    m = endpoint.metrics
    if adapter in m.active_models or (inflight and adapter in inflight):
        return 1.0
    used = len(m.active_models) + len(m.waiting_models)
    if used < m.max_active_models:
        if inflight:  # only when a slot looks free can the in-flight adapters change the answer
            used += sum(
                1
                for a in inflight
                if a not in m.active_models
                and a not in m.waiting_models
                and (adapters is None or a in adapters)
            )
        if used < m.max_active_models:
            return 0.8
    if adapter in m.waiting_models:
        return 0.6
    return 0.0


class LoraAffinityScorer:
    category = ScorerCategory.AFFINITY

    def __init__(self, name: str = TYPE, params: LoraAffinityParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or LoraAffinityParams()
        # names some scrape has listed as an adapter (running or waiting) on some endpoint
        self._adapters: set[str] = set()
        # names last found in no adapter list -> when (cycle time); looked up again after
        # RECHECK_S, so base-model traffic does not pay the pass on every request
        self._not_adapters: dict[str, float] = {}

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        adapter = request.target_model
        if self.params.inflight_adapters:
            if adapter not in self._adapters:
                self._learn(adapter, endpoints, state.now)
            if adapter in self._adapters:
                known = self._adapters
                # an aligned column (every value is 1, 0.8, 0.6 or 0: ``unit``); the first test
                # of lora_affinity_with_inflight inlined, so a server with the adapter loaded
                # costs no call
                return ScoreColumn(
                    endpoints,
                    [
                        1.0
                        if adapter in e.metrics.active_models
                        else lora_affinity_with_inflight(e, adapter, e.load.inflight_models, known)
                        for e in endpoints
                    ],
                    unit=True,
                )
            # Not (yet) known as an adapter -- a base model, or an adapter no scrape has listed:
            # upstream's formula on the scrape alone. Counting the EPP's in-flight adapters
            # against free slots here would steer base-model traffic away from every server
            # the EPP just gave LoRA work and pile it onto the rest (seen in `kvroute demo`).
            if self.params.neutral_unknown_models:
                return {}  # no preference: every endpoint gets the same (zero) contribution
        return ScoreColumn(endpoints, [lora_affinity(e, adapter) for e in endpoints], unit=True)

    def _learn(self, model: str, endpoints: Sequence[Endpoint], now: float) -> None:
        checked = self._not_adapters.get(model)
        if checked is not None and now - checked < RECHECK_S:
            return
        if any(
            model in e.metrics.active_models or model in e.metrics.waiting_models for e in endpoints
        ):
            self._adapters.add(model)
            self._not_adapters.pop(model, None)
        elif checked is None and len(self._not_adapters) >= MAX_NOT_ADAPTERS:
            self._not_adapters.clear()  # bounded: client-chosen names must not grow it forever
            self._not_adapters[model] = now
        else:
            self._not_adapters[model] = now

    def inflight(self, endpoint: Endpoint) -> Mapping[str, int]:
        """The adapters this scorer counts on ``endpoint``: its in-flight requests per model
        (the datastore's ledger), narrowed to names known as adapters (a copy)."""
        if not self.params.inflight_adapters:
            return {}
        known = self._adapters
        return {m: n for m, n in endpoint.load.inflight_models.items() if m in known}


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> LoraAffinityScorer:
    return LoraAffinityScorer(name, parse_params(LoraAffinityParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = LoraAffinityScorer
