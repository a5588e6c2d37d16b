"""Kubernetes label selectors: the structured form (matchLabels/matchExpressions) and the
string form (``labels.Parse``), matched against label sets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kvroute.api.labels import LabelSelector, Operator, parse_selector

POD = {"app": "vllm", "role": "decode", "gpu": "h100", "replicas": "4"}


def expr(key: str, operator: str, values: list[str] | None = None) -> dict[str, object]:
    """A selector with the one matchExpressions term ``key operator values``."""
    term: dict[str, object] = {"key": key, "operator": operator}
    if values is not None:
        term["values"] = values
    return {"matchExpressions": [term]}


def structured(raw: dict[str, object]) -> LabelSelector:
    return LabelSelector.model_validate(raw)


@pytest.mark.parametrize(
    ("raw", "matches"),
    [
        ({}, True),  # empty selector: everything
        ({"matchLabels": {"role": "decode"}}, True),
        ({"matchLabels": {"role": "decode", "gpu": "a100"}}, False),  # ANDed
        ({"matchLabels": {"zone": "a"}}, False),  # absent key
        (
            expr("role", "In", ["a", "decode"]),
            True,
        ),
        (expr("role", "In", ["prefill"]), False),
        (expr("role", "NotIn", ["prefill"]), True),
        (expr("zone", "NotIn", ["a"]), True),
        (expr("role", "NotIn", ["decode"]), False),
        (expr("gpu", "Exists"), True),
        (expr("zone", "Exists"), False),
        (expr("zone", "DoesNotExist"), True),
        (expr("gpu", "DoesNotExist"), False),
        (
            {
                "matchLabels": {"app": "vllm"},
                "matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}],
            },
            False,
        ),
    ],
)
def test_structured_selector(raw: dict[str, object], matches: bool) -> None:
    assert structured(raw).selector().matches(POD) is matches


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (expr("role", "In"), "non-empty"),
        (expr("role", "Exists", ["x"]), "empty"),
        (
            expr("role", "Equals", ["x"]),
            "operator",
        ),
        (expr("bad key", "Exists"), "key"),
        ({"matchLabels": {"role": "not valid!"}}, "matchLabels"),
        ({"matchLabels": {"role": 3}}, "matchLabels"),
        ({"matchFields": {}}, "matchFields"),
    ],
)
def test_structured_selector_rejects_bad_input_by_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        structured(raw)


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("role=decode", True),
        ("role==decode", True),
        ("role = decode , app=vllm", True),
        ("role!=decode", False),
        ("zone!=a", True),  # absent key satisfies !=
        ("role in (prefill, decode)", True),
        ("role notin (prefill,decode)", False),
        ("zone notin (a)", True),
        ("gpu", True),
        ("!gpu", False),
        ("!zone", True),
        ("replicas>3", True),
        ("replicas<4", False),
        ("role>1", False),  # not an integer label
        ("app=vllm,role=prefill", False),
    ],
)
def test_string_selector(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(POD) is matches


def test_string_selector_builds_the_requirements() -> None:
    sel = parse_selector("disaggregatedset.x-k8s.io/name=my-set,tier in (a,b),!old")
    ops = [(r.key, r.operator, sorted(r.values)) for r in sel.requirements]
    assert ops == [
        ("disaggregatedset.x-k8s.io/name", Operator.IN, ["my-set"]),
        ("tier", Operator.IN, ["a", "b"]),
        ("old", Operator.DOES_NOT_EXIST, []),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=b,", "trailing ','"),
        ("a in x", "expected '\\('"),
        ("=b", "expected a label key"),
        ("a b", "unknown operator 'b'"),
        ("a>x", "must be an integer"),
        ("a in (b", "unterminated"),
        ("-bad=1", "not a valid label key"),
        ("a=not/valid", "not a valid label value"),
        ("a=b c=d", "unknown operator|expected ','"),
    ],
)
def test_string_selector_errors_name_the_term(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_selector(text)
