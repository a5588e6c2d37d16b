"""``request-attribute-reporter``: a CEL expression over the response's ``usage`` whose value
upstream returns to the proxy as ext_proc dynamic metadata (upstream
``requestcontrol/requestattributereporter``).

Parameters (upstream's): ``attributes``, exactly one entry of
``{key: {namespace (default "envoy.lb"), name}, expression, condition (optional)}``.
``expression`` (CEL, must give a number) and ``condition`` (CEL, must give a bool) read
``usage``: ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and, when the server
reported cached tokens, ``prompt_tokens_details.cached_tokens``, all doubles as in upstream's
``google.protobuf.Struct``. Both compile at load (a syntax error names the field). At
response completion the condition is evaluated (false or an error: nothing reported), then the
expression; its value truncated to an integer is reported unless it is 0, as upstream.

The value goes into the dynamic metadata of the ext_proc response (``namespace`` ->
{``name``: value}, a number), on the last response message the EPP sends: the end-of-stream
body chunk, or the trailers answer (full response processing). Not in tap mode
(``kvroute serve``'s light/tap response processing), where the EPP sends no response message
after the body: there the value is only evaluated, logged (debug) and recorded. The most
recent reports are kept in :attr:`RequestAttributeReporter.reports` (``(request_id,
namespace, name, value)``). Evaluated with cel-python (pure Python).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError
from pydantic import Field, field_validator

from kvroute.errors import PluginValidationError
from kvroute.framework.hooks import ResponseMetadata
from kvroute.framework.request import InferenceRequest, Usage
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.plugins.params import PluginParams, parse_params

log = logging.getLogger(__name__)

TYPE = "request-attribute-reporter"
DEFAULT_NAMESPACE = "envoy.lb"
MAX_REPORTS = 1024


class AttributeKey(PluginParams):
    namespace: str = DEFAULT_NAMESPACE
    name: str = Field(min_length=1)

    @field_validator("namespace")
    @classmethod
    def _default_when_empty(cls, value: str) -> str:
        return value or DEFAULT_NAMESPACE


class Attribute(PluginParams):
    key: AttributeKey
    expression: str = Field(min_length=1)
    condition: str = ""


class ReporterParams(PluginParams):
    attributes: tuple[Attribute, ...] = Field(min_length=1, max_length=1)


@dataclass(frozen=True, slots=True)
class Report:
    request_id: str
    namespace: str
    name: str
    value: int


def usage_data(usage: Usage) -> dict[str, Any]:
    """The ``usage`` object the CEL sees (OpenAI field names, numbers as doubles)."""
    data: dict[str, Any] = {
        "prompt_tokens": float(usage.prompt_tokens),
        "completion_tokens": float(usage.completion_tokens),
        "total_tokens": float(usage.prompt_tokens + usage.completion_tokens),
    }
    if usage.cached_tokens:
        data["prompt_tokens_details"] = {"cached_tokens": float(usage.cached_tokens)}
    return data


class RequestAttributeReporter:
    def __init__(self, name: str, params: ReporterParams) -> None:
        self.typed_name = TypedName(TYPE, name)
        attr = params.attributes[0]
        self.namespace = attr.key.namespace
        self.key = attr.key.name
        env = celpy.Environment()
        self._expression = _compile(env, name, "expression", attr.expression)
        self._condition = (
            _compile(env, name, "condition", attr.condition) if attr.condition else None
        )
        self.reports: deque[Report] = deque(maxlen=MAX_REPORTS)

    def evaluate(self, usage: Usage) -> int | None:
        """The value to report for ``usage``, or None (condition false, error, 0)."""
        activation = {"usage": json_to_cel(usage_data(usage))}
        try:
            if self._condition is not None:
                ok = self._condition.evaluate(activation)
                if not isinstance(ok, BoolType) or not ok:
                    return None
            value = self._expression.evaluate(activation)
        except CELEvalError as exc:
            log.debug("%s: CEL evaluation failed: %s", self.typed_name, exc)
            return None
        if isinstance(value, BoolType) or not isinstance(value, int | float):
            log.error("%s: expression gave %r, not a number", self.typed_name, value)
            return None
        out = int(value)
        return out or None

    def response_metadata(
        self, request: InferenceRequest, usage: Usage | None
    ) -> Mapping[str, Mapping[str, float]]:
        if usage is None:
            return {}
        value = self.evaluate(usage)
        if value is None:
            return {}
        self.reports.append(Report(request.request_id, self.namespace, self.key, value))
        log.debug(
            "%s: %s %s.%s = %d",
            self.typed_name,
            request.request_id,
            self.namespace,
            self.key,
            value,
        )
        return {self.namespace: {self.key: float(value)}}


def _compile(env: celpy.Environment, name: str, field: str, text: str) -> Any:
    try:
        return env.program(env.compile(text))
    except CELParseError as exc:
        raise PluginValidationError(
            f"plugin {name!r} ({TYPE}): parameters.attributes[0].{field}: "
            f"CEL does not compile: {str(exc).splitlines()[0]}"
        ) from exc


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return RequestAttributeReporter(name, parse_params(ReporterParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[ResponseMetadata] = RequestAttributeReporter
