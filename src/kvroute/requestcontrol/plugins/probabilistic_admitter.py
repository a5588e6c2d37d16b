"""``probabilistic-admitter``: sheds sheddable requests with a probability that rises steeply
with pool saturation (upstream ``requestcontrol/admitter/probabilisticadmitter``).

An :class:`~kvroute.framework.hooks.Admitter`. Requests with priority >= 0 are always admitted,
and so is every request when there are no candidates. For a sheddable request (priority < 0)::

    saturation = mean over candidates of max(waiting_queue_size / queueDepthThreshold,
                                             kv_cache_usage / kvCacheUtilThreshold)
    p          = min(saturation ** power * k, 1)

and the request is denied when a uniform draw in [0, 1) is below ``p`` (the director answers
500 ``Internal - request cannot be admitted: probabilistic-admitter: rejected, ...``).

Parameters (upstream's names and defaults): ``queueDepthThreshold`` (int, 5, > 0),
``kvCacheUtilThreshold`` (0.8, > 0), ``power`` (5.0, > 0), ``k`` (300.0, > 0). With the
defaults every sheddable request is shed from saturation (1/300)^(1/5) ~ 0.32 up.

Upstream counts a pod without metrics as fully saturated (1.0); a kvroute endpoint always has
metrics (zeros until the first scrape), so a never-scraped endpoint counts with its zeros, as
an upstream pod whose metrics were not yet collected does. The draw uses the config's RNG
(seeded in tests and dry runs).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.hooks import Admitter
from kvroute.framework.request import InferenceRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.plugins.params import PluginParams, parse_params

TYPE = "probabilistic-admitter"


class ProbabilisticAdmitterParams(PluginParams):
    queue_depth_threshold: int = Field(default=5, gt=0, alias="queueDepthThreshold")
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, alias="kvCacheUtilThreshold")
    power: float = Field(default=5.0, gt=0.0)
    k: float = Field(default=300.0, gt=0.0)


class ProbabilisticAdmitter:
    def __init__(
        self,
        name: str = TYPE,
        params: ProbabilisticAdmitterParams | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or ProbabilisticAdmitterParams()
        self._q = float(p.queue_depth_threshold)
        self._kv = p.kv_cache_util_threshold
        self.rng = rng or random.Random()

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        """The mean per-endpoint roofline ratio (0 when there are none)."""
        if not endpoints:
            return 0.0
        total = 0.0
        for e in endpoints:
            m = e.metrics
            total += max(m.waiting_queue_size / self._q, m.kv_cache_usage / self._kv)
        return total / len(endpoints)

    def shed_probability(self, saturation: float) -> float:
        return min(float(saturation**self.params.power) * self.params.k, 1.0)

    def admit_request(self, request: InferenceRequest, endpoints: Sequence[Endpoint]) -> str | None:
        if request.priority >= 0 or not endpoints:
            return None
        sat = self.saturation(endpoints)
        prob = self.shed_probability(sat)
        if self.rng.random() < prob:
            return f"{TYPE}: rejected, saturation={sat:.3f} prob={prob:.2f}"
        return None


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    params = parse_params(ProbabilisticAdmitterParams, name, TYPE, parameters)
    return ProbabilisticAdmitter(name, params, handle_rng(handle))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Admitter] = ProbabilisticAdmitter
