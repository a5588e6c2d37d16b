"""How plugins that consume prefix-match data find the ``prefix-cache-scorer`` that produces it.

Upstream's consumers name a producer (``prefixPluginName``); here the producer is the
approximate ``prefix-cache-scorer`` instance of that name, which must be declared before the
consumer in ``plugins`` (it is its own PrepareData hook, so its match is in the CycleState by the
time any filter or scorer runs). A ``prefix-cache-scorer`` over a
``precise-prefix-cache-producer`` hands the consumer that producer's match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginHandle
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.prefix.approximate import TYPE as PREFIX_TYPE
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer, PrefixMatch
from kvroute.scheduling.plugins.prefix.precise_producer import PrecisePrefixCacheProducer
from kvroute.scheduling.plugins.prefix.producer import ProducedPrefixScorer
from kvroute.scheduling.request import InferenceRequest

DEFAULT_PREFIX_PLUGIN = PREFIX_TYPE


class PrefixMatcher(Protocol):
    """What a prefix consumer reads: this cycle's match (the approximate scorer/producer and
    the precise producer both provide it, with the same :class:`PrefixMatch` type)."""

    typed_name: TypedName

    def match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> PrefixMatch: ...


def find_prefix_plugin(
    handle: PluginHandle, prefix_name: str, name: str, type_name: str
) -> PrefixMatcher:
    try:
        plugin = handle.plugin(prefix_name)
    except PluginValidationError:
        raise PluginValidationError(
            f"plugin {name!r} ({type_name}): parameters.prefixPluginName: no plugin named "
            f"{prefix_name!r} declared before it (declare a {PREFIX_TYPE} first)"
        ) from None
    if isinstance(plugin, ProducedPrefixScorer):  # upstream's split spelling: read its producer
        if isinstance(plugin.producer, PrecisePrefixCacheProducer):
            return plugin.producer
        if not isinstance(plugin.producer, PrefixCacheScorer):
            raise PluginValidationError(
                f"plugin {name!r} ({type_name}): parameters.prefixPluginName: {prefix_name!r} "
                f"scores a {plugin.producer.typed_name.type}, which keeps no prefix index"
            )
        return plugin.producer
    if not isinstance(plugin, PrefixCacheScorer):
        raise PluginValidationError(
            f"plugin {name!r} ({type_name}): parameters.prefixPluginName: {prefix_name!r} is a "
            f"{plugin.typed_name.type}, not a {PREFIX_TYPE}"
        )
    return plugin
