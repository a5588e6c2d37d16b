"""Token usage from a model server's response (sans-IO), as upstream ``parsers/openai``.

Non-streaming bodies carry ``usage`` at the top level. Chat / text completions report
``prompt_tokens`` / ``completion_tokens``; the Responses and Conversations APIs report
``input_tokens`` / ``output_tokens``; when ``object`` says neither, both spellings are tried.
Cached prompt tokens come from ``prompt_tokens_details.cached_tokens`` (OpenAI and vLLM),
``prompt_token_details.cached_tokens`` (upstream's spelling) or
``input_tokens_details.cached_tokens`` (Responses).
"""

from __future__ import annotations

import json
from typing import Any

from kvroute.framework.request import Usage

__all__ = ["parse_usage_body", "usage_from_event", "usage_from_mapping"]

_RESPONSES_OBJECTS = ("response", "conversation")
_COMPLETION_OBJECTS = ("chat.completion", "chat.completion.chunk", "text_completion")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _cached(usage: dict[str, Any]) -> int:
    for key in ("prompt_tokens_details", "prompt_token_details", "input_tokens_details"):
        details = usage.get(key)
        if isinstance(details, dict):
            return _int(details.get("cached_tokens"))
    return 0


def usage_from_mapping(usage: Any, obj_type: str | None = None) -> Usage | None:
    """A :class:`Usage` from a decoded ``usage`` object; None when it is not an object."""
    if not isinstance(usage, dict):
        return None
    io = ("input_tokens", "output_tokens")
    pc = ("prompt_tokens", "completion_tokens")
    if obj_type is not None and obj_type.startswith(_RESPONSES_OBJECTS):
        keys = io
    elif obj_type in _COMPLETION_OBJECTS:
        keys = pc
    else:
        keys = pc if "prompt_tokens" in usage or "completion_tokens" in usage else io
    return Usage(
        prompt_tokens=_int(usage.get(keys[0])),
        completion_tokens=_int(usage.get(keys[1])),
        cached_tokens=_cached(usage),
    )


def usage_from_event(event: Any) -> Usage | None:
    """Usage carried by one decoded JSON object (a whole body or one SSE ``data:`` event).

    A Responses-API stream reports usage in its ``response.completed`` event under
    ``response.usage``; everything else has a top-level ``usage`` (``null`` means none yet).
    """
    if not isinstance(event, dict):
        return None
    if event.get("type") == "response.completed":
        inner = event.get("response")
        if isinstance(inner, dict):
            return usage_from_mapping(inner.get("usage"), "response")
        return None
    obj_type = event.get("object")
    return usage_from_mapping(event.get("usage"), obj_type if isinstance(obj_type, str) else None)


def parse_usage_body(body: bytes) -> Usage | None:
    """Usage from a complete non-streaming JSON body; None when absent or not JSON.

    Bodies without the bytes ``"usage"`` are not decoded at all. A body nested deeper than
    the recursion limit is garbage from the model server, not an EPP failure: no usage.
    """
    if b'"usage"' not in body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return usage_from_event(data)
