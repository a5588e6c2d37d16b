"""OpenAI-style request bodies: parse once, validate per API, rewrite ``model`` cheaply (sans-IO).

:func:`parse_request` follows upstream's ``openai-parser``: the API kind comes from the path
suffix (checked in the order ``/conversations``, ``/responses``, ``/chat/completions``,
``/completions``, ``/embeddings``; no path or no match means completions), the body must be a
JSON object with a string ``model`` ("model not found in request body" otherwise) and the
field each API needs. Every failure is a :class:`BadRequestError` (400).

``prompt_text`` is what prefix-affinity plugins hash. For chat it is a serialization of the
messages chosen so that *extending a conversation extends the string* (a JSON array would
not: its closing bracket moves), which is what prefix caching needs::

    <|role|>\\n<content>\\n            one block per message, in order
    <|role name=NAME|>\\n...          when the message has a ``name``

Text content parts are concatenated; a media part (image, audio, video, file: see
:mod:`kvroute.protocol.media`) becomes its placeholder, ``<|image:KEY|>`` padded to four
characters per estimated token, so the item's hash sits in the prompt where the item does and
its tokens count; in chat messages an unknown part type is a 400. Other parts (``refusal``),
``tool_calls`` and ``tool_call_id`` are appended as compact JSON with sorted keys, so the
text is deterministic for a given body. Completions: the prompt string, a list of strings
joined with ``\\n``, or token ids as space-separated decimals. Responses: ``instructions``
(as a system block) then ``input`` (a string, or items serialized like messages). Embeddings: like
completions. Conversations: ``items`` like messages.

:func:`rewrite_request_body` replaces the top-level ``model`` value in the raw bytes instead of
re-serializing the whole body (upstream pays a full ``json.Marshal`` per request, which grows
with the prompt). It looks for the literal ``"model"`` key near the head and then
backwards from the end, and accepts an occurrence only if it is a key at depth 1 (counted by
scanning the shorter side of the body outside strings) whose value decodes to the parsed
model; anything else (the key only in the middle of a huge body, escaped key spellings)
falls back to ``json.dumps``. Known limit: a body that repeats the top-level ``model`` key
with the same value keeps one untouched copy; JSON decoders that keep the last duplicate
then see whichever copy is last (an adversarial client gains nothing it could not ask for).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kvroute.errors import BadRequestError
from kvroute.framework.request import ApiKind, MediaItem
from kvroute.protocol.media import (
    CHAT_PART_TYPES,
    DEFAULT_OPTIONS,
    MEDIA_PART_TYPES,
    TEXT_PART_TYPES,
    MediaCollector,
    MediaOptions,
)
from kvroute.protocol.media_spans import MediaSpans, split_media

__all__ = ["ParsedRequest", "api_kind_for_path", "parse_request", "rewrite_request_body"]

_SUFFIXES: tuple[tuple[str, ApiKind], ...] = (
    ("/chat/completions/render", ApiKind.CHAT_COMPLETIONS),  # same body as the parent API
    ("/completions/render", ApiKind.COMPLETIONS),
    ("/images/generations", ApiKind.IMAGES_GENERATIONS),
    ("/conversations", ApiKind.CONVERSATIONS),
    ("/responses", ApiKind.RESPONSES),
    ("/chat/completions", ApiKind.CHAT_COMPLETIONS),
    ("/completions", ApiKind.COMPLETIONS),
    ("/embeddings", ApiKind.EMBEDDINGS),
)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """One parsed request body. ``body`` is the decoded dict: treat it as read-only."""

    api: ApiKind
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    prompt_text: str
    max_tokens: int | None
    raw: bytes = b""
    # Media items in prompt order (kvroute.protocol.media); their tokens are in prompt_text.
    media: tuple[MediaItem, ...] = ()
    # True when big base64 payloads were kept out of ``body`` (kvroute.protocol.media_spans):
    # ``body`` then holds markers in their place and only ``raw`` has the media.
    split: bool = False

    @property
    def media_tokens(self) -> int:
        return sum(item.tokens for item in self.media)


def api_kind_for_path(path: str | None) -> ApiKind:
    """The API from a request path (query string ignored); completions when unknown."""
    if not path:
        return ApiKind.COMPLETIONS
    path = path.split("?", 1)[0].rstrip("/")
    for suffix, kind in _SUFFIXES:
        if path.endswith(suffix):
            return kind
    return ApiKind.COMPLETIONS


def parse_request(
    body: bytes, path: str | None = None, options: MediaOptions = DEFAULT_OPTIONS
) -> ParsedRequest:
    """Decode and validate ``body`` for the API that ``path`` names.

    ``options`` are the ``openai-parser`` parameters for media parts (limits, token rules).
    Big base64 payloads are kept out of the parsed dict (:mod:`kvroute.protocol.media_spans`).
    """
    skeleton, spans = split_media(body)
    if spans is None:
        return _parse(body, body, None, path, options)[0]
    try:
        parsed, consumed = _parse(body, skeleton, spans, path, options)
    except BadRequestError:
        # Parsed whole again: the error then names what the client sent, not the skeleton.
        return _parse(body, body, None, path, options)[0]
    if consumed != len(spans.spans):  # a big base64 string outside a media part
        return _parse(body, body, None, path, options)[0]
    return parsed


def _parse(
    body: bytes,
    skeleton: bytes,
    spans: MediaSpans | None,
    path: str | None,
    options: MediaOptions,
) -> tuple[ParsedRequest, int]:
    data = _decode_json(skeleton)
    if not isinstance(data, dict):
        raise BadRequestError("invalid JSON body: expected a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model not found in request body")
    api = api_kind_for_path(path)
    media = MediaCollector(model, options, spans)
    prompt_text = _PROMPT_BUILDERS[api](data, media)
    _require_encodable(model, "model name")
    _require_encodable(prompt_text, "prompt")
    stream = data.get("stream")
    if stream is None:
        stream = False  # absent or null, as Go's decoder leaves the bool false
    elif not isinstance(stream, bool):
        raise BadRequestError("invalid request: 'stream' must be a boolean")
    stream_options = data.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    parsed = ParsedRequest(
        api=api,
        body=data,
        model=model,
        stream=stream,
        include_usage=include_usage,
        prompt_text=prompt_text,
        max_tokens=_max_tokens(data),
        raw=body,
        media=tuple(media.items),
        split=spans is not None,
    )
    return parsed, media.consumed


def _decode_json(body: bytes) -> Any:
    """``body`` as JSON, or a :class:`BadRequestError` that says what is wrong with it.

    Strict UTF-8 (RFC 8259 §8.1; a leading BOM is tolerated as ``json.loads`` did): invalid
    bytes and UTF-8-encoded surrogates are refused here, where ``json.loads(bytes)`` would have
    let surrogates through (decoding first is also faster than ``json.loads(bytes)``). Nesting
    deeper than the interpreter's recursion limit is a 400, not a ``RecursionError``.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"invalid JSON body: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"invalid JSON body: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        ) from None
    except RecursionError:
        raise BadRequestError("invalid JSON body: nested too deeply") from None
    return data


def _require_encodable(text: str, what: str) -> None:
    """Refuse escaped lone surrogates (``"\\ud800"`` without its pair) in strings used later.

    JSON's grammar allows them and ``json.loads`` returns them, but such a string cannot be
    encoded back to UTF-8, which then fails far from the client (prefix hashing of the prompt,
    the model-name restore on the response). Only the two strings the EPP itself re-encodes are
    checked: scanning the whole body for the escape costs more than parsing it, and
    ``str.isascii`` makes the common case free.
    """
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            f"invalid JSON body: lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its "
            f"pair) in the {what}"
        ) from None


def _max_tokens(data: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# --- prompt text ----------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _content_text(
    content: Any, media: MediaCollector | None = None, where: str = "", strict: bool = False
) -> str:
    """A message's content as prompt text; media parts become their placeholders.

    ``strict`` (chat messages): a part whose ``type`` kvroute does not know is a 400. Without
    a collector (other callers) or outside ``strict``, unknown parts are compact JSON as before.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if isinstance(part, dict):
                kind = part.get("type")
                if media is not None and kind in MEDIA_PART_TYPES:
                    parts.append(media.part_text(part, f"{where}.content[{j}]"))
                    continue
                text = part.get("text")
                if isinstance(text, str) and (
                    kind is None or kind in TEXT_PART_TYPES or not strict
                ):
                    parts.append(text)
                    continue
                if strict and kind not in CHAT_PART_TYPES:
                    raise BadRequestError(
                        f"invalid request: {where}.content[{j}]: unsupported content part type "
                        f"{kind!r} (supported: {', '.join(CHAT_PART_TYPES)})"
                    )
                parts.append(_compact(part))
            elif isinstance(part, str):
                parts.append(part)
            else:
                parts.append(_compact(part))
        return "".join(parts)
    return _compact(content)


def _messages_text(
    messages: list[Any], what: str, media: MediaCollector | None = None, strict: bool = False
) -> str:
    out: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequestError(f"invalid request: {what}[{i}] must be an object")
        role = message.get("role", message.get("type", ""))
        name = message.get("name")
        header = f"<|{role} name={name}|>" if isinstance(name, str) and name else f"<|{role}|>"
        text = _content_text(message.get("content"), media, f"{what}[{i}]", strict)
        extras = [
            _compact(message[key]) for key in ("tool_calls", "tool_call_id") if key in message
        ]
        out.append(f"{header}\n{text}{''.join(extras)}\n")
    return "".join(out)


def _prompt_like_text(value: Any, field: str) -> str:
    """A completions ``prompt`` / embeddings ``input``: string, strings, ids, or id lists."""
    if isinstance(value, str):
        if not value:
            raise BadRequestError(f"invalid request: '{field}' must not be empty")
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return "\n".join(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return " ".join(map(str, value))
        if all(isinstance(v, list) for v in value):
            return "\n".join(" ".join(map(str, v)) for v in value)
        raise BadRequestError(
            f"invalid request: '{field}' must be a string, a list of strings or token ids"
        )
    raise BadRequestError(f"invalid request: '{field}' is required and must not be empty")


def _chat_text(data: dict[str, Any], media: MediaCollector) -> str:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("invalid request: chat completions need at least one message")
    return _messages_text(messages, "messages", media, strict=True)


def _completions_text(data: dict[str, Any], media: MediaCollector) -> str:
    return _prompt_like_text(data.get("prompt"), "prompt")


def _embeddings_text(data: dict[str, Any], media: MediaCollector) -> str:
    return _prompt_like_text(data.get("input"), "input")


def _responses_text(data: dict[str, Any], media: MediaCollector) -> str:
    value = data.get("input")
    instructions = data.get("instructions")
    prefix = f"<|system|>\n{instructions}\n" if isinstance(instructions, str) else ""
    if isinstance(value, str) and value:
        return prefix + value
    if isinstance(value, list) and value:
        return prefix + _messages_text(value, "input", media)
    raise BadRequestError("invalid request: responses need 'input'")


def _conversations_text(data: dict[str, Any], media: MediaCollector) -> str:
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise BadRequestError("invalid request: conversations need 'items'")
    return _messages_text(items, "items", media)


def _images_text(data: dict[str, Any], media: MediaCollector) -> str:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequestError("invalid request: image generations need a non-empty 'prompt'")
    return prompt


_PROMPT_BUILDERS = {
    ApiKind.IMAGES_GENERATIONS: _images_text,
    ApiKind.CHAT_COMPLETIONS: _chat_text,
    ApiKind.COMPLETIONS: _completions_text,
    ApiKind.EMBEDDINGS: _embeddings_text,
    ApiKind.RESPONSES: _responses_text,
    ApiKind.CONVERSATIONS: _conversations_text,
}


# --- body rewrite ---------------------------------------------------------------------------

_KEY = b'"model"'
_QUOTE = 0x22
_BACKSLASH = 0x5C
_WS = b" \t\r\n"
_HEAD_WINDOW = 4096
_MAX_CANDIDATES = 8
# The depth scan walks strings in Python; past this many it is cheaper to re-serialize.
_MAX_SCANNED_STRINGS = 4096


def rewrite_request_body(parsed: ParsedRequest, target_model: str) -> bytes:
    """``parsed.raw`` with the top-level ``model`` set to ``target_model``.

    Returns ``parsed.raw`` itself when nothing changes, a byte-level splice when the key can
    be located safely, else a compact ``json.dumps`` of the body (key order kept).
    """
    raw = parsed.raw
    if target_model == parsed.model and raw:
        return raw
    spliced = _splice_model(raw, parsed.model, target_model) if raw else None
    if spliced is not None:
        return spliced
    body = dict(parsed.body) if not parsed.split else json.loads(raw)
    body["model"] = target_model
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate somewhere: escaped, it is the same JSON
        return json.dumps(body, separators=(",", ":")).encode()


def _splice_model(raw: bytes, current: str, target: str) -> bytes | None:
    for key_at in _key_candidates(raw):
        span = _top_level_value(raw, key_at, current)
        if span is not None:
            value = json.dumps(target, ensure_ascii=False).encode()
            view = memoryview(raw)  # slices without copies: join copies once
            return b"".join((view[: span[0]], value, view[span[1] :]))
    return None


def _key_candidates(raw: bytes) -> Iterator[int]:
    """Positions of the literal ``"model"`` worth checking, cheapest first.

    Multi-byte ``bytes.find`` runs at about 2 GB/s, so the body is not searched end to end:
    first the head (clients that put ``model`` first), then backwards from the end (the
    openai client puts ``model`` after ``messages``; the last top-level occurrence is also
    the one that JSON decoders keeping the last duplicate key use, as ours did).
    """
    n = len(raw)
    head_end = min(n, _HEAD_WINDOW)
    budget = _MAX_CANDIDATES
    at = raw.find(_KEY, 0, head_end)
    while at >= 0 and budget:
        budget -= 1
        yield at
        at = raw.find(_KEY, at + 1, head_end)
    end = n
    floor = max(0, head_end - len(_KEY) + 1)
    while budget:
        budget -= 1
        at = raw.rfind(_KEY, floor, end)
        if at < 0:
            return
        if at + len(_KEY) > head_end:  # head occurrences were already tried
            yield at
        end = at + len(_KEY) - 1


def _top_level_value(raw: bytes, key_at: int, current: str) -> tuple[int, int] | None:
    """The byte span of the value of a top-level ``"model"`` key at ``key_at`` if it is
    ``current``; None when the occurrence is not that (escaped, nested, not a key...)."""
    if key_at > 0 and raw[key_at - 1] == _BACKSLASH:
        return None  # inside a string
    colon = _skip_ws(raw, key_at + len(_KEY))
    if colon >= len(raw) or raw[colon] != 0x3A:  # ':'
        return None  # the string "model" is a value, not a key
    start = _skip_ws(raw, colon + 1)
    if start >= len(raw) or raw[start] != _QUOTE:
        return None
    end = _string_end(raw, start, len(raw))
    if end < 0:
        return None
    try:
        if json.loads(raw[start : end + 1]) != current:
            return None
    except ValueError:
        return None
    # Depth at key_at must be 1. The body is valid JSON, so brackets balance overall and
    # scanning either side outside strings tells the depth; scan the shorter side.
    if key_at <= len(raw) - key_at:
        depth = _net_brackets(raw, 0, key_at)
    else:
        net = _net_brackets(raw, key_at, len(raw))
        depth = None if net is None else -net
    return (start, end + 1) if depth == 1 else None


def _skip_ws(raw: bytes, i: int) -> int:
    n = len(raw)
    while i < n and raw[i] in _WS:
        i += 1
    return i


def _string_end(raw: bytes, start: int, end: int) -> int:
    """Index of the quote closing the string opened at ``start``, or -1."""
    j = start + 1
    while True:
        j = raw.find(b'"', j, end)
        if j < 0:
            return -1
        k = j - 1
        while raw[k] == _BACKSLASH:
            k -= 1
        if (j - 1 - k) % 2 == 0:  # an even number of backslashes: not escaped
            return j
        j += 1


def _net_brackets(raw: bytes, start: int, end: int) -> int | None:
    """Opening minus closing brackets in ``raw[start:end]`` outside strings.

    ``start`` must be outside a string or at a string's opening quote.
    """
    net = 0
    i = start
    budget = _MAX_SCANNED_STRINGS
    while i < end:
        budget -= 1
        if budget < 0:
            return None
        q = raw.find(b'"', i, end)
        stop = end if q < 0 else q
        net += (
            raw.count(b"{", i, stop)
            + raw.count(b"[", i, stop)
            - raw.count(b"}", i, stop)
            - raw.count(b"]", i, stop)
        )
        if q < 0:
            break
        close = _string_end(raw, q, end)
        if close < 0:
            return None
        i = close + 1
    return net
