"""The request as the scheduler sees it (parsed once by the director, then read-only) and the
token usage its response reported."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Criticality(StrEnum):
    CRITICAL = "Critical"
    STANDARD = "Standard"
    SHEDDABLE = "Sheddable"

    @classmethod
    def from_priority(cls, priority: int) -> Criticality:
        """InferenceObjective semantics: negative priority is sheddable, positive is critical."""
        if priority < 0:
            return cls.SHEDDABLE
        if priority > 0:
            return cls.CRITICAL
        return cls.STANDARD

    def to_priority(self) -> int:
        return {Criticality.CRITICAL: 1, Criticality.STANDARD: 0, Criticality.SHEDDABLE: -1}[self]


class ApiKind(StrEnum):
    """The request's API, named by the path suffix its parser claims (``kvroute.protocol``)."""

    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat/completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    CONVERSATIONS = "conversations"
    IMAGES_GENERATIONS = "images/generations"
    MESSAGES = "messages"  # Anthropic Messages
    MESSAGES_COUNT_TOKENS = "messages/count_tokens"  # forwarded raw
    VLLM_GENERATE = "inference/v1/generate"  # vLLM's native token-in generate
    SGLANG_GENERATE = "generate"  # SGLang's native generate
    PASSTHROUGH = "passthrough"  # body not interpreted: routed by load only
    # gRPC over HTTP/2 (h2c): bodies are gRPC frames, forwarded byte for byte.
    VLLM_GRPC_GENERATE = "vllm.grpc.engine.VllmEngine/Generate"
    VLLM_GRPC_EMBED = "vllm.grpc.engine.VllmEngine/Embed"
    # Vertex AI's PredictionService: an OpenAI JSON body inside a protobuf HttpBody.
    VERTEX_CHAT_COMPLETIONS = "PredictionService/ChatCompletions"
    VERTEX_RAW_PREDICT = "PredictionService/RawPredict"
    VERTEX_STREAM_RAW_PREDICT = "PredictionService/StreamRawPredict"


# The OpenAI API whose JSON a wrapped API carries (Vertex AI delegates to the OpenAI parser with
# these paths, as upstream's ``vertexai-parser``); prefix hashing reads that JSON the same way.
_OPENAI_SHAPE = {
    ApiKind.VERTEX_CHAT_COMPLETIONS: ApiKind.CHAT_COMPLETIONS,
    ApiKind.VERTEX_RAW_PREDICT: ApiKind.RESPONSES,
    ApiKind.VERTEX_STREAM_RAW_PREDICT: ApiKind.RESPONSES,
}


def openai_shape(api: ApiKind) -> ApiKind:
    """The OpenAI API whose body ``api`` carries (``api`` itself when it is not a wrapper)."""
    return _OPENAI_SHAPE.get(api, api)


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One image, audio clip, video or file of a multimodal request (``kvroute.protocol.media``).

    ``key`` is a content hash (hex): of the decoded bytes when the request carries them (a
    ``data:`` URL, base64 audio or file data), else of the URL or file id (the EPP never
    fetches a URL). ``tokens`` is the prompt-token estimate from the model family's rule;
    ``where`` names the part (``messages[0].content[1]``).
    """

    kind: str  # image | audio | video | file
    key: str
    tokens: int
    size_bytes: int = 0
    where: str = ""
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceRequest:
    """Everything a plugin may read about one request.

    ``target_model`` is the model the server will see (after InferenceModel / rewrite);
    ``incoming_model`` is what the client asked for and what the response is rewritten back to.
    ``prompt_text`` is the text prefix-affinity plugins hash: the completion prompt, or the
    serialized chat messages.
    """

    request_id: str
    incoming_model: str
    target_model: str
    api: ApiKind = ApiKind.COMPLETIONS
    priority: int = 0
    criticality: Criticality = Criticality.STANDARD
    body: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    prompt_text: str = ""
    request_size_bytes: int = 0
    stream: bool = False
    fairness_id: str = "default-flow"
    # Media items in prompt order (empty for text-only requests); their placeholders are in
    # ``prompt_text`` where each item sits, padded to the item's estimated tokens.
    media: tuple[MediaItem, ...] = ()
    # Attributes RequestHeaderProcessors set (e.g. ``agent-identity``), read-only afterwards.
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def sheddable(self) -> bool:
        return self.priority < 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # The director's clock (``time.monotonic`` live, virtual in the bench) when the first response
    # body chunk passed the EPP; None when not observed (response body not processed, or no
    # chunk). The latency predictor learns TTFT from it.
    first_token_at: float | None = None
