"""Anthropic Messages (``/v1/messages``) for upstream's ``anthropic-parser`` (sans-IO).

Request: a JSON object with a non-empty ``messages`` list and a string ``model`` (kvroute needs
the model to resolve and restore it; upstream's parser leaves a missing model to the director,
which answers 400 the same way). ``stream: true`` streams; ``max_tokens`` bounds the output.

``prompt_text`` (what prefix affinity hashes) keeps the order the model sees, so a longer
conversation extends the text: ``tools`` as compact JSON, then ``system`` (a string or a list of
text blocks) as a ``<|system|>`` block, then each message as ``<|role|>\\n<content>\\n``. Content
is a string or a list of blocks: ``text`` blocks contribute their text, ``image`` and
``document`` blocks in messages their media placeholder (content hash padded to the estimated
tokens, :mod:`kvroute.protocol.media`; a ``url`` source is never fetched), every other block
(``tool_use``, ``tool_result``, ``thinking``...) its compact JSON with sorted keys, so the text
is deterministic for a given body.

Usage, as upstream: a JSON response's ``usage.input_tokens`` / ``output_tokens`` /
``cache_read_input_tokens``; a stream's ``message_start`` event (``message.usage``: input and
cached tokens) and ``message_delta`` events (``usage.output_tokens``, cumulative: the last one
wins). ``messages/count_tokens`` is forwarded raw with no response processing.
"""

from __future__ import annotations

import json
from typing import Any

from kvroute.errors import BadRequestError
from kvroute.framework.request import ApiKind, Usage
from kvroute.protocol.jsonbody import decode_object, required_model, stream_flag
from kvroute.protocol.media import MediaCollector
from kvroute.protocol.openai import ParsedRequest

__all__ = [
    "AnthropicStreamUsage",
    "anthropic_usage_body",
    "parse_count_tokens_request",
    "parse_messages_request",
]


def parse_messages_request(body: bytes, path: str | None = None) -> ParsedRequest:
    """Decode and validate one Messages request (``path`` is not looked at)."""
    data = decode_object(body, "messages")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("invalid messages request: must have at least one message")
    model = required_model(data)
    media = MediaCollector(model)  # image / document blocks (kvroute.protocol.media)
    parts = [_tools_text(data.get("tools")), _system_text(data.get("system"))]
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequestError(f"invalid messages request: messages[{i}] must be an object")
        content = _content_text(message.get("content"), media, f"messages[{i}]")
        parts.append(f"<|{message.get('role', '')}|>\n{content}\n")
    text = "".join(parts)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError("invalid JSON body: lone UTF-16 surrogate in the prompt") from None
    max_tokens = data.get("max_tokens")
    return ParsedRequest(
        api=ApiKind.MESSAGES,
        body=data,
        model=model,
        stream=stream_flag(data, "messages"),
        include_usage=True,  # Messages streams always carry usage events
        prompt_text=text,
        max_tokens=_max_tokens(max_tokens),
        raw=body,
        media=tuple(media.items),
    )


def parse_count_tokens_request(body: bytes, path: str | None = None) -> ParsedRequest:
    """``messages/count_tokens``: not interpreted (upstream forwards it raw)."""
    return ParsedRequest(
        api=ApiKind.MESSAGES_COUNT_TOKENS,
        body={},
        model="",
        stream=False,
        include_usage=False,
        prompt_text="",
        max_tokens=None,
        raw=body,
    )


def _max_tokens(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _tools_text(tools: Any) -> str:
    return f"<|tools|>\n{_compact(tools)}\n" if tools else ""


def _system_text(system: Any) -> str:
    if system is None or system == "":
        return ""
    return f"<|system|>\n{_content_text(system)}\n"


def _content_text(content: Any, media: MediaCollector | None = None, where: str = "") -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                parts.append(text if isinstance(text, str) else _compact(block))
            elif (
                media is not None
                and isinstance(block, dict)
                and block.get("type") in ("image", "document")
            ):
                parts.append(media.anthropic_block(block, f"{where}.content[{j}]"))
            else:
                parts.append(_compact(block))
        return "".join(parts)
    return _compact(content)


# --- usage ----------------------------------------------------------------------------------


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=_int(usage.get("input_tokens")),
        completion_tokens=_int(usage.get("output_tokens")),
        cached_tokens=_int(usage.get("cache_read_input_tokens")),
    )


def anthropic_usage_body(body: bytes) -> Usage | None:
    """Usage of a complete (non-streaming) Messages response; None when absent or not JSON."""
    if b'"usage"' not in body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return _usage(usage) if isinstance(usage, dict) else None


class AnthropicStreamUsage:
    """Usage from a Messages event stream fed in arbitrary chunks.

    Lines are reassembled across chunks; only ``data:`` lines mentioning ``usage`` are decoded.
    Input and cached tokens come from ``message_start``, output tokens from the last
    ``message_delta`` (its count is cumulative). Never ``done`` early: a later delta may follow.
    """

    __slots__ = ("_cached", "_carry", "_input", "_output", "_seen")

    done = False

    def __init__(self) -> None:
        self._carry = b""
        self._input = self._output = self._cached = 0
        self._seen = False

    @property
    def usage(self) -> Usage | None:
        if not self._seen:
            return None
        return Usage(
            prompt_tokens=self._input, completion_tokens=self._output, cached_tokens=self._cached
        )

    def feed(self, chunk: bytes) -> Usage | None:
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            return self.usage
        self._carry = data[cut + 1 :]
        if b"usage" in data:
            for line in data[:cut].split(b"\n"):
                self._line(line)
        return self.usage

    def finish(self) -> Usage | None:
        if self._carry:
            tail, self._carry = self._carry, b""
            self._line(tail)
        return self.usage

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or b"usage" not in line:
            return
        try:
            event = json.loads(line[5:].strip())
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._seen = True
                self._input = _int(usage.get("input_tokens"))
                self._cached = _int(usage.get("cache_read_input_tokens"))
                self._output = max(self._output, _int(usage.get("output_tokens")))
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._seen = True
                self._output = _int(usage.get("output_tokens"))
