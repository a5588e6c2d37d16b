"""``context-length-aware`` (Affinity): prefer endpoints whose declared context range fits.

Each endpoint may carry the label ``llm-d.ai/context-length-range: "<min>-<max>"`` (tokens). The
request's length ``n`` is its estimated prompt tokens (prompt text / 4 characters per token,
upstream's estimate) plus ``max_tokens`` when the body gives one. Formula (llm-d-router's bands;
the shape within each band is kvroute's)::

    no label / unparsable label                    0.5
    min <= n <= max  (in range)                    0.3 + 0.7 * w_min / w   where w = max - min + 1
                                                   and w_min is the narrowest in-range width among
                                                   the candidates (narrowest range scores 1.0)
    out of range, distance d to the nearest bound  0.3 / (1 + d / 1000)     (in [0, 0.3))

Parameters (upstream): ``enableFiltering`` (false). With ``true`` the plugin is also used as a
filter in a profile: it keeps the in-range endpoints, or every endpoint when none is in range.
Registered as ``context-length-aware`` (upstream's type name) and as the alias
``context-length-aware-scorer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Filter, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "context-length-aware"
ALIAS = "context-length-aware-scorer"
RANGE_LABEL = "llm-d.ai/context-length-range"
CHARS_PER_TOKEN = 4


class ContextLengthAwareParams(PluginParams):
    enable_filtering: bool = Field(default=False, alias="enableFiltering")


def parse_range(value: str | None) -> tuple[int, int] | None:
    """``"1024-8192"`` -> (1024, 8192); None when absent or malformed."""
    if not value:
        return None
    lo, sep, hi = value.strip().partition("-")
    if not sep:
        return None
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        return None
    if a < 0 or b < a:
        return None
    return a, b


def request_tokens(request: InferenceRequest) -> int:
    n = len(request.prompt_text) // CHARS_PER_TOKEN
    mt = request.body.get("max_tokens", request.body.get("max_completion_tokens"))
    if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0:
        n += mt
    return n


class ContextLengthAware:
    category = ScorerCategory.AFFINITY

    def __init__(
        self,
        name: str = TYPE,
        params: ContextLengthAwareParams | None = None,
        type_name: str = TYPE,
    ) -> None:
        self.typed_name = TypedName(type_name, name)
        self.params = params or ContextLengthAwareParams()

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        n = request_tokens(request)
        ranges = [parse_range(e.labels.get(RANGE_LABEL)) for e in endpoints]
        widths = [b - a + 1 for r in ranges if r is not None for a, b in (r,) if a <= n <= b]
        narrowest = min(widths) if widths else 1
        out: dict[str, float] = {}
        for e, r in zip(endpoints, ranges, strict=True):
            if r is None:
                out[e.name] = 0.5
                continue
            lo, hi = r
            if lo <= n <= hi:
                out[e.name] = 0.3 + 0.7 * narrowest / (hi - lo + 1)
            else:
                d = lo - n if n < lo else n - hi
                out[e.name] = 0.3 / (1.0 + d / 1000.0)
        return out

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        if not self.params.enable_filtering:
            return endpoints
        n = request_tokens(request)
        keep = []
        for e in endpoints:
            r = parse_range(e.labels.get(RANGE_LABEL))
            if r is not None and r[0] <= n <= r[1]:
                keep.append(e)
        return keep or endpoints


def _make(type_name: str) -> PluginFactory:
    def factory(
        name: str, parameters: Mapping[str, Any], handle: PluginHandle
    ) -> ContextLengthAware:
        params = parse_params(ContextLengthAwareParams, name, type_name, parameters)
        return ContextLengthAware(name, params, type_name)

    return factory


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _make(TYPE), ALIAS: _make(ALIAS)}

_: type[Scorer] = ContextLengthAware
_f: type[Filter] = ContextLengthAware
