"""The label children one request label set writes, looked up once per set, not per metric.

Every routed request writes about twenty series of both metric name sets (the older
``inference_objective_*`` with ``{model_name, target_model_name}`` and llm-d-router's
``llm_d_epp_*`` with ``{..., fairness_id, priority}``). Looking each child up per call
(a label tuple built and hashed per metric) was a third of the recording's cost (issue 19);
here one dict lookup per request finds them all. Children are created when first written, as
the library does, so a series appears in the exposition exactly when it did before: the routed
set at the first routing, the completion set at the first completion, the token set at the
first usage, TTFT per ``streaming`` value at its first observation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # metrics.py imports this module
    from kvroute.observability.metrics import EppMetrics

Labels = tuple[str, str, str, str]  # model, target, fairness id, priority


class RoutedSeries:
    """What :meth:`EppMetrics.record_routed` writes (and completion undoes: the running gauges)."""

    __slots__ = ("llmd_running", "request_sizes", "request_total", "running", "size", "total")

    def __init__(self, m: EppMetrics, labels: Labels) -> None:
        model, target, _fid, prio = labels
        x = m.llmd
        self.request_total: Any = m.request_total.labels(model, target, prio)
        self.request_sizes: Any = m.request_sizes.labels(model, target)
        self.total: Any = x.request_total.labels(*labels)
        self.size: Any = x.request_size.labels(*labels)
        self.running: Any = m.running_requests.labels(model)
        self.llmd_running: Any = x.request_running.labels(*labels)


class CompletedSeries:
    """What :meth:`EppMetrics.record_complete` writes for every completion."""

    __slots__ = (
        "_labels",
        "_m",
        "_ntpot",
        "_tokens",
        "_ttft",
        "duration",
        "llmd_duration",
        "response_size",
        "response_sizes",
    )  # fmt: skip

    def __init__(self, m: EppMetrics, labels: Labels) -> None:
        model, target = labels[0], labels[1]
        x = m.llmd
        self.duration: Any = m.request_duration.labels(model, target)
        self.llmd_duration: Any = x.request_duration.labels(*labels)
        self.response_sizes: Any = m.response_sizes.labels(model, target)
        self.response_size: Any = x.response_size.labels(*labels)
        self._m, self._labels = m, labels
        self._tokens: tuple[Any, ...] | None = None
        self._ntpot: tuple[Any, Any] | None = None
        self._ttft: dict[bool, Any] = {}

    def tokens(self) -> tuple[Any, ...]:
        """(input, output, cached) of the older set, then the same three of llm-d's."""
        if self._tokens is None:
            m, labels = self._m, self._labels
            model, target = labels[0], labels[1]
            x = m.llmd
            self._tokens = (
                m.input_tokens.labels(model, target),
                m.output_tokens.labels(model, target),
                m.prompt_cached_tokens.labels(model, target),
                x.input_tokens.labels(*labels),
                x.output_tokens.labels(*labels),
                x.cached_tokens.labels(*labels),
            )
        return self._tokens

    def ntpot(self) -> tuple[Any, Any]:
        """NTPOT of both sets (only answers with output tokens have one)."""
        if self._ntpot is None:
            labels = self._labels
            self._ntpot = (
                self._m.ntpot.labels(labels[0], labels[1]),
                self._m.llmd.ntpot.labels(*labels),
            )
        return self._ntpot

    def ttft(self, streaming: bool) -> Any:
        child = self._ttft.get(streaming)
        if child is None:
            labels = (*self._labels, "true" if streaming else "false")
            child = self._ttft[streaming] = self._m.llmd.ttft.labels(*labels)
        return child
