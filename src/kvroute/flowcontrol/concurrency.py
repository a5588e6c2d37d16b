"""``concurrency-detector``: saturation from the EPP's own in-flight counters.

Upstream (``saturationdetector/concurrency``) reads ``InFlightLoad``; here that is each
endpoint's :class:`~kvroute.datastore.endpoint.EndpointLoad` (requests and estimated tokens the
director sent and has not seen finish). Parameters (upstream defaults): ``concurrencyMode``
``requests`` | ``tokens`` | ``hybrid`` (``requests``), ``maxConcurrency`` 100,
``maxTokenConcurrency`` 1,000,000, ``headroom`` 0.

* ``requests`` / ``tokens``: pool saturation = sum of in-flight / sum of capacity.
* ``hybrid``: the mean over endpoints of the larger of the request and token ratios.
* Empty candidate list: 1.0 (saturated), as the utilization detector.
* As a filter: keep endpoints under ``capacity * (1 + headroom)``; fail open when none is.

Unlike scraped metrics these counters move the instant a request is dispatched, so flow control
gated on this detector never over-dispatches between scrapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Filter, SaturationDetector
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "concurrency-detector"


class ConcurrencyParams(PluginParams):
    concurrency_mode: Literal["requests", "tokens", "hybrid"] = Field(
        default="requests", alias="concurrencyMode"
    )
    max_concurrency: int = Field(default=100, gt=0, alias="maxConcurrency")
    max_token_concurrency: int = Field(default=1_000_000, gt=0, alias="maxTokenConcurrency")
    headroom: float = Field(default=0.0, ge=0.0)


class ConcurrencyDetector:
    def __init__(self, name: str = TYPE, params: ConcurrencyParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or ConcurrencyParams()
        self._mode = p.concurrency_mode
        self._req = float(p.max_concurrency)
        self._tok = float(p.max_token_concurrency)

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return 1.0
        if self._mode == "requests":
            return sum(e.load.inflight for e in endpoints) / (self._req * len(endpoints))
        if self._mode == "tokens":
            return sum(e.load.inflight_tokens for e in endpoints) / (self._tok * len(endpoints))
        total = 0.0
        for e in endpoints:
            total += max(e.load.inflight / self._req, e.load.inflight_tokens / self._tok)
        return total / len(endpoints)

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        scale = 1.0 + self.params.headroom
        req_limit, tok_limit = self._req * scale, self._tok * scale
        mode = self._mode
        kept = [
            e
            for e in endpoints
            if (mode == "tokens" or e.load.inflight < req_limit)
            and (mode == "requests" or e.load.inflight_tokens < tok_limit)
        ]
        return kept or endpoints


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> ConcurrencyDetector:
    return ConcurrencyDetector(name, parse_params(ConcurrencyParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = ConcurrencyDetector
_d: type[SaturationDetector] = ConcurrencyDetector
