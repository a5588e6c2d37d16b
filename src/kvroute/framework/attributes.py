"""Reading numeric endpoint attributes (what data-layer extractors stamp on an endpoint).

Upstream keys an attribute by ``(name, producer)``; kvroute keys ``Endpoint.attributes`` by the
attribute name alone (each name has one producer here: ``GPUUtilization`` comes from the
``dcgm-extractor``, ``ServedModels`` from the ``models-data-extractor``). The configured
``producer`` is therefore validated, not used for the lookup; :func:`attribute_key` applies
upstream's rule for a name containing ``/`` so a config upstream rejects is rejected here too.
"""

from __future__ import annotations

import math

from kvroute.framework.endpoint import Endpoint


def attribute_key(attribute: str, producer: str | None) -> str:
    """The ``Endpoint.attributes`` key for a configured ``attribute``/``producer`` pair.

    Raises ValueError when ``producer`` is omitted and ``attribute`` contains ``/`` (upstream
    reads that as the combined ``Attribute/Producer`` spelling and asks for the two fields).
    """
    if producer is None and "/" in attribute:
        head, _, tail = attribute.rpartition("/")
        raise ValueError(
            f"attribute {attribute!r} contains '/' but no producer is set; the attribute and its "
            f"producer are separate parameters: write attribute: {head!r} and producer: "
            f"{tail!r}, or set producer explicitly if the name itself contains '/'"
        )
    return attribute


def scalar_attribute(endpoint: Endpoint, key: str) -> float | None:
    """The endpoint's numeric attribute ``key``; None when absent, not a number, or NaN."""
    value = endpoint.attributes.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if math.isnan(number) else number
