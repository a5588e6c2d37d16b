"""``endpoint-notification-source``: tell the plugins listed under it when endpoints come and go.

Upstream (llm-d-router v0.10, ``datalayer/source/notifications``) passes every endpoint
add/update and delete event, unchanged, to the extractors listed under it in
``dataLayer.sources[].extractors``; the precise prefix producer uses it to open and close one
KV-events subscription per endpoint. It takes no parameters. The samples declare::

    dataLayer:
      sources:
        - pluginRef: endpoint-notification-source
          extractors:
            - pluginRef: precise-prefix-cache-producer

Here it is a :class:`~kvroute.datalayer.plugins.DataLayerSource` (it replaces no metrics) and a
:class:`~kvroute.plugins.lifecycle.DatastoreAttachable`: at ``attach(datastore)`` it delivers an
ADDED event for every endpoint already in the datastore, then forwards every later
:class:`~kvroute.datastore.store.EndpointEvent` (ADDED, LABELS_CHANGED = upstream's
add/update, REMOVED = delete) to each bound :class:`EndpointExtractor` in the listed order.

An extractor that already follows the datastore by itself (a
:class:`~kvroute.plugins.lifecycle.DatastoreListener` or ``DatastoreAttachable``, such as
``mm-embeddings-cache-producer``) may be listed too, as upstream's samples do: it gets the same
events from the datastore and is not sent them twice. Any other plugin listed under the source
is rejected at load, naming it. An extractor that raises is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.errors import PluginValidationError
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.lifecycle import DatastoreAttachable, DatastoreListener
from kvroute.plugins.registry import PluginFactory, PluginHandle

log = logging.getLogger(__name__)

ENDPOINT_NOTIFICATION_SOURCE = "endpoint-notification-source"


@runtime_checkable
class EndpointExtractor(Protocol):
    """A plugin that acts on endpoint lifecycle events delivered by a notification source."""

    def extract_endpoint(self, event: EndpointEvent) -> None: ...


class EndpointNotificationSource:
    """Forwards the datastore's endpoint events to the extractors listed under it."""

    replaces_metrics = False

    def __init__(self, name: str = ENDPOINT_NOTIFICATION_SOURCE) -> None:
        self.typed_name = TypedName(ENDPOINT_NOTIFICATION_SOURCE, name)
        self.extractors: tuple[EndpointExtractor, ...] = ()
        self.delivered = 0  # events delivered to extractors (all of them count once each)

    def bind_extractors(self, extractors: Sequence[Plugin]) -> list[str]:
        bound: list[EndpointExtractor] = []
        problems: list[str] = []
        for plugin in extractors:
            if isinstance(plugin, EndpointExtractor):
                bound.append(plugin)
            elif not isinstance(plugin, (DatastoreListener, DatastoreAttachable)):
                problems.append(
                    f"plugin {plugin.typed_name.name!r} ({plugin.typed_name.type}) takes no "
                    f"endpoint events, so {ENDPOINT_NOTIFICATION_SOURCE} cannot drive it"
                )
        self.extractors = tuple(bound)
        return problems

    def attach(self, datastore: Datastore) -> None:
        for endpoint in datastore.endpoints():
            self.notify(EndpointEvent(EndpointEventKind.ADDED, endpoint))
        datastore.subscribe(self.notify)

    def notify(self, event: EndpointEvent) -> None:
        for extractor in self.extractors:
            try:
                extractor.extract_endpoint(event)
            except Exception:
                log.exception(
                    "%s %r: extractor %r failed on %s %s",
                    ENDPOINT_NOTIFICATION_SOURCE,
                    self.typed_name.name,
                    extractor,
                    event.kind.value,
                    event.endpoint.name,
                )
            self.delivered += 1


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    del handle
    if parameters:
        raise PluginValidationError(
            f"plugin {name!r} ({ENDPOINT_NOTIFICATION_SOURCE}): takes no parameters, got "
            f"{sorted(parameters)}"
        )
    return EndpointNotificationSource(name)


PLUGINS: Mapping[str, PluginFactory] = {ENDPOINT_NOTIFICATION_SOURCE: _factory}
