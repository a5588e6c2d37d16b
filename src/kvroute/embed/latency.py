"""The online latency predictor's plugins, for programs that report on what it learned.

The virtual-time bench (``python -m kvroute_bench.predictor_error``) reads the predictions of a
running ``latency-scorer`` and its ``predicted-latency-producer`` to measure their error.
"""

from __future__ import annotations

from kvroute.scheduling.plugins.latency.predictor import LatencyPredictor
from kvroute.scheduling.plugins.latency.producer import PredictedLatencyProducer
from kvroute.scheduling.plugins.latency.scorer import LatencyScorer

__all__ = ["LatencyPredictor", "LatencyScorer", "PredictedLatencyProducer"]
