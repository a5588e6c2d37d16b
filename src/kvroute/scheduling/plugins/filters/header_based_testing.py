"""``header-based-testing-filter``: the candidates named in ``test-epp-endpoint-selection``.

Upstream's conformance-test filter: the request header lists endpoint addresses
(``10.0.0.1,10.0.0.2``; kvroute also accepts ``ip:port`` entries and ignores the port), and the
filter keeps exactly those endpoints, in the header's order. No header, or an empty one, keeps
nothing (the request then fails with 429), as upstream. Only for conformance and tests; never
put it in a production profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.datastore.endpoint import Endpoint
from kvroute.hostport import host_of
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import EMPTY_REASON, CycleState, Filter
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "header-based-testing-filter"
HEADER = "test-epp-endpoint-selection"


class HeaderBasedTestingParams(PluginParams):
    pass


class HeaderBasedTestingFilter:
    def __init__(self, name: str = TYPE) -> None:
        self.typed_name = TypedName(TYPE, name)

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        value = request.headers.get(HEADER, "")
        if not value.strip():
            state.write(EMPTY_REASON, f"no {HEADER} header")
            return []
        by_address = {e.address: e for e in endpoints}
        out: list[Endpoint] = []
        for entry in value.split(","):
            found = by_address.get(host_of(entry))
            if found is not None and found not in out:
                out.append(found)
        if not out:
            state.write(EMPTY_REASON, f"{HEADER} {value!r} names no candidate")
        return out


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> HeaderBasedTestingFilter:
    parse_params(HeaderBasedTestingParams, name, TYPE, parameters)
    return HeaderBasedTestingFilter(name)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = HeaderBasedTestingFilter
