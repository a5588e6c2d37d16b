"""Per-plugin latency samples, recorded on the hot path and drained by the metrics layer.

Upstream exports ``inference_extension_plugin_duration_seconds{extension_point, plugin_type,
plugin_name}``. Observing a Prometheus histogram inside the scheduling cycle would cost a lock
and a bucket search per plugin per request, so the cycle only appends the duration to a bounded
``deque`` (one C call); the EPP's metrics layer calls :meth:`PluginTimings.drain` on its own
schedule and observes the samples there. If nobody drains, the oldest samples fall off: memory
stays bounded and the hot path never blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DEFAULT_MAX_SAMPLES = 10_000


@dataclass(frozen=True, slots=True)
class TimingKey:
    """The label set of one ``plugin_duration_seconds`` series."""

    extension_point: str  # Filter | Scorer | Picker | ProfileHandler | PrepareData | ...
    plugin_type: str
    plugin_name: str


class PluginTimings:
    """Bounded duration samples (seconds) per plugin and extension point."""

    __slots__ = ("_max_samples", "_series")

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self._max_samples = max_samples
        self._series: dict[TimingKey, deque[float]] = {}

    def series(self, extension_point: str, plugin_type: str, plugin_name: str) -> deque[float]:
        """The sample buffer for one plugin; callers keep it and ``append`` seconds to it."""
        key = TimingKey(extension_point, plugin_type, plugin_name)
        buf = self._series.get(key)
        if buf is None:
            buf = deque(maxlen=self._max_samples)
            self._series[key] = buf
        return buf

    def drain(self) -> dict[TimingKey, list[float]]:
        """Take every sample recorded since the last drain (oldest first)."""
        out: dict[TimingKey, list[float]] = {}
        for key, buf in self._series.items():
            if buf:
                samples = list(buf)
                buf.clear()
                out[key] = samples
        return out

    def keys(self) -> list[TimingKey]:
        return list(self._series)
