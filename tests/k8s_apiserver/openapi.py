"""Validate a document against a CRD's structural OpenAPI v3 schema, the way kube-apiserver
does before storing it: unknown fields are pruned (and reported), constraints are checked.

A subset, enough for kvroute's generated CRDs: ``type``, ``enum``, ``required``, ``properties``,
``additionalProperties``, ``items``, ``min/maxLength``, ``pattern``, ``minimum``/``maximum``,
``min/maxItems``, ``min/maxProperties``, ``format: date-time`` (accepted as a string).
``x-kubernetes-validations`` (CEL) rules are NOT evaluated (no CEL interpreter here); the CRD tests
check those rules' presence and text instead.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def validate(doc: Any, schema: dict[str, Any], path: str = "") -> tuple[Any, list[str], list[str]]:
    """Returns ``(pruned_doc, errors, pruned_paths)``."""
    errors: list[str] = []
    pruned: list[str] = []
    out = _walk(doc, schema, path or "<root>", errors, pruned)
    return out, errors, pruned


def _walk(doc: Any, schema: dict[str, Any], path: str, errors: list[str], pruned: list[str]) -> Any:
    expected = schema.get("type")
    if expected is not None:
        ok = isinstance(doc, _TYPES[expected]) and not (
            expected in ("integer", "number") and isinstance(doc, bool)
        )
        if not ok:
            errors.append(f"{path}: expected {expected}, got {type(doc).__name__}")
            return doc
    if "enum" in schema and doc not in schema["enum"]:
        errors.append(f"{path}: {doc!r} not in {schema['enum']}")
    if isinstance(doc, str):
        if "minLength" in schema and len(doc) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(doc) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], doc):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(doc, int | float) and not isinstance(doc, bool):
        if "minimum" in schema and doc < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and doc > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    if isinstance(doc, list):
        if "minItems" in schema and len(doc) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(doc) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        item_schema = schema.get("items", {})
        return [_walk(v, item_schema, f"{path}[{i}]", errors, pruned) for i, v in enumerate(doc)]
    if isinstance(doc, dict):
        if "minProperties" in schema and len(doc) < schema["minProperties"]:
            errors.append(f"{path}: fewer than {schema['minProperties']} properties")
        if "maxProperties" in schema and len(doc) > schema["maxProperties"]:
            errors.append(f"{path}: more than {schema['maxProperties']} properties")
        for req in schema.get("required", ()):
            if req not in doc:
                errors.append(f"{path}.{req}: required")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return doc  # e.g. metadata: {type: object}; the server handles it
        result: dict[str, Any] = {}
        for k, v in doc.items():
            if props is not None and k in props:
                result[k] = _walk(v, props[k], f"{path}.{k}", errors, pruned)
            elif isinstance(extra, dict):
                result[k] = _walk(v, extra, f"{path}.{k}", errors, pruned)
            else:
                pruned.append(f"{path}.{k}")
        return result
    return doc
