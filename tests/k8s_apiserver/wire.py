"""Wire-level pieces of the fake API server: Status documents, JSON responses, merge patch,
and the per-watch and per-path records."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.k8s_apiserver.resource_types import (
    Requirement,
    ResourceType,
    fields_match,
    labels_match,
)

Obj = dict[str, Any]


def status_body(code: int, reason: str, message: str) -> Obj:
    """A ``meta/v1 Status`` document as kube-apiserver returns for errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def json_response(obj: Any, status: int = 200) -> web.Response:
    """A JSON response with exactly ``Content-Type: application/json``, as kube-apiserver sends
    (lightkube turns error bodies into ``ApiError`` only for that exact header value)."""
    return web.Response(
        body=json.dumps(obj).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def error_response(code: int, reason: str, message: str) -> web.Response:
    return json_response(status_body(code, reason, message), status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


@dataclass(eq=False)
class Watcher:
    rtype: ResourceType
    namespace: str | None
    labels: tuple[Requirement, ...]
    fields: tuple[Requirement, ...]
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)
    transport: asyncio.BaseTransport | None = None

    def wants(self, rtype: ResourceType, obj: Obj) -> bool:
        if (rtype.group, rtype.plural) != (self.rtype.group, self.rtype.plural):
            return False
        ns = obj["metadata"].get("namespace", "")
        if self.namespace is not None and ns != self.namespace:
            return False
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed request path."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
