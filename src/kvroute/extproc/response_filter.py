"""The response filter: restore the client's model name and read usage (sans-IO).

Composes :class:`~kvroute.protocol.response_rewrite.ModelNameRewriter` (chunk-safe byte
replace, active only when the model was rewritten) with usage extraction: incremental SSE
scanning for streams, one parse of the whole document otherwise. ``api`` (the request's
:class:`~kvroute.scheduling.request.ApiKind`, from its parser) picks how usage is read: OpenAI
(default), Anthropic Messages events, SGLang ``meta_info``; raw-forwarded APIs read nothing.
"""

from __future__ import annotations

from kvroute.protocol.parsers import (
    StreamUsage,
    body_usage,
    reads_response,
    restores_model,
    stream_usage,
)
from kvroute.protocol.response_rewrite import ModelNameRewriter
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.request import ApiKind


class OpenAIResponseFilter:
    """One response's filter; ``streaming`` selects SSE (chunk by chunk) or whole-JSON mode."""

    __slots__ = ("_api", "_reads", "_rewriter", "_sse", "usage")

    def __init__(
        self, incoming_model: str, target_model: str, streaming: bool, api: ApiKind | None = None
    ) -> None:
        self._api = api
        self._reads = reads_response(api)
        self._rewriter = (
            ModelNameRewriter(target_model, incoming_model)
            if self._reads
            and restores_model(api)
            and incoming_model
            and target_model
            and target_model != incoming_model
            else None
        )
        self._sse: StreamUsage | None = stream_usage(api) if streaming and self._reads else None
        self.usage: Usage | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if not self._reads:
            return chunk
        sse = self._sse
        if sse is not None:
            if not sse.done:
                sse.feed(chunk)
            if end_of_stream:
                sse.finish()
            self.usage = sse.usage
        elif end_of_stream:  # non-streaming: the stream hands over the whole body at once
            self.usage = body_usage(self._api, chunk)
        if self._rewriter is None:
            return chunk
        return self._rewriter.feed(chunk, end_of_stream)
