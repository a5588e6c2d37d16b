"""Prefix-cache-aware routing: approximate (upstream), token-accurate and precise (KV events).

One concept per module: ``hashing`` (block hash chains), ``index`` (the LRU index of levels 1-2),
``approximate`` (``prefix-cache-scorer``), ``precise_index`` (the KV-event index),
``precise`` (``precise-prefix-cache-scorer``), ``producer`` (upstream's split spelling:
``token-producer``, ``approx-prefix-cache-producer``), ``hotspot`` (the anti-hotspot rule) and
``mm_producer`` (``mm-embeddings-cache-producer``), ``burst`` (``burst-prefix-cache-producer``),
``precise_producer`` (``precise-prefix-cache-producer``, its parameters in ``precise_params``).
``PLUGINS`` is what the registry loads.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvroute.plugins.registry import PluginFactory
from kvroute.scheduling.plugins.prefix import (
    approximate,
    burst,
    mm_producer,
    precise,
    precise_producer,
    producer,
)

# ``producer`` re-registers ``prefix-cache-scorer`` (it wraps approximate's factory), so its
# entries win over approximate's.
PLUGINS: Mapping[str, PluginFactory] = {
    **approximate.PLUGINS,
    **precise.PLUGINS,
    **precise_producer.PLUGINS,
    **producer.PLUGINS,
    **mm_producer.PLUGINS,
    **burst.PLUGINS,
}
