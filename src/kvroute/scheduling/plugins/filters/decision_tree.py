"""``decision-tree-filter``: the original (v0.2/v0.3) kvroute/GIE scheduling algorithm as a filter.

Pair it with ``random-picker`` (the built-in ``decision-tree`` profile does): the tree narrows
the candidates and the final pick is uniform among the survivors, as the legacy scheduler did.

The tree (thresholds are parameters; defaults from the legacy code)::

    Critical (or Standard) request?
    ├─ yes: queue < queueingThresholdLoRA (128)?
    │   ├─ some: LoRA soft affinity -> least queuing -> least KV cache
    │   └─ none: least queuing -> least queuing -> low-cost LoRA -> least KV cache
    └─ no (Sheddable): queue <= queueThresholdCritical (5) and kv <= kvCacheThreshold (0.8)?
        ├─ some: least queuing -> low-cost LoRA -> least KV cache
        └─ none: drop (no endpoints; the request fails with 429 to keep room for critical traffic)

Each step follows the legacy node semantics: on a non-empty result the next step gets the
result; on an empty result the next step (``on failure`` or ``either``) gets the step's *input*.

* least queuing keeps ``min_q <= q <= min_q + (max_q - min_q) // n`` (integer division, as the Go
  code divided ints); least KV cache does the same with float division.
* LoRA soft affinity: endpoints with the adapter active or waiting form the affinity group,
  endpoints with a free adapter slot the available group; with both non-empty, the affinity group
  wins with probability ``loraAffinityThreshold`` (0.999), else the available group.
* low-cost LoRA keeps endpoints with the adapter active or a free adapter slot.

The plugin is also a saturation detector with the legacy (v0.5.1) rule: the pool is saturated
(1.0) when no endpoint has capacity for a sheddable request (the test above), else 0.0. The
built-in ``decision-tree`` config uses it for admission, so admission and the tree agree on when
a sheddable request is dropped (the mean-utilization detector would shed some requests the tree
would still place). The detector only reports; admission sheds nothing but ``priority < 0``.

Only Sheddable requests are sheddable: kvroute's priority model (InferenceObjective: negative
priority = sheddable) and the project's definition of the tree ("a non-critical (Sheddable)
request ... is dropped with 429") both say so, so Standard requests take the critical branch by
default (``treatStandardAsCritical: true``). The legacy Go code treated every request that is not
Critical as sheddable, which drops Standard traffic with 429 whenever every replica is busy; set
``treatStandardAsCritical: false`` to reproduce that.
Metrics consumed: ``waiting_queue_size``, ``kv_cache_usage``, ``active_models``,
``waiting_models``, ``max_active_models``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import (
    EMPTY_REASON,
    EXPLAIN,
    CycleState,
    Filter,
    SaturationDetector,
)
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import Criticality, InferenceRequest

TYPE = "decision-tree-filter"
DROP_REASON = "dropping request due to limited backend resources"

# The capacity test reads only endpoint metrics; the detector has no request to pass.
_NO_REQUEST = InferenceRequest(request_id="", incoming_model="", target_model="")

Step = Callable[[InferenceRequest, Sequence[Endpoint]], Sequence[Endpoint]]


class DecisionTreeParams(PluginParams):
    kv_cache_threshold: float = Field(default=0.8, ge=0.0, le=1.0, alias="kvCacheThreshold")
    queue_threshold_critical: int = Field(default=5, ge=0, alias="queueThresholdCritical")
    queueing_threshold_lora: int = Field(default=128, ge=0, alias="queueingThresholdLoRA")
    lora_affinity_threshold: float = Field(
        default=0.999, ge=0.0, le=1.0, alias="loraAffinityThreshold"
    )
    treat_standard_as_critical: bool = Field(default=True, alias="treatStandardAsCritical")


@dataclass(slots=True)
class _Node:
    """One legacy filter node: a step plus where to go on success / failure / either."""

    name: str
    step: Step
    on_success: _Node | None = None
    on_failure: _Node | None = None
    on_either: _Node | None = None

    def run(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], path: list[str] | None
    ) -> Sequence[Endpoint]:
        out = self.step(request, endpoints)
        if path is not None:
            path.append(f"{self.name}: {len(endpoints)} -> {len(out)}")
        if out:
            nxt = self.on_success or self.on_either
            return nxt.run(request, out, path) if nxt is not None else out
        nxt = self.on_failure or self.on_either
        return nxt.run(request, endpoints, path) if nxt is not None else out


def least_queuing(request: InferenceRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    if not endpoints:
        return []
    qs = [e.metrics.waiting_queue_size for e in endpoints]
    lo, hi = min(qs), max(qs)
    limit = lo + (hi - lo) // len(endpoints)
    return [e for e, q in zip(endpoints, qs, strict=True) if q <= limit]


def least_kv_cache(request: InferenceRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    if not endpoints:
        return []
    kvs = [e.metrics.kv_cache_usage for e in endpoints]
    lo, hi = min(kvs), max(kvs)
    limit = lo + (hi - lo) / len(endpoints)
    return [e for e, kv in zip(endpoints, kvs, strict=True) if kv <= limit]


def low_cost_lora(request: InferenceRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    adapter = request.target_model
    return [
        e
        for e in endpoints
        if adapter in e.metrics.active_models
        or len(e.metrics.active_models) + len(e.metrics.waiting_models)
        < e.metrics.max_active_models
    ]


class DecisionTreeFilter:
    """The legacy tree; ``filter`` returns its survivors, or nothing when it drops the request."""

    def __init__(
        self,
        name: str = TYPE,
        params: DecisionTreeParams | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or DecisionTreeParams()
        self.rng = rng or random.Random()
        critical = {Criticality.CRITICAL}
        if p.treat_standard_as_critical:
            critical.add(Criticality.STANDARD)
        self._critical = frozenset(critical)

        least_kv = _Node("least KV cache", least_kv_cache)
        queue_lora_kv = _Node(
            "least queuing",
            least_queuing,
            on_either=_Node("low-cost LoRA", low_cost_lora, on_either=least_kv),
        )
        queue_kv = _Node("least queuing", least_queuing, on_either=least_kv)
        self._critical_tree = _Node(
            f"queue < {p.queueing_threshold_lora}",
            self._low_queueing,
            on_success=_Node("LoRA soft affinity", self._lora_soft_affinity, on_either=queue_kv),
            on_failure=_Node("least queuing", least_queuing, on_either=queue_lora_kv),
        )
        self._sheddable_tree = _Node(
            f"has capacity (queue <= {p.queue_threshold_critical}, kv <= {p.kv_cache_threshold:g})",
            self._has_capacity,
            on_success=queue_lora_kv,
            on_failure=_Node("drop request", lambda request, endpoints: []),
        )

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        path = state.get(EXPLAIN, None)
        if request.criticality in self._critical:
            if path is not None:
                path.append(f"{request.criticality.value} request: critical branch")
            return self._critical_tree.run(request, endpoints, path)
        if path is not None:
            path.append(f"{request.criticality.value} request: sheddable branch")
        out = self._sheddable_tree.run(request, endpoints, path)
        if not out:
            state.write(EMPTY_REASON, DROP_REASON)
        return out

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        """1.0 when no endpoint could take a sheddable request, else 0.0 (legacy detector)."""
        return 0.0 if self._has_capacity(_NO_REQUEST, endpoints) else 1.0

    def _low_queueing(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        limit = self.params.queueing_threshold_lora
        return [e for e in endpoints if e.metrics.waiting_queue_size < limit]

    def _has_capacity(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        q, kv = self.params.queue_threshold_critical, self.params.kv_cache_threshold
        return [
            e
            for e in endpoints
            if e.metrics.waiting_queue_size <= q and e.metrics.kv_cache_usage <= kv
        ]

    def _lora_soft_affinity(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        adapter = request.target_model
        affinity: list[Endpoint] = []
        available: list[Endpoint] = []
        for e in endpoints:
            m = e.metrics
            if adapter in m.active_models or adapter in m.waiting_models:
                affinity.append(e)
            elif len(m.active_models) + len(m.waiting_models) < m.max_active_models:
                available.append(e)
        if affinity and available:
            if self.rng.random() < self.params.lora_affinity_threshold:
                return affinity
            return available
        return affinity or available


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> DecisionTreeFilter:
    params = parse_params(DecisionTreeParams, name, TYPE, parameters)
    return DecisionTreeFilter(name, params, handle_rng(handle))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = DecisionTreeFilter
_d: type[SaturationDetector] = DecisionTreeFilter
