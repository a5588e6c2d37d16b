"""``topology-extractor``: stamps each endpoint's locality (a ``Topology`` attribute) from labels.

Upstream (``datalayer/extractor/topology``) registers itself on the endpoint-notification source
and reads the pod labels at every endpoint event. kvroute's equivalent seam is the datastore:
the plugin is :class:`~kvroute.plugins.lifecycle.DatastoreAttachable` (the composition root
calls ``attach(datastore)`` once when the graph is built): it stamps the endpoints already
known, then follows the datastore's events and stamps every endpoint that is added or whose
labels change, with ``Datastore.set_attributes``. It is therefore a top-level plugin, exactly
as upstream's sample configs declare it (``pd-topology-epp-config.yaml``), not an extractor
under a ``dataLayer.sources`` entry.

Parameters (upstream's), each the name of the label to read, empty meaning the default:
``hostname`` (``kubernetes.io/hostname``), ``rack`` (``topology.kubernetes.io/rack``),
``zone`` (``topology.kubernetes.io/zone``), ``region`` (``topology.kubernetes.io/region``).

The attribute is written under :func:`~kvroute.framework.topology.topology_key` of the plugin's
name (``Topology`` for the default name); an endpoint with none of the labels gets no
attribute (a label change that removes them all removes it). Not done here: upstream's
fallback to the pod's ``spec.hostname`` when the hostname label is absent -- kvroute's pod
discovery does not carry ``spec.hostname``, so such an endpoint has no hostname tier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.framework.topology import TOPOLOGY_EXTRACTOR, Topology, topology_key
from kvroute.plugins.base import TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle

DEFAULT_HOSTNAME_LABEL = "kubernetes.io/hostname"
DEFAULT_RACK_LABEL = "topology.kubernetes.io/rack"
DEFAULT_ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_REGION_LABEL = "topology.kubernetes.io/region"


class TopologyExtractorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: str = Field("", description="label holding the host name")
    rack: str = Field("", description="label holding the rack")
    zone: str = Field("", description="label holding the zone")
    region: str = Field("", description="label holding the region")


class TopologyExtractor:
    """Keeps each endpoint's ``Topology`` attribute in step with its labels."""

    def __init__(
        self, name: str = TOPOLOGY_EXTRACTOR, params: TopologyExtractorParams | None = None
    ) -> None:
        p = params or TopologyExtractorParams()
        self.typed_name = TypedName(TOPOLOGY_EXTRACTOR, name)
        self.key = topology_key(name)
        self.hostname_label = p.hostname or DEFAULT_HOSTNAME_LABEL
        self.rack_label = p.rack or DEFAULT_RACK_LABEL
        self.zone_label = p.zone or DEFAULT_ZONE_LABEL
        self.region_label = p.region or DEFAULT_REGION_LABEL
        self._datastore: Datastore | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def topology(self, labels: Mapping[str, str]) -> Topology | None:
        """The locality ``labels`` describe; None when they name none of the tiers."""
        topo = Topology(
            hostname=labels.get(self.hostname_label, ""),
            rack=labels.get(self.rack_label, ""),
            zone=labels.get(self.zone_label, ""),
            region=labels.get(self.region_label, ""),
        )
        return topo if topo.known else None

    def attach(self, datastore: Datastore) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._datastore = datastore
        for endpoint in datastore.endpoints():
            self._stamp(endpoint)
        self._unsubscribe = datastore.subscribe(self.endpoint_event)

    def endpoint_event(self, event: EndpointEvent) -> None:
        if event.kind is not EndpointEventKind.REMOVED:
            self._stamp(event.endpoint)

    def _stamp(self, endpoint: Endpoint) -> None:
        if self._datastore is None:
            return
        topo = self.topology(endpoint.labels)
        if endpoint.attributes.get(self.key) != topo:
            self._datastore.set_attributes(endpoint.name, {self.key: topo})


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    params = validate_parameters(TopologyExtractorParams, name, TOPOLOGY_EXTRACTOR, parameters)
    return TopologyExtractor(name, params)


PLUGINS: Mapping[str, PluginFactory] = {TOPOLOGY_EXTRACTOR: _factory}
