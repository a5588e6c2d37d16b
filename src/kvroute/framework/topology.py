"""Endpoint locality (upstream's ``Topology`` attribute) and how two localities compare.

``topology-extractor`` (:mod:`kvroute.datalayer.topology`) stamps a :class:`Topology` on each
endpoint from its labels; ``topology-affinity-filter``/``-scorer`` compare a candidate's with
the peer endpoint's (the other P/D stage's pick). Upstream keys the attribute by
``(Topology, producer)``; kvroute keys ``Endpoint.attributes`` by a string, so an extractor
with the default name writes ``Topology`` and one named ``x`` writes ``Topology/x``
(:func:`topology_key`), the same ``attribute/producer`` spelling
:mod:`kvroute.framework.attributes` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kvroute.framework.endpoint import Endpoint

TOPOLOGY_ATTRIBUTE = "Topology"
TOPOLOGY_EXTRACTOR = "topology-extractor"


def topology_key(producer: str | None) -> str:
    """The ``Endpoint.attributes`` key a ``topology-extractor`` named ``producer`` writes
    (``None`` or ``""``: the default-named extractor)."""
    if not producer or producer == TOPOLOGY_EXTRACTOR:
        return TOPOLOGY_ATTRIBUTE
    return f"{TOPOLOGY_ATTRIBUTE}/{producer}"


@dataclass(frozen=True, slots=True)
class Topology:
    """Where an endpoint runs; an empty field is unknown (and never matches)."""

    hostname: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""

    @property
    def known(self) -> bool:
        return bool(self.hostname or self.rack or self.zone or self.region)


class Level(IntEnum):
    """Topology tiers, tightest first: same host implies same rack, zone and region."""

    HOST = 0
    RACK = 1
    ZONE = 2
    REGION = 3
    NONE = 4  # no common tier

    @classmethod
    def parse(cls, text: str) -> Level:
        """``host``/``rack``/``zone``/``region``; raises ValueError otherwise."""
        level = _LEVEL_NAMES.get(text)
        if level is None:
            raise ValueError(
                f"invalid topology level {text!r}, must be one of host, rack, zone, region"
            )
        return level


_LEVEL_NAMES: dict[str, Level] = {
    "host": Level.HOST,
    "rack": Level.RACK,
    "zone": Level.ZONE,
    "region": Level.REGION,
}


def compare(peer: Topology | None, candidate: Topology | None) -> Level:
    """The tightest tier at which both have the same non-empty value; NONE if there is none."""
    if peer is None or candidate is None:
        return Level.NONE
    # an if-chain, not a loop over tuples: this runs per candidate on the request path
    if peer.hostname and peer.hostname == candidate.hostname:
        return Level.HOST
    if peer.rack and peer.rack == candidate.rack:
        return Level.RACK
    if peer.zone and peer.zone == candidate.zone:
        return Level.ZONE
    if peer.region and peer.region == candidate.region:
        return Level.REGION
    return Level.NONE


def topology_of(endpoint: Endpoint, key: str = TOPOLOGY_ATTRIBUTE) -> Topology | None:
    """The endpoint's :class:`Topology` under ``key``; None when absent or of another type."""
    value = endpoint.attributes.get(key)
    return value if isinstance(value, Topology) else None
