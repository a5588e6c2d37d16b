"""The gRPC request parsers (sans-IO): upstream's ``vllmgrpc-parser`` and ``vertexai-parser``.

Both read gRPC over HTTP/2 cleartext (the pool's ``appProtocol: kubernetes.io/h2c``); the body
is gRPC frames (:mod:`kvroute.protocol.grpc_wire`) and is forwarded byte for byte: neither
parser rewrites the model (upstream's two parsers are not ``ModelNameRewriter`` s either, so an
InferenceModelRewrite changes what the scheduler sees, not the body), and the response's model
name is not restored.

* ``vllmgrpc-parser`` claims ``vllm.grpc.engine.VllmEngine/Generate`` and ``…/Embed``.
  ``GenerateRequest``: ``text`` is the prompt text; ``tokenized.input_ids`` the token ids
  (prompt text: the ids as space-separated decimals, as the vLLM HTTP generate parser);
  ``stream``; ``sampling_params.max_tokens`` when set (0 kept). The API names no model: the
  request is routed without one (as upstream). ``EmbedRequest`` needs ``tokenized``. Usage: the
  last ``GenerateResponse`` chunk or ``complete`` message with prompt or completion tokens
  (``prompt_tokens``, ``completion_tokens``, ``cached_tokens``); ``EmbedResponse.prompt_tokens``.
* ``vertexai-parser`` claims ``PredictionService/ChatCompletions`` (the ``HttpBody`` JSON is
  parsed as an OpenAI chat completions body), ``PredictionService/RawPredict`` and
  ``PredictionService/StreamRawPredict`` (parsed as a Responses API body, as upstream). The
  OpenAI parser's rules apply to the JSON (model required, prompt text, media, 400s). Usage:
  each response message is an ``HttpBody`` whose data is an OpenAI JSON document or SSE
  events; the last usage found counts.

Multimodal placeholders of ``GenerateRequest.mm_inputs`` are not read (upstream maps them to
``TokenizedRequest`` features for its precise prefix producer, which kvroute does not have).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from kvroute.errors import BadRequestError
from kvroute.framework.request import ApiKind, Usage
from kvroute.protocol import openai
from kvroute.protocol.grpc_wire import MESSAGES, FrameReader, first_message
from kvroute.protocol.openai import ParsedRequest
from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body

__all__ = [
    "GRPC_APIS",
    "VERTEX_PATHS",
    "VLLM_GRPC_PATHS",
    "GrpcStreamUsage",
    "grpc_stream_usage",
    "grpc_usage_body",
    "parse_vertexai",
    "parse_vllm_grpc",
]

_V = "vllm.grpc.engine."
_GenerateRequest = MESSAGES[_V + "GenerateRequest"]
_EmbedRequest = MESSAGES[_V + "EmbedRequest"]
_GenerateResponse = MESSAGES[_V + "GenerateResponse"]
_EmbedResponse = MESSAGES[_V + "EmbedResponse"]
_HttpBody = MESSAGES["google.api.HttpBody"]
_A = "google.cloud.aiplatform.v1beta1."

VLLM_GRPC_PATHS = (ApiKind.VLLM_GRPC_GENERATE.value, ApiKind.VLLM_GRPC_EMBED.value)
# (claimed suffix, API kind, request message, OpenAI path of the JSON inside)
_VERTEX: tuple[tuple[ApiKind, str, str], ...] = (
    (ApiKind.VERTEX_CHAT_COMPLETIONS, "ChatCompletionsRequest", "/chat/completions"),
    (ApiKind.VERTEX_STREAM_RAW_PREDICT, "StreamRawPredictRequest", "/responses"),
    (ApiKind.VERTEX_RAW_PREDICT, "RawPredictRequest", "/responses"),
)
VERTEX_PATHS = tuple(kind.value for kind, _, _ in _VERTEX)
VLLM_GRPC_APIS = frozenset({ApiKind.VLLM_GRPC_GENERATE, ApiKind.VLLM_GRPC_EMBED})
VERTEX_APIS = frozenset(kind for kind, _, _ in _VERTEX)
GRPC_APIS = VLLM_GRPC_APIS | VERTEX_APIS


def _clean(path: str) -> str:
    return path.split("?", 1)[0].strip().rstrip("/")


def _decode(cls: Any, data: bytes, what: str) -> Any:
    try:
        return cls.FromString(data)
    except (DecodeError, ValueError) as exc:
        raise BadRequestError(f"invalid {what}: {exc}") from None


def _ids_text(ids: Any) -> str:
    return " ".join(map(str, ids))


def parse_vllm_grpc(body: bytes, path: str) -> ParsedRequest:
    """A ``vllm.grpc.engine.VllmEngine`` ``Generate`` or ``Embed`` request."""
    message = first_message(body, "vllmgrpc")
    if _clean(path).endswith(ApiKind.VLLM_GRPC_EMBED.value):
        embed = _decode(_EmbedRequest, message, "EmbedRequest")
        if not embed.HasField("tokenized"):
            raise BadRequestError("invalid EmbedRequest: missing tokenized input")
        return ParsedRequest(
            api=ApiKind.VLLM_GRPC_EMBED,
            body={},
            model="",
            stream=False,
            include_usage=True,
            prompt_text=_ids_text(embed.tokenized.input_ids),
            max_tokens=None,
            raw=body,
        )
    req = _decode(_GenerateRequest, message, "GenerateRequest")
    which = req.WhichOneof("input")
    if which == "text":
        prompt = req.text
    elif which == "tokenized":
        prompt = _ids_text(req.tokenized.input_ids)
    else:
        raise BadRequestError("invalid GenerateRequest: no input (set text or tokenized)")
    sp = req.sampling_params
    max_tokens = (
        sp.max_tokens if req.HasField("sampling_params") and sp.HasField("max_tokens") else None
    )
    return ParsedRequest(
        api=ApiKind.VLLM_GRPC_GENERATE,
        body={},
        model="",  # the gRPC API names no model
        stream=bool(req.stream),
        include_usage=True,
        prompt_text=prompt,
        max_tokens=max_tokens,
        raw=body,
    )


def parse_vertexai(body: bytes, path: str) -> ParsedRequest:
    """A Vertex AI ``PredictionService`` request whose ``HttpBody`` carries OpenAI JSON."""
    clean = _clean(path)
    found = next((v for v in _VERTEX if clean.endswith(v[0].value)), None)
    if found is None:  # the parser set only sends claimed paths here
        raise BadRequestError(f"vertexai-parser: unsupported path {path!r}")
    kind, message_name, openai_path = found
    message = first_message(body, "vertexai")
    req = _decode(MESSAGES[_A + message_name], message, message_name)
    if not req.HasField("http_body"):
        raise BadRequestError(f"invalid {message_name}: it has no HttpBody")
    try:
        inner = openai.parse_request(req.http_body.data, openai_path)
    except BadRequestError as exc:
        raise BadRequestError(f"invalid {message_name}: {exc.message}") from None
    return dataclasses.replace(inner, api=kind, raw=body)


# --- response usage ---------------------------------------------------------------------------


def _vllm_generate_usage(message: bytes) -> Usage | None:
    try:
        resp = _GenerateResponse.FromString(message)
    except DecodeError:
        return None
    which = resp.WhichOneof("response")
    if which is None:
        return None
    part = getattr(resp, which)
    if part.prompt_tokens == 0 and part.completion_tokens == 0:
        return None  # streaming chunks often carry no counts until the last one
    return Usage(
        prompt_tokens=part.prompt_tokens,
        completion_tokens=part.completion_tokens,
        cached_tokens=part.cached_tokens,
    )


def _vllm_embed_usage(message: bytes) -> Usage | None:
    try:
        resp = _EmbedResponse.FromString(message)
    except DecodeError:
        return None
    return Usage(prompt_tokens=resp.prompt_tokens) if resp.prompt_tokens > 0 else None


class GrpcStreamUsage:
    """Usage of a gRPC response body fed chunk by chunk: the last message that carries some."""

    __slots__ = ("_decode", "_reader", "usage")

    def __init__(self, decode: Callable[[bytes], Usage | None]) -> None:
        self._decode = decode
        self._reader = FrameReader()
        self.usage: Usage | None = None

    @property
    def done(self) -> bool:
        return self._reader.broken  # the final counts come last: read to the end

    def feed(self, chunk: bytes) -> Usage | None:
        for message in self._reader.feed(chunk):
            usage = self._decode(message)
            if usage is not None:
                self.usage = usage
        return self.usage

    def finish(self) -> Usage | None:
        return self.usage


class _VertexUsage:
    """Decodes one Vertex AI response message: an ``HttpBody`` of OpenAI JSON or SSE events."""

    __slots__ = ("_sse",)

    def __init__(self) -> None:
        self._sse = SseUsageParser()

    def __call__(self, message: bytes) -> Usage | None:
        try:
            data = _HttpBody.FromString(message).data
        except DecodeError:
            return None
        if data.lstrip().startswith((b"data:", b"event:")):
            return self._sse.feed(data if data.endswith(b"\n") else data + b"\n")
        return parse_usage_body(data)


def grpc_stream_usage(api: ApiKind) -> GrpcStreamUsage:
    if api is ApiKind.VLLM_GRPC_GENERATE:
        return GrpcStreamUsage(_vllm_generate_usage)
    if api is ApiKind.VLLM_GRPC_EMBED:
        return GrpcStreamUsage(_vllm_embed_usage)
    return GrpcStreamUsage(_VertexUsage())


def grpc_usage_body(api: ApiKind, body: bytes) -> Usage | None:
    parser = grpc_stream_usage(api)
    parser.feed(body)
    return parser.finish()
