"""Predicted-latency scheduling, learned online in the EPP (llm-d-router's §7 without a sidecar).

One concept per module: ``rls`` (recursive least squares), ``predictor`` (the per-endpoint TTFT
and TPOT models and their features), ``producer`` (``predicted-latency-producer``: the hooks that
record send-time features and learn from every response), ``slo`` (per-request SLO headers) and
``scorer`` (``latency-scorer``). ``PLUGINS`` is what the registry loads.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvroute.plugins.registry import PluginFactory
from kvroute.scheduling.plugins.latency import producer, scorer

PLUGINS: Mapping[str, PluginFactory] = {**producer.PLUGINS, **scorer.PLUGINS}
