"""The OpenAI response filter: restore the client's model name and read usage (sans-IO).

Composes :class:`~kvroute.protocol.response_rewrite.ModelNameRewriter` (chunk-safe byte
replace, active only when the model was rewritten) with usage extraction: incremental SSE
scanning for streams, one parse of the whole document otherwise.
"""

from __future__ import annotations

from kvroute.protocol.response_rewrite import ModelNameRewriter
from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body
from kvroute.requestcontrol.hooks import Usage


class OpenAIResponseFilter:
    """One response's filter; ``streaming`` selects SSE (chunk by chunk) or whole-JSON mode."""

    __slots__ = ("_rewriter", "_sse", "usage")

    def __init__(self, incoming_model: str, target_model: str, streaming: bool) -> None:
        self._rewriter = (
            ModelNameRewriter(target_model, incoming_model)
            if target_model and target_model != incoming_model
            else None
        )
        self._sse = SseUsageParser() if streaming else None
        self.usage: Usage | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        sse = self._sse
        if sse is not None:
            if not sse.done:
                sse.feed(chunk)
            if end_of_stream:
                sse.finish()
            self.usage = sse.usage
        elif end_of_stream:  # non-streaming: the stream hands over the whole body at once
            self.usage = parse_usage_body(chunk)
        if self._rewriter is None:
            return chunk
        return self._rewriter.feed(chunk, end_of_stream)
