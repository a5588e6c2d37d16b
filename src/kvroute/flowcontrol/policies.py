"""Flow-control policy plugins: ordering within a flow, fairness across flows, usage limits.

Type names and parameters are upstream's (llm-d-router ``pkg/epp/flowcontrol/framework/plugins``):

* ordering (``sort_key``: smaller dispatches first)
  - ``fcfs-ordering-policy`` (default): logical arrival order.
  - ``edf-ordering-policy``: deadline = enqueue time + TTL, ties FCFS.
  - ``slo-deadline-ordering-policy``: deadline = receive time + ``x-llm-d-slo-ttft-ms``; requests
    without the header go last; ties FCFS.
* fairness (``select_flow`` over the band's non-empty flows)
  - ``global-strict-fairness-policy`` (upstream's default): the flow whose head is globally best.
  - ``round-robin-fairness-policy``: a cursor over the non-empty flows.
  - ``program-aware-fairness`` (kvroute's default, with head-wait weight 0: see
    :func:`default_fairness`): least attained service per fairness ID.
    Service is weighted tokens (prompt + 2 x output), decayed with half-life
    ``lasHalfLifeSeconds`` (60); the score is ``lasWeightService`` (0.8) x normalised service -
    ``lasWeightHeadWait`` (0.2) x normalised head wait, lowest first. Every dispatch counts,
    the inline fast path's too. Idle IDs are forgotten after ``evictionTtlSeconds`` (3600),
    swept every ``evictionSweepSeconds`` (300).
* usage limit (``ceiling(priority, saturation)``)
  - ``static-usage-limit-policy`` (default): one ceiling, ``threshold`` (1.0), for every band.

Method names deliberately avoid the scheduling extension points (``pick``, ``score``,
``filter``, ``saturation``) so the scheduling builder never mistakes these for its plugins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import Field

from kvroute.flowcontrol.item import QueueItem
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.plugins.params import PluginParams, parse_params

FCFS = "fcfs-ordering-policy"
EDF = "edf-ordering-policy"
SLO_DEADLINE = "slo-deadline-ordering-policy"
GLOBAL_STRICT = "global-strict-fairness-policy"
ROUND_ROBIN = "round-robin-fairness-policy"
PROGRAM_AWARE = "program-aware-fairness"
STATIC_USAGE_LIMIT = "static-usage-limit-policy"


class FlowView(Protocol):
    """What a fairness policy sees of one flow."""

    @property
    def fairness_id(self) -> str: ...

    def head(self) -> QueueItem | None: ...


class OrderingPolicy(Protocol):
    typed_name: TypedName

    def sort_key(self, item: QueueItem) -> tuple[float, int]: ...


class FairnessPolicy(Protocol):
    typed_name: TypedName

    def select_flow(
        self, flows: Sequence[FlowView], ordering: OrderingPolicy, now: float
    ) -> FlowView: ...

    def on_dispatch(self, item: QueueItem, now: float) -> None: ...


class UsageLimitPolicy(Protocol):
    typed_name: TypedName

    def ceiling(self, priority: int, saturation: float) -> float: ...


# -- ordering ---------------------------------------------------------------------------------


class FcfsOrdering:
    def __init__(self, name: str = FCFS) -> None:
        self.typed_name = TypedName(FCFS, name)

    def sort_key(self, item: QueueItem) -> tuple[float, int]:
        return (0.0, item.seq)


class EdfOrdering:
    def __init__(self, name: str = EDF) -> None:
        self.typed_name = TypedName(EDF, name)

    def sort_key(self, item: QueueItem) -> tuple[float, int]:
        return (item.expires_at, item.seq)


class SloDeadlineOrdering:
    def __init__(self, name: str = SLO_DEADLINE) -> None:
        self.typed_name = TypedName(SLO_DEADLINE, name)

    def sort_key(self, item: QueueItem) -> tuple[float, int]:
        return (item.slo_deadline, item.seq)  # inf (no header) sorts last


# -- fairness ---------------------------------------------------------------------------------


class GlobalStrictFairness:
    def __init__(self, name: str = GLOBAL_STRICT) -> None:
        self.typed_name = TypedName(GLOBAL_STRICT, name)

    def select_flow(
        self, flows: Sequence[FlowView], ordering: OrderingPolicy, now: float
    ) -> FlowView:
        key = ordering.sort_key

        def head_key(f: FlowView) -> tuple[float, int]:
            head = f.head()
            return key(head) if head is not None else _LAST

        return min(flows, key=head_key)

    def on_dispatch(self, item: QueueItem, now: float) -> None:
        pass


_LAST = (math.inf, 1 << 62)


class RoundRobinFairness:
    """Serves the next flow after the one served last, in the band's flow order."""

    def __init__(self, name: str = ROUND_ROBIN) -> None:
        self.typed_name = TypedName(ROUND_ROBIN, name)
        self._last: str | None = None

    def select_flow(
        self, flows: Sequence[FlowView], ordering: OrderingPolicy, now: float
    ) -> FlowView:
        chosen = flows[0]
        if self._last is not None:
            ids = [f.fairness_id for f in flows]
            # First flow strictly after the last served one (by band order), wrapping round.
            try:
                chosen = flows[(ids.index(self._last) + 1) % len(flows)]
            except ValueError:  # the last one emptied: order of the remaining flows decides
                chosen = flows[0]
        self._last = chosen.fairness_id
        return chosen

    def on_dispatch(self, item: QueueItem, now: float) -> None:
        pass


class ProgramAwareParams(PluginParams):
    las_weight_service: float = Field(default=0.8, ge=0.0, alias="lasWeightService")
    las_weight_head_wait: float = Field(default=0.2, ge=0.0, alias="lasWeightHeadWait")
    las_half_life_seconds: float = Field(default=60.0, gt=0.0, alias="lasHalfLifeSeconds")
    eviction_ttl_seconds: float = Field(default=3600.0, gt=0.0, alias="evictionTtlSeconds")
    eviction_sweep_seconds: float = Field(default=300.0, gt=0.0, alias="evictionSweepSeconds")


OUTPUT_WEIGHT = 2.0


class ProgramAwareFairness:
    """Least attained service per fairness ID (see the module docstring).

    Every ID's service decays at the same rate, so it is stored scaled to a common epoch
    (``value x exp(decay x (at - epoch))``): comparing IDs needs no ``exp`` per flow, one dict
    read each (the normalised score is unchanged: the common factor cancels). The epoch moves
    forward (all values rescaled) before the scale could overflow.
    """

    _REBASE = 300.0  # rescale once decay x (now - epoch) passes this (exp(300) ~ 1e130)

    def __init__(self, name: str = PROGRAM_AWARE, params: ProgramAwareParams | None = None) -> None:
        self.typed_name = TypedName(PROGRAM_AWARE, name)
        self.params = p = params or ProgramAwareParams()
        self._decay = math.log(2.0) / p.las_half_life_seconds
        self._scaled: dict[str, float] = {}  # id -> service scaled to the epoch
        self._last: dict[str, float] = {}  # id -> last dispatch time (idle IDs are forgotten)
        self._epoch: float | None = None
        self._next_sweep = -math.inf

    def attained(self, fairness_id: str, now: float) -> float:
        value = self._scaled.get(fairness_id, 0.0)
        if not value or self._epoch is None:
            return 0.0
        return value * math.exp(-self._decay * (now - self._epoch))

    def select_flow(
        self, flows: Sequence[FlowView], ordering: OrderingPolicy, now: float
    ) -> FlowView:
        if len(flows) == 1:
            return flows[0]
        get = self._scaled.get
        service = [get(f.fairness_id, 0.0) for f in flows]
        waits = []
        for f in flows:
            head = f.head()
            waits.append(now - head.enqueued_at if head is not None else 0.0)
        a = self.params.las_weight_service / (max(service) or 1.0)
        b = self.params.las_weight_head_wait / (max(waits) or 1.0)
        best, best_score = 0, math.inf
        for i, (sv, w) in enumerate(zip(service, waits, strict=True)):
            score = a * sv - b * w
            if score < best_score:
                best, best_score = i, score
        return flows[best]

    def on_dispatch(self, item: QueueItem, now: float) -> None:
        if self._epoch is None:
            self._epoch = now
        elif self._decay * (now - self._epoch) > self._REBASE:
            factor = math.exp(-self._decay * (now - self._epoch))
            self._scaled = {k: v * factor for k, v in self._scaled.items()}
            self._epoch = now
        cost = item.prompt_tokens + OUTPUT_WEIGHT * item.output_tokens
        scale = math.exp(self._decay * (now - self._epoch))
        fid = item.fairness_id
        self._scaled[fid] = self._scaled.get(fid, 0.0) + cost * scale
        self._last[fid] = now
        if now >= self._next_sweep:
            self._next_sweep = now + self.params.eviction_sweep_seconds
            ttl = self.params.eviction_ttl_seconds
            for gone in [k for k, at in self._last.items() if now - at > ttl]:
                del self._last[gone]
                del self._scaled[gone]


DEFAULT_FAIRNESS_NAME = "default-fairness"


def default_fairness() -> ProgramAwareFairness:
    """The fairness a band gets when its config names none: ``program-aware-fairness`` as pure
    least attained service (``lasWeightService`` 1, ``lasWeightHeadWait`` 0).

    Upstream's default is ``global-strict-fairness-policy`` (flows served in arrival order: a
    tenant sending 10x as much gets 5.6x its fair share). Upstream's program-aware weights
    (0.8 / 0.2) let the head-wait term, always largest for the flooding tenant's long queue,
    outweigh up to a third more attained service: 1.23x its fair share in a 120 s
    noisy-neighbour run, against 0.98x with the head-wait weight at 0 (``docs/benchmarks.md``,
    flow control). An explicitly declared ``program-aware-fairness`` keeps upstream's weights.
    """
    return ProgramAwareFairness(
        DEFAULT_FAIRNESS_NAME,
        ProgramAwareParams.model_validate({"lasWeightService": 1.0, "lasWeightHeadWait": 0.0}),
    )


# -- usage limits -----------------------------------------------------------------------------


class StaticUsageLimitParams(PluginParams):
    threshold: float = Field(default=1.0, gt=0.0)


class StaticUsageLimit:
    def __init__(
        self, name: str = STATIC_USAGE_LIMIT, params: StaticUsageLimitParams | None = None
    ):
        self.typed_name = TypedName(STATIC_USAGE_LIMIT, name)
        self.threshold = (params or StaticUsageLimitParams()).threshold

    def ceiling(self, priority: int, saturation: float) -> float:
        return self.threshold


# -- registration -----------------------------------------------------------------------------


def _no_params(type_name: str, cls: Any) -> PluginFactory:
    def factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
        parse_params(PluginParams, name, type_name, parameters)  # rejects unknown keys
        return cls(name)

    return factory


def _program_aware(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return ProgramAwareFairness(
        name, parse_params(ProgramAwareParams, name, PROGRAM_AWARE, parameters)
    )


def _static_limit(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return StaticUsageLimit(
        name, parse_params(StaticUsageLimitParams, name, STATIC_USAGE_LIMIT, parameters)
    )


PLUGINS: Mapping[str, PluginFactory] = {
    FCFS: _no_params(FCFS, FcfsOrdering),
    EDF: _no_params(EDF, EdfOrdering),
    SLO_DEADLINE: _no_params(SLO_DEADLINE, SloDeadlineOrdering),
    GLOBAL_STRICT: _no_params(GLOBAL_STRICT, GlobalStrictFairness),
    ROUND_ROBIN: _no_params(ROUND_ROBIN, RoundRobinFairness),
    PROGRAM_AWARE: _program_aware,
    STATIC_USAGE_LIMIT: _static_limit,
}


def is_ordering(p: object) -> bool:
    return callable(getattr(p, "sort_key", None))


def is_fairness(p: object) -> bool:
    return callable(getattr(p, "select_flow", None))


def is_usage_limit(p: object) -> bool:
    return callable(getattr(p, "ceiling", None))
