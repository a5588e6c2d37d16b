"""The parameter every upstream picker shares: how many endpoints to return.

``maxNumOfEndpoints`` (default 1, as upstream) > 1 turns the picker's ranking into a fallback
list: the director sends ``x-gateway-destination-endpoint: ip1:port,ip2:port,...`` and a proxy
with retries walks it in order.
"""

from __future__ import annotations

from pydantic import Field

from kvroute.scheduling.plugins.params import PluginParams


class PickerParams(PluginParams):
    max_num_of_endpoints: int = Field(default=1, ge=1, le=1000, alias="maxNumOfEndpoints")
