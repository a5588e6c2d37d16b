"""OpenAI request parsing and response/SSE chunk building as vLLM serves them: pure code.

Errors use vLLM's (>= 0.10.2) JSON shape, ``{"error": {"message", "type", "param", "code"}}``
with ``code`` the HTTP status as an int and ``type`` one of ``BadRequestError`` (400),
``NotFoundError`` (404), ``InternalServerError`` (500). (vLLM <= 0.10.1 sent the same fields
flat with ``"object": "error"``.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kvroute_sim.tokenizer import render_chat, tokenize
from kvroute_sim.vision import MediaSpan, has_media, render_chat_media

ApiKind = Literal["completion", "chat"]
DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM/OpenAI default for /v1/completions


class ApiError(Exception):
    """An error answered to the client in vLLM's JSON shape."""

    TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "InternalServerError"),
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the simulator needs from one generation request body."""

    kind: ApiKind
    model: str
    prompt_token_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    media: tuple[MediaSpan, ...] = ()  # vision profile: the prompt's media items


def parse_generation(
    kind: ApiKind,
    body: object,
    *,
    served: frozenset[str],
    max_model_len: int,
    default_chat_max_tokens: int,
    encode: Callable[[str], list[int]] = tokenize,
    vision: bool = False,
) -> ParsedRequest:
    """Validate a completions/chat body; raises ``ApiError`` (400/404) like vLLM would.

    ``vision`` (the vision profiles): image, video and audio parts become token ids in place
    (:func:`kvroute_sim.vision.render_chat_media`); otherwise they contribute nothing.
    """
    media: tuple[MediaSpan, ...] = ()
    if not isinstance(body, Mapping):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "Field 'model' is required and must be a string.", "model")
    if model not in served:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]
        elif isinstance(prompt, str):
            ids = encode(prompt)
        else:
            raise ApiError(400, "Field 'prompt' must be a string or a list of token ids.", "prompt")
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "Field 'messages' must be a non-empty list.", "messages")
        if not all(isinstance(m, Mapping) for m in messages):
            raise ApiError(400, "Each message must be an object.", "messages")
        if vision and has_media(messages):
            ids, media = render_chat_media(messages, encode)
        else:
            ids = encode(render_chat(messages))
    if not ids:
        raise ApiError(400, "The prompt is empty.", "prompt")
    raw_max = body.get("max_completion_tokens", body.get("max_tokens"))
    if raw_max is None:
        if kind == "completion":
            max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
        else:
            max_tokens = max(1, min(default_chat_max_tokens, max_model_len - len(ids)))
    elif isinstance(raw_max, bool) or not isinstance(raw_max, int) or raw_max < 1:
        raise ApiError(400, "max_tokens must be a positive integer.", "max_tokens")
    else:
        max_tokens = raw_max
    if len(ids) + max_tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion.",
            "max_tokens" if len(ids) < max_model_len else "prompt",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "Field 'stream' must be a boolean.", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, Mapping):
        raise ApiError(400, "Field 'stream_options' must be an object.", "stream_options")
    return ParsedRequest(
        kind=kind,
        model=model,
        prompt_token_ids=ids,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(opts.get("include_usage", False)),
        continuous_usage=bool(opts.get("continuous_usage_stats", False)),
        media=media,
    )


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class ResponseBuilder:
    """Builds one request's JSON bodies and SSE chunks (ids and timestamps fixed per request)."""

    def __init__(self, kind: ApiKind, request_id: str, model: str) -> None:
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        self.model = model
        self.created = int(time.time())

    def full(self, text: str, usage_body: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_body,
        }

    def chunk(
        self,
        text: str | None,
        *,
        finish: bool = False,
        first: bool = False,
        usage_body: dict[str, Any] | None = None,
    ) -> bytes:
        """One ``data: ...`` SSE event; ``text=None`` gives the usage-only final chunk."""
        choices: list[dict[str, Any]] = []
        if text is not None:
            if self.kind == "chat":
                delta: dict[str, Any] = {"content": text}
                if first:
                    delta["role"] = "assistant"
                choices.append(
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": "length" if finish else None,
                    }
                )
            else:
                choices.append(
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": "length" if finish else None,
                        "stop_reason": None,
                    }
                )
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage_body is not None:
            body["usage"] = usage_body
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
