"""Anthropic Messages (``/v1/messages``) and OpenAI Responses (``/v1/responses``) for the
simulator: request translation and response/event building (pure code).

Each request is translated into the chat body :func:`~kvroute_sim.server.openai_api.
parse_generation` already validates (so both APIs get vLLM's checks and the same prompt
tokenization); the answer is built in the API's own shape:

* Messages: ``{"type": "message", "model", "content": [{"type": "text"}], "usage":
  {"input_tokens", "output_tokens", "cache_read_input_tokens"}}``; streamed as the events
  ``message_start`` (input usage), ``content_block_start``, ``content_block_delta`` per token,
  ``content_block_stop``, ``message_delta`` (``usage.output_tokens``), ``message_stop``.
  ``max_tokens`` is required, as Anthropic's API requires it.
* Responses: ``{"object": "response", "model", "output": [...], "usage": {"input_tokens",
  "output_tokens", "input_tokens_details": {"cached_tokens"}}}``; streamed as
  ``response.created``, ``response.output_text.delta`` per token and ``response.completed``
  carrying the whole response with its usage. ``max_output_tokens`` bounds the output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from kvroute_sim.server.openai_api import ApiError

OtherApi = Literal["messages", "responses"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") if isinstance(b, Mapping) and isinstance(b.get("text"), str) else ""
            for b in content
        )
    return ""


def to_chat_body(api: OtherApi, body: object) -> dict[str, Any]:
    """The equivalent chat-completions body (raises ``ApiError`` 400 for a malformed one)."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "The request body must be a JSON object.")
    messages: list[dict[str, Any]] = []
    if api == "messages":
        if "max_tokens" not in body:
            raise ApiError(400, "max_tokens: Field required", "max_tokens")
        if body.get("system"):
            messages.append({"role": "system", "content": _text(body["system"])})
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "messages: at least one message is required", "messages")
        for m in raw:
            if not isinstance(m, Mapping):
                raise ApiError(400, "Each message must be an object.", "messages")
            messages.append({"role": m.get("role", "user"), "content": _text(m.get("content"))})
        max_tokens = body.get("max_tokens")
    else:
        if isinstance(body.get("instructions"), str):
            messages.append({"role": "system", "content": body["instructions"]})
        raw = body.get("input")
        if isinstance(raw, str) and raw:
            messages.append({"role": "user", "content": raw})
        elif isinstance(raw, list) and raw:
            for item in raw:
                if not isinstance(item, Mapping):
                    raise ApiError(400, "Each input item must be an object.", "input")
                messages.append(
                    {"role": item.get("role", "user"), "content": _text(item.get("content"))}
                )
        else:
            raise ApiError(400, "Field 'input' is required.", "input")
        max_tokens = body.get("max_output_tokens")
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if "stream" in body:
        out["stream"] = body["stream"]
    return out


def _event(name: str, data: dict[str, Any]) -> bytes:
    return (
        f"event: {name}\ndata: ".encode()
        + json.dumps(data, separators=(",", ":")).encode()
        + (b"\n\n")
    )


class OtherResponseBuilder:
    """One request's body and events for the Messages or Responses API."""

    def __init__(self, api: OtherApi, request_id: str, model: str) -> None:
        self.api = api
        self.id = ("msg_" if api == "messages" else "resp_") + request_id
        self.model = model
        self.created = int(time.time())

    def _usage(self, prompt: int, completion: int, cached: int) -> dict[str, Any]:
        if self.api == "messages":
            return {
                "input_tokens": prompt,
                "output_tokens": completion,
                "cache_read_input_tokens": cached,
            }
        return {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": cached},
        }

    def full(self, text: str, prompt: int, completion: int, cached: int) -> dict[str, Any]:
        usage = self._usage(prompt, completion, cached)
        if self.api == "messages":
            return {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "max_tokens",
                "usage": usage,
            }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": "completed",
            "model": self.model,
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text}],
                }
            ],
            "usage": usage,
        }

    def start(self, prompt: int, cached: int) -> bytes:
        if self.api == "messages":
            message = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {
                    "input_tokens": prompt,
                    "cache_read_input_tokens": cached,
                    "output_tokens": 1,
                },
            }
            return _event("message_start", {"type": "message_start", "message": message}) + (
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
        response = {"id": self.id, "object": "response", "model": self.model, "status": "queued"}
        return _event("response.created", {"type": "response.created", "response": response})

    def delta(self, text: str) -> bytes:
        if self.api == "messages":
            return _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
        return _event(
            "response.output_text.delta", {"type": "response.output_text.delta", "delta": text}
        )

    def end(self, text: str, prompt: int, completion: int, cached: int) -> bytes:
        if self.api == "messages":
            return (
                _event("content_block_stop", {"type": "content_block_stop", "index": 0})
                + _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "max_tokens"},
                        "usage": {"output_tokens": completion},
                    },
                )
                + _event("message_stop", {"type": "message_stop"})
            )
        return _event(
            "response.completed",
            {"type": "response.completed", "response": self.full(text, prompt, completion, cached)},
        )
