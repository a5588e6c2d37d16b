"""Request parsers as upstream's ``requestHandler.parsers``: types, selection, dispatch (sans-IO).

Each parser type claims path suffixes (upstream ``Claims().Paths``). A :class:`ParserSet` is an
ordered list of types, built as upstream's ``ParserRegistry``: a repeated type is skipped, and a
type that claims no path (``passthrough-parser``) is the fallback, ending the list (later
entries are ignored). A request goes to the parser with the **longest** claimed suffix of its
path (query string dropped, trailing ``/`` ignored, plain suffix match as upstream), else to
the fallback, else it is a 400 naming the path and the parsers tried. With no parsers
configured the list is upstream's default: openai, anthropic, vllmhttp, passthrough.

* ``openai-parser``: ``chat/completions``, ``completions``, ``embeddings``, ``responses``,
  ``conversations``, ``chat/completions/render``, ``completions/render``,
  ``images/generations``; model required and rewritten; usage read, model restored. Its
  parameters ``maxMediaItemBytes`` and ``mediaTokens`` govern media parts
  (:mod:`kvroute.protocol.media`, :mod:`kvroute.protocol.media_tokens`).
* ``anthropic-parser``: ``messages`` (model required and rewritten; Messages usage, model
  restored) and ``messages/count_tokens`` (forwarded raw, response not read).
* ``vllmhttp-parser``: ``inference/v1/generate``; model optional; OpenAI-style usage.
* ``sglanghttp-parser``: ``generate``; no model, body untouched; ``meta_info`` usage.
* ``vllmgrpc-parser``: ``vllm.grpc.engine.VllmEngine/{Generate,Embed}`` (gRPC, h2c); no
  model; usage from the response messages (:mod:`kvroute.protocol.grpc_parsers`).
* ``vertexai-parser``: ``PredictionService/{ChatCompletions,RawPredict,StreamRawPredict}``
  (gRPC, h2c): the OpenAI JSON inside the ``HttpBody`` parsed as chat completions or Responses.
  Neither gRPC parser rewrites the body or restores the model (as upstream).
* ``passthrough-parser``: claims nothing (the fallback); body untouched, response not read,
  routed by load only (no prompt text for prefix affinity).

The composition root builds the set from the config with :func:`parser_set_for`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from kvroute.errors import BadRequestError, ConfigError
from kvroute.framework.request import ApiKind, Usage
from kvroute.protocol import anthropic, generate, grpc_parsers, openai
from kvroute.protocol.media import MediaOptions
from kvroute.protocol.openai import ParsedRequest
from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body

__all__ = [
    "DEFAULT_PARSERS",
    "PARSER_TYPES",
    "ParserSet",
    "ParserType",
    "StreamUsage",
    "body_usage",
    "parser_set_for",
    "reads_response",
    "restores_model",
    "stream_usage",
]

OPENAI = "openai-parser"
ANTHROPIC = "anthropic-parser"
VLLM_HTTP = "vllmhttp-parser"
SGLANG_HTTP = "sglanghttp-parser"
PASSTHROUGH = "passthrough-parser"
VLLM_GRPC = "vllmgrpc-parser"
VERTEX_AI = "vertexai-parser"
DEFAULT_PARSERS = (OPENAI, ANTHROPIC, VLLM_HTTP, PASSTHROUGH)

Parse = Callable[[bytes, str], ParsedRequest]


@dataclass(frozen=True, slots=True)
class ParserType:
    name: str
    claims: tuple[str, ...]
    parse: Parse


def _anthropic(body: bytes, path: str) -> ParsedRequest:
    if _matches(path, "messages/count_tokens"):
        return anthropic.parse_count_tokens_request(body, path)
    return anthropic.parse_messages_request(body, path)


def _openai_with(media: MediaOptions, body: bytes, path: str) -> ParsedRequest:
    return openai.parse_request(body, path, media)


def _passthrough(body: bytes, path: str) -> ParsedRequest:
    return ParsedRequest(
        api=ApiKind.PASSTHROUGH,
        body={},
        model="",
        stream=False,
        include_usage=False,
        prompt_text="",
        max_tokens=None,
        raw=body,
    )


PARSER_TYPES: Mapping[str, ParserType] = {
    p.name: p
    for p in (
        ParserType(
            OPENAI,
            (
                "chat/completions",
                "completions",
                "embeddings",
                "responses",
                "conversations",
                "chat/completions/render",
                "completions/render",
                "images/generations",
            ),
            openai.parse_request,
        ),
        ParserType(ANTHROPIC, ("messages", "messages/count_tokens"), _anthropic),
        ParserType(VLLM_HTTP, ("inference/v1/generate",), generate.parse_vllm_generate),
        ParserType(SGLANG_HTTP, ("generate",), generate.parse_sglang_generate),
        ParserType(VLLM_GRPC, grpc_parsers.VLLM_GRPC_PATHS, grpc_parsers.parse_vllm_grpc),
        ParserType(VERTEX_AI, grpc_parsers.VERTEX_PATHS, grpc_parsers.parse_vertexai),
        ParserType(PASSTHROUGH, (), _passthrough),
    )
}

# Bodies kvroute forwards byte for byte whatever the resolved model (no model field to set).
# The gRPC APIs too: their bodies are protobuf frames (upstream rewrites neither).
_UNTOUCHED = frozenset(
    {ApiKind.PASSTHROUGH, ApiKind.MESSAGES_COUNT_TOKENS, ApiKind.SGLANG_GENERATE}
    | grpc_parsers.GRPC_APIS
)


def _clean(path: str) -> str:
    return path.split("?", 1)[0].strip().rstrip("/")


def _matches(path: str, suffix: str) -> bool:
    return _clean(path).endswith(suffix.strip("/"))


class ParserSet:
    """An ordered, de-duplicated list of parser types; see the module docstring."""

    __slots__ = ("_claims", "_fallback", "media", "names")

    def __init__(
        self, names: Iterable[str] = DEFAULT_PARSERS, media: MediaOptions | None = None
    ) -> None:
        # openai-parser's multimodal parameters (limits, token rules); None: the defaults.
        self.media = media
        chosen: list[ParserType] = []
        self._fallback: ParserType | None = None
        for name in names:
            kind = PARSER_TYPES.get(name)
            if kind is None:
                raise ConfigError(_unknown(name))
            if any(k.name == name for k in chosen):
                continue  # upstream skips a repeated type
            if name == OPENAI and media is not None:
                kind = ParserType(OPENAI, kind.claims, partial(_openai_with, media))
            chosen.append(kind)
            if not kind.claims:
                self._fallback = kind
                break
        if not chosen:
            raise ConfigError("requestHandler.parsers: no parsers configured")
        self.names: tuple[str, ...] = tuple(k.name for k in chosen)
        # Longest suffix first, so the first match is the longest one.
        self._claims = sorted(
            ((suffix, kind) for kind in chosen for suffix in kind.claims),
            key=lambda item: -len(item[0]),
        )

    def resolve(self, path: str) -> ParserType:
        clean = _clean(path)
        for suffix, kind in self._claims:
            if clean.endswith(suffix):
                return kind
        if self._fallback is not None:
            return self._fallback
        raise BadRequestError(
            f"no parser matches path {clean or path!r} (parsers tried: {', '.join(self.names)})"
        )

    def parse_request(self, body: bytes, path: str) -> ParsedRequest:
        return self.resolve(path).parse(body, path)

    def rewrite_request_body(self, parsed: ParsedRequest, target_model: str) -> bytes:
        """The body with ``model`` set to ``target_model``; untouched where there is no model."""
        if parsed.api in _UNTOUCHED or not parsed.model:
            return parsed.raw
        return openai.rewrite_request_body(parsed, target_model)


def _unknown(name: str) -> str:
    known = ", ".join(PARSER_TYPES)
    return f"requestHandler.parsers: unknown parser type {name!r} (kvroute supports: {known})"


def parser_set_for(config: Any, plugins: Mapping[str, Any]) -> ParserSet:
    """The parsers an EndpointPickerConfig names, as upstream's loader resolves them.

    ``requestHandler.parsers`` wins; else the deprecated top-level ``parser``; else the
    default list. A ``pluginRef`` names a declared plugin (its type must be a parser type) or,
    undeclared, a parser type (created with defaults, as upstream's ``ensureParsers``).
    """
    handler = getattr(config, "request_handler", None)
    refs: Sequence[str] = [p.plugin_ref for p in handler.parsers] if handler is not None else []
    legacy = getattr(config, "parser", None)
    if not refs and legacy is not None:
        refs = [legacy.plugin_ref]
    if not refs:
        return ParserSet()
    types = []
    media: MediaOptions | None = None
    for ref in refs:
        plugin = plugins.get(ref)
        if plugin is None:
            if ref not in PARSER_TYPES:
                raise ConfigError(
                    f"requestHandler.parsers: {ref!r} is neither a declared plugin nor a "
                    f"parser type (kvroute supports: {', '.join(PARSER_TYPES)})"
                )
            types.append(ref)
            continue
        type_name = getattr(getattr(plugin, "typed_name", None), "type", "")
        if type_name not in PARSER_TYPES:
            raise ConfigError(
                f"requestHandler.parsers: the plugin {ref!r} ({type_name}) is not a parser plugin"
            )
        types.append(type_name)
        if type_name == OPENAI and media is None:
            media = getattr(plugin, "media", None)
    return ParserSet(types, media)


# --- response usage -------------------------------------------------------------------------


class StreamUsage(Protocol):
    """Incremental usage of an event stream (``SseUsageParser`` and its siblings)."""

    @property
    def usage(self) -> Usage | None: ...

    @property
    def done(self) -> bool: ...

    def feed(self, chunk: bytes) -> Usage | None: ...

    def finish(self) -> Usage | None: ...


def stream_usage(api: ApiKind | None) -> StreamUsage:
    if api is ApiKind.MESSAGES:
        return anthropic.AnthropicStreamUsage()
    if api is ApiKind.SGLANG_GENERATE:
        return generate.SglangStreamUsage()
    if api in grpc_parsers.GRPC_APIS:
        return grpc_parsers.grpc_stream_usage(api)
    return SseUsageParser()


def body_usage(api: ApiKind | None, body: bytes) -> Usage | None:
    if api is ApiKind.MESSAGES:
        return anthropic.anthropic_usage_body(body)
    if api is ApiKind.SGLANG_GENERATE:
        return generate.sglang_usage_body(body)
    if api in grpc_parsers.GRPC_APIS:
        return grpc_parsers.grpc_usage_body(api, body)
    return parse_usage_body(body)


def reads_response(api: ApiKind | None) -> bool:
    """False for the raw-forwarded APIs: no usage, no model to restore."""
    return api not in (ApiKind.PASSTHROUGH, ApiKind.MESSAGES_COUNT_TOKENS)


def restores_model(api: ApiKind | None) -> bool:
    """False where the request body was forwarded untouched: the response keeps its model."""
    return api not in _UNTOUCHED
