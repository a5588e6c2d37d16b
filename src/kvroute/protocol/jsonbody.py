"""Decoding a JSON request body for the non-OpenAI parsers (sans-IO).

The same rules as :mod:`kvroute.protocol.openai` (strict UTF-8, a leading BOM tolerated, too
deep nesting is a 400, never a ``RecursionError``), with messages naming the API. Every
failure is a :class:`~kvroute.errors.BadRequestError`.
"""

from __future__ import annotations

import json
from typing import Any

from kvroute.errors import BadRequestError

__all__ = ["decode_object", "optional_model", "required_model", "stream_flag"]


def decode_object(body: bytes, api: str) -> dict[str, Any]:
    """``body`` as a JSON object, or a 400 saying what is wrong with it."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"invalid {api} request: body is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"invalid {api} request: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequestError(f"invalid {api} request: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"invalid {api} request: expected a JSON object")
    return data


def _encodable(model: str) -> str:
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            "invalid JSON body: lone UTF-16 surrogate in the model name"
        ) from None
    return model


def required_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model not found in request body")
    return _encodable(model)


def optional_model(data: dict[str, Any]) -> str:
    """The body's ``model`` when it is a non-empty string, else ``""`` (no model to resolve)."""
    model = data.get("model")
    return _encodable(model) if isinstance(model, str) else ""


def stream_flag(data: dict[str, Any], api: str) -> bool:
    stream = data.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequestError(f"invalid {api} request: 'stream' must be a boolean")
    return stream
