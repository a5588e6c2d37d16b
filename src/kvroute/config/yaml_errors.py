"""Turn a pydantic ``ValidationError`` into ``field.path[1].name: human reason`` lines.

Shared by every loader of user-written YAML (resources, and any other config that wants the
same error shape). Paths use the YAML keys (camelCase aliases), list indexes in brackets and
map keys that are not identifiers in ``["..."]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from kvroute.api.meta import PATTERN_DESCRIPTIONS

__all__ = ["format_loc", "format_validation_error", "reason"]

_TYPE_NAMES: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "float_type": "a number",
    "datetime_type": "a timestamp",
}


def _value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, datetime | date):
        return "a timestamp"
    return type(value).__name__


def format_loc(loc: Sequence[int | str]) -> str:
    """``("spec", "targetModels", 1, "weight")`` -> ``spec.targetModels[1].weight``."""
    out: list[str] = []
    for part in loc:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part}" if out else part)
        else:
            out.append(f'["{part}"]')
    return "".join(out)


def reason(error: ErrorDetails) -> str:
    """A short human reason for one pydantic error."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {_value_kind(value)}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', '')}, got {value!r}"
    if kind == "too_short":
        if ctx.get("field_type") == "String" or isinstance(value, str):
            return "must not be empty"
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        unit = "characters" if isinstance(value, str) else "items"
        actual = ctx.get("actual_length")
        if actual is None and isinstance(value, str | list | dict):
            actual = len(value)
        got = f" (got {actual})" if actual is not None else ""
        return f"must have at most {ctx.get('max_length')} {unit}{got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters (got {len(str(value))})"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        described = PATTERN_DESCRIPTIONS.get(pattern)
        if described:
            return f"{value!r} {described}"
        return f"{value!r} does not match pattern {pattern}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    msg = str(error["msg"])
    return msg[:1].lower() + msg[1:]


def format_validation_error(exc: ValidationError) -> list[str]:
    """One ``path: reason`` line per error, in pydantic's (document) order."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        prefix = ""
        if loc and loc[-1] == "[key]":
            loc.pop()
            prefix = "key: "
        path = format_loc(loc) or "(document)"
        lines.append(f"{path}: {prefix}{reason(error)}")
    return lines
