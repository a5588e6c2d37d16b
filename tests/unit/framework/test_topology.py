"""Topology tiers: parsing the config names and comparing two localities."""

from __future__ import annotations

import pytest

from kvroute.framework.topology import Level, Topology, compare, topology_key

PEER = Topology(hostname="h1", rack="r1", zone="z1", region="eu")


@pytest.mark.parametrize(
    ("candidate", "level"),
    [
        (Topology(hostname="h1", rack="r1", zone="z1", region="eu"), Level.HOST),
        (Topology(hostname="h1"), Level.HOST),  # the tightest shared tier wins
        (Topology(hostname="h2", rack="r1", zone="z1", region="eu"), Level.RACK),
        (Topology(hostname="h2", rack="r2", zone="z1", region="eu"), Level.ZONE),
        (Topology(hostname="h2", rack="r2", zone="z2", region="eu"), Level.REGION),
        (Topology(hostname="h2", rack="r2", zone="z2", region="us"), Level.NONE),
        (Topology(), Level.NONE),
        (None, Level.NONE),
    ],
)
def test_compare(candidate: Topology | None, level: Level) -> None:
    assert compare(PEER, candidate) is level


def test_empty_never_matches_empty() -> None:
    assert compare(Topology(zone="z1"), Topology(zone="z1")) is Level.ZONE
    assert compare(Topology(rack="", zone="z1"), Topology(rack="", zone="z2")) is Level.NONE
    assert compare(None, PEER) is Level.NONE


@pytest.mark.parametrize("name", ["host", "rack", "zone", "region"])
def test_parse_level(name: str) -> None:
    assert Level.parse(name).name.lower() == name


@pytest.mark.parametrize("name", ["none", "Host", "datacenter", ""])
def test_parse_rejects_unknown_levels(name: str) -> None:
    with pytest.raises(ValueError, match="host, rack, zone, region"):
        Level.parse(name)


def test_attribute_key_per_producer() -> None:
    assert topology_key(None) == topology_key("") == topology_key("topology-extractor")
    assert topology_key("topology-extractor") == "Topology"
    assert topology_key("nvl72") == "Topology/nvl72"
