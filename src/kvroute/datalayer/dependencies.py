"""Endpoint attributes a plugin cannot work without, checked against their producers at load.

Upstream's dependency graph (``Consumes().Required`` / ``Produces()``) fails a config whose
plugin requires a data key that no configured plugin produces (``ErrNoDefaultProducer``), so a
scorer that would silently score nothing is a load error instead. kvroute keys endpoint
attributes by name (:mod:`kvroute.framework.attributes`); the same rule is kept here:

* a plugin that declares ``required_attributes`` (:class:`AttributeConsumer`: attribute name ->
  the extractor type that writes it, for the message) needs, for every name, an
  :class:`AttributeProducer` that declares it in ``produced_attributes`` **and** is listed under
  a source in ``dataLayer.sources[].extractors`` (an extractor that is declared but not listed
  never runs);
* :func:`missing_producers` returns one message per unmet name; :func:`~kvroute.datalayer.
  plugins.data_layer_setup` reports them with the config's other data-layer errors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

from kvroute.plugins.base import Plugin


@runtime_checkable
class AttributeConsumer(Protocol):
    """A plugin that reads endpoint attributes it cannot do without."""

    @property
    def required_attributes(self) -> Mapping[str, str]: ...


@runtime_checkable
class AttributeProducer(Protocol):
    """An extractor that writes endpoint attributes (the names it may write)."""

    @property
    def produced_attributes(self) -> Collection[str]: ...


def missing_producers(
    plugins: Mapping[str, Plugin], listed_extractors: Collection[str]
) -> list[str]:
    """One message per required attribute that no listed extractor produces."""
    produced: set[str] = set()
    for name in listed_extractors:
        extractor: object = plugins.get(name)
        if isinstance(extractor, AttributeProducer):
            produced.update(extractor.produced_attributes)
    problems: list[str] = []
    for name, plugin in plugins.items():
        if not isinstance(plugin, AttributeConsumer):
            continue
        for key, producer_type in plugin.required_attributes.items():
            if key not in produced:
                problems.append(
                    f"plugins: plugin {name!r} ({plugin.typed_name.type}) requires the endpoint "
                    f"attribute {key!r}, which no extractor listed in dataLayer.sources produces "
                    f"(list a {producer_type} under its data source)"
                )
    return problems
