"""``header-label-affinity-scorer`` (Affinity): prefer endpoints whose label the request names.

Score (upstream ``scorer/headerlabelaffinity``): 1 for an endpoint whose label ``labelKey``
equals the value of the request header ``headerName``, 0 for every other endpoint (which stays
eligible: this is a soft preference, weighted by the profile). A missing or empty header, or an
endpoint without the label, scores 0. Use one instance per header-to-label mapping, each with
its own weight.

Parameters: ``headerName`` (required; matched case-insensitively, headers reach plugins
lowercased) and ``labelKey`` (required). The scorer writes no response header.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "header-label-affinity-scorer"


class HeaderLabelAffinityParams(PluginParams):
    header_name: str = Field(alias="headerName", min_length=1)
    label_key: str = Field(alias="labelKey", min_length=1)


class HeaderLabelAffinityScorer:
    category = ScorerCategory.AFFINITY

    def __init__(self, name: str, params: HeaderLabelAffinityParams) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.header_name = params.header_name.lower()
        self.label_key = params.label_key

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        wanted = request.headers.get(self.header_name, "")
        if not wanted:
            return {e.name: 0.0 for e in endpoints}
        return {e.name: 1.0 if e.labels.get(self.label_key) == wanted else 0.0 for e in endpoints}


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return HeaderLabelAffinityScorer(
        name, parse_params(HeaderLabelAffinityParams, name, TYPE, parameters)
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = HeaderLabelAffinityScorer
