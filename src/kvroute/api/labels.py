"""Kubernetes label selectors (apimachinery ``metav1.LabelSelector`` and ``labels.Parse``).

Two spellings of one thing, both matched against an endpoint's (pod's) labels:

* the structured form, :class:`LabelSelector`: ``matchLabels`` (every pair must be present with
  that value) and ``matchExpressions`` (``key``, ``operator`` ``In``/``NotIn``/``Exists``/
  ``DoesNotExist``, ``values``), all ANDed. ``In``/``NotIn`` need at least one value,
  ``Exists``/``DoesNotExist`` none, as ``LabelSelectorAsSelector`` demands. An empty selector
  matches every label set.
* the string form, :func:`parse_selector` (``kubectl -l``): comma-separated requirements
  ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``, ``k>3``,
  ``k<3``. ``!=`` and ``notin`` match a label set without the key, as in Kubernetes.

Both build a :class:`Selector` (a tuple of :class:`Requirement`), which does the matching.
Keys and values are checked against the Kubernetes label syntax; a bad one is a ``ValueError``
(or a pydantic error naming the field) at load, never on the request path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kvroute.api.meta import _LABEL_KEY_PATTERN, _LABEL_VALUE_PATTERN, KubeModel

__all__ = [
    "LabelSelector",
    "LabelSelectorRequirement",
    "Operator",
    "Requirement",
    "Selector",
    "parse_selector",
]

_KEY = re.compile(_LABEL_KEY_PATTERN)
_VALUE = re.compile(_LABEL_VALUE_PATTERN)


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GREATER_THAN = "Gt"  # string form only
    LESS_THAN = "Lt"  # string form only


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term: ``key <operator> values``."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        value = labels.get(self.key)
        if op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return value is not None
        if op is Operator.DOES_NOT_EXIST:
            return value is None
        if value is None:
            return False
        try:
            have = int(value)
        except ValueError:
            return False  # Kubernetes: a non-integer label never satisfies Gt/Lt
        (bound,) = self.values
        return have > int(bound) if op is Operator.GREATER_THAN else have < int(bound)


@dataclass(frozen=True, slots=True)
class Selector:
    """Requirements ANDed; no requirement matches everything."""

    requirements: tuple[Requirement, ...] = ()
    # One predicate per requirement, built once: matching runs per endpoint per request.
    _predicates: tuple[Callable[[Mapping[str, str]], bool], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_predicates", tuple(_predicate(r) for r in self.requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        for predicate in self._predicates:  # noqa: SIM110 (a loop: no generator per call)
            if not predicate(labels):
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.requirements


def _predicate(req: Requirement) -> Callable[[Mapping[str, str]], bool]:
    key, values = req.key, req.values
    if req.operator is Operator.IN and len(values) == 1:
        (only,) = values
        return lambda labels: labels.get(key) == only
    if req.operator is Operator.IN:
        return lambda labels: labels.get(key) in values
    if req.operator is Operator.NOT_IN:
        return lambda labels: labels.get(key) not in values
    if req.operator is Operator.EXISTS:
        return lambda labels: key in labels
    if req.operator is Operator.DOES_NOT_EXIST:
        return lambda labels: key not in labels
    return req.matches  # Gt/Lt: rare, the general rule


class LabelSelectorRequirement(KubeModel):
    """``matchExpressions[i]``."""

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        return _check_key(key)

    @model_validator(mode="after")
    def _check_values(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values: must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: must be empty for operator {self.operator}")
        for value in self.values:
            _check_value(value)
        return self


class LabelSelector(KubeModel):
    """``metav1.LabelSelector``: ``matchLabels`` and ``matchExpressions``, ANDed."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            _check_key(key)
            _check_value(value)
        return labels

    def selector(self) -> Selector:
        labels = sorted(self.match_labels.items())
        reqs = [Requirement(k, Operator.IN, frozenset({v})) for k, v in labels]
        reqs.extend(
            Requirement(e.key, Operator(e.operator), frozenset(e.values))
            for e in self.match_expressions
        )
        return Selector(tuple(reqs))


def _check_key(key: str) -> str:
    if len(key) > 253 or not _KEY.match(key):
        raise ValueError(
            f"{key!r} is not a valid label key ([prefix/]name: name up to 63 characters of "
            "A-Z a-z 0-9 - _ . starting and ending alphanumeric; prefix a DNS subdomain)"
        )
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise ValueError(
            f"{value!r} is not a valid label value (up to 63 characters of A-Z a-z 0-9 - _ . "
            "starting and ending alphanumeric, or empty)"
        )
    return value


# The string form: identifiers (keys and values), operators and punctuation.
_TOKEN = re.compile(r"\s*(==|!=|=|!|,|\(|\)|>|<|[^\s=!,()<>]+)")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace can fail, and it was stripped
            raise ValueError(f"cannot parse selector at {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


_PUNCT = frozenset({"==", "!=", "=", "!", ",", "(", ")", ">", "<"})


def parse_selector(text: str) -> Selector:
    """Parse the string form (see the module docstring); ``""`` matches everything.

    Raises ValueError naming the offending term.
    """
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def word(what: str) -> str:
        nonlocal i
        if i >= len(toks) or toks[i] in _PUNCT:
            got = toks[i] if i < len(toks) else "end of selector"
            raise ValueError(f"selector {text!r}: expected {what}, got {got!r}")
        i += 1
        return toks[i - 1]

    while i < len(toks):
        if toks[i] == "!":
            i += 1
            reqs.append(Requirement(_check_key(word("a label key")), Operator.DOES_NOT_EXIST))
        else:
            key = _check_key(word("a label key"))
            op = toks[i] if i < len(toks) else ","
            if op == ",":
                reqs.append(Requirement(key, Operator.EXISTS))
            elif op in ("=", "==", "!="):
                i += 1
                value = toks[i] if i < len(toks) and toks[i] not in _PUNCT else ""
                if value:
                    i += 1
                kind = Operator.NOT_IN if op == "!=" else Operator.IN
                reqs.append(Requirement(key, kind, frozenset({_check_value(value)})))
            elif op in (">", "<"):
                i += 1
                bound = word("an integer")
                try:
                    int(bound)
                except ValueError:
                    raise ValueError(
                        f"selector {text!r}: {key}{op}{bound}: the bound must be an integer"
                    ) from None
                kind = Operator.GREATER_THAN if op == ">" else Operator.LESS_THAN
                reqs.append(Requirement(key, kind, frozenset({bound})))
            elif op in ("in", "notin"):
                i += 1
                if i >= len(toks) or toks[i] != "(":
                    raise ValueError(f"selector {text!r}: expected '(' after {key} {op}")
                i += 1
                values: list[str] = []
                while True:
                    if i < len(toks) and toks[i] not in _PUNCT:
                        values.append(_check_value(toks[i]))
                        i += 1
                    else:
                        values.append("")  # an empty value: ``k in (a,)``, ``k in ()``
                    if i < len(toks) and toks[i] == ",":
                        i += 1
                        continue
                    if i < len(toks) and toks[i] == ")":
                        i += 1
                        break
                    raise ValueError(f"selector {text!r}: unterminated value list for {key}")
                kind = Operator.IN if op == "in" else Operator.NOT_IN
                reqs.append(Requirement(key, kind, frozenset(values)))
            else:
                raise ValueError(f"selector {text!r}: unknown operator {op!r} after {key}")
        if i < len(toks):
            if toks[i] != ",":
                raise ValueError(f"selector {text!r}: expected ',' before {toks[i]!r}")
            i += 1
            if i >= len(toks):
                raise ValueError(f"selector {text!r}: trailing ','")
    return Selector(tuple(reqs))
