"""The one duration parser: Go ``time.ParseDuration`` syntax, seconds out."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from kvroute.config.duration import GoDuration, parse_go_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("300ms", 0.3),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("2h45m0.5s", 9900.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("10ns", 1e-8),
        (" 2s ", 2.0),
        (".5s", 0.5),
        (3, 3.0),
        (0.25, 0.25),
    ],
    ids=str,
)
def test_go_syntax(value: str | float, seconds: float) -> None:
    assert parse_go_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "5", "1.5", "ms", "1d", "-1s", "1s junk", "1 s", "s1", True, None], ids=str
)
def test_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(value)


def test_bare_seconds_only_where_asked() -> None:
    assert parse_go_duration("1.5", bare_seconds=True) == pytest.approx(1.5)
    assert parse_go_duration("1m30s", bare_seconds=True) == pytest.approx(90.0)
    with pytest.raises(ValueError, match=r"invalid duration '1\.5'"):
        parse_go_duration("1.5")


def test_error_names_the_text() -> None:
    with pytest.raises(ValueError, match=r"^invalid duration 'fast' \(expected e\.g\."):
        parse_go_duration("fast", bare_seconds=True)


def test_pydantic_field_type() -> None:
    class M(BaseModel):
        ttl: GoDuration

    assert M.model_validate({"ttl": "1m30s"}).ttl == pytest.approx(90.0)
    with pytest.raises(ValidationError, match="invalid duration '1x'"):
        M.model_validate({"ttl": "1x"})
