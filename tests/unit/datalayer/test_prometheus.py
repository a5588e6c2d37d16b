"""The selective Prometheus parser: exact line parsing, cross-checked against prometheus_client."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvroute.datalayer.prometheus import (
    MetricsParseError,
    SeriesSelector,
    decode_page,
    parse_sample,
)

FIXTURES = Path(__file__).parents[2] / "testdata" / "metrics"
FIXTURE_NAMES = ["vllm", "vllm_legacy", "sglang", "trtllm", "triton"]


def _reference_samples(text: str) -> list[tuple[str, dict[str, str], float, float | None]]:
    """Every sample of a page as prometheus_client parses it (the whole page, slowly).

    prometheus_client appends ``_total`` to samples of a counter whose name lacks it (Triton's
    counters); that renaming is undone so names compare with the page's own.
    """
    raw_names = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] not in "#"}
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name
            if name not in raw_names and name.endswith("_total") and name[:-6] in raw_names:
                name = name[:-6]
            out.append((name, dict(s.labels), float(s.value), s.timestamp))
    return out


@pytest.mark.parametrize("fixture", FIXTURE_NAMES, ids=FIXTURE_NAMES)
def test_every_sample_line_matches_prometheus_client(fixture: str) -> None:
    """Our exact line parser agrees with prometheus_client on every sample of every fixture."""
    text = (FIXTURES / f"{fixture}.txt").read_text()
    ours = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            s = parse_sample(line)
            ours.append((s.name, dict(s.labels), s.value, s.timestamp_ms))
    reference = _reference_samples(text)
    # compare by (name, labels) so family grouping and ordering do not matter
    assert len(ours) == len(reference)
    ref_index = {(n, tuple(sorted(lb.items()))): (v, ts) for n, lb, v, ts in reference}
    for name, labels, value, ts in ours:
        ref_value, ref_ts = ref_index[(name, tuple(sorted(labels.items())))]
        assert value == ref_value
        assert ts == ref_ts


@pytest.mark.parametrize("fixture", FIXTURE_NAMES, ids=FIXTURE_NAMES)
def test_selected_series_equal_reference_subset(fixture: str) -> None:
    """Selecting a few names returns exactly the samples the full parse has for them."""
    text = (FIXTURES / f"{fixture}.txt").read_text()
    reference = _reference_samples(text)
    wanted = {name for name, *_ in reference[::7]}  # a spread of names, histogram parts included
    parsed = SeriesSelector(wanted).parse(text)
    for name in wanted:
        expected = [(lb, v) for n, lb, v, _ in reference if n == name]
        got = [(dict(s.labels), s.value) for s in parsed[name]]
        assert got == expected, name


@pytest.mark.parametrize(
    ("line", "name", "labels", "value", "timestamp"),
    [
        ("up 1", "up", {}, 1.0, None),
        ("up 1 1700000000000", "up", {}, 1.0, 1700000000000),
        ('m{a="b"} 2.5', "m", {"a": "b"}, 2.5, None),
        ('m{a="b",} 2.5', "m", {"a": "b"}, 2.5, None),
        ('m { a = "b" , c="d" } 3', "m", {"a": "b", "c": "d"}, 3.0, None),
        ('m{a="x\\"y"} 1', "m", {"a": 'x"y'}, 1.0, None),
        ('m{a="x\\\\"} 1', "m", {"a": "x\\"}, 1.0, None),
        ('m{a="line\\nbreak"} 1', "m", {"a": "line\nbreak"}, 1.0, None),
        ('m{a="x,y}z"} 1', "m", {"a": "x,y}z"}, 1.0, None),
        ('m{a=""} 1', "m", {"a": ""}, 1.0, None),
        ("m{} 1", "m", {}, 1.0, None),
        ("m +Inf", "m", {}, math.inf, None),
        ("m -Inf", "m", {}, -math.inf, None),
        ("m 1e-3", "m", {}, 0.001, None),
        ("vllm:x\t7", "vllm:x", {}, 7.0, None),
        ("m 5\r", "m", {}, 5.0, None),
    ],
    ids=[
        "bare",
        "timestamp",
        "one-label",
        "trailing-comma",
        "blanks",
        "escaped-quote",
        "escaped-backslash",
        "escaped-newline",
        "comma-and-brace-in-value",
        "empty-value",
        "empty-label-set",
        "plus-inf",
        "minus-inf",
        "exponent",
        "colon-name-tab",
        "crlf",
    ],
)
def test_parse_sample_valid(
    line: str, name: str, labels: dict[str, str], value: float, timestamp: int | None
) -> None:
    s = parse_sample(line)
    assert (s.name, dict(s.labels), s.value, s.timestamp_ms) == (name, labels, value, timestamp)


def test_parse_sample_nan() -> None:
    assert math.isnan(parse_sample('m{a="b"} NaN').value)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "m",
        'm{a="b"}',
        'm{a="b" 1',
        "m{a=b} 1",
        'm{a="b} 1',
        'm{a="b",a="c"} 1',
        'm{1a="b"} 1',
        'm{a="b"c="d"} 1',
        "m one",
        "m 1_000",
        "m 1 2 3",
        "m 1 12.5",
        "9m 1",
        "<html> 1",
    ],
    ids=[
        "empty",
        "no-value",
        "labels-no-value",
        "unterminated-set",
        "unquoted-value",
        "unterminated-value",
        "duplicate-label",
        "bad-label-name",
        "missing-comma",
        "word-value",
        "underscore-number",
        "extra-tokens",
        "float-timestamp",
        "digit-first-name",
        "html",
    ],
)
def test_parse_sample_rejects_malformed(line: str) -> None:
    with pytest.raises(ValueError):
        parse_sample(line)


def test_selector_matches_exact_names_only() -> None:
    text = (
        "foo 1\n"
        "# HELP foo the foo\n"
        'foo_bucket{le="1"} 2\n'
        "foo_total 3\n"
        'foo{x="y"} 4\n'
        "barfoo 5\n"
        "foo\t6"
    )
    selected = SeriesSelector(["foo"]).select(text)
    assert selected == {"foo": ["foo 1", 'foo{x="y"} 4', "foo\t6"]}


def test_selector_prefers_longest_name_when_one_prefixes_another() -> None:
    text = "a:b 1\na:b_c 2\n"
    selected = SeriesSelector(["a:b", "a:b_c"]).select(text)
    assert selected == {"a:b": ["a:b 1"], "a:b_c": ["a:b_c 2"]}


def test_selector_with_no_names_selects_nothing() -> None:
    assert SeriesSelector([]).select("x 1\n") == {}


def test_selector_rejects_invalid_names() -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        SeriesSelector(["bad name"])


def test_truncated_wanted_line_fails_the_page_with_a_clear_error() -> None:
    text = (FIXTURES / "vllm.txt").read_text()
    cut = text.index("vllm:cache_config_info{") + 60  # inside the label set
    with pytest.raises(MetricsParseError, match="malformed sample line 'vllm:cache_config_info"):
        SeriesSelector(["vllm:cache_config_info"]).parse(text[:cut])


def test_malformed_unwanted_lines_are_not_inspected() -> None:
    """Only wanted families are parsed: that is what makes a scrape cheap (documented)."""
    text = "garbage{{{ here\nwanted 3\n"
    parsed = SeriesSelector(["wanted"]).parse(text)
    assert [s.value for s in parsed["wanted"]] == [3.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (b"ok 1\n\x00\x00", "NUL"),
    ],
    ids=["invalid-utf8", "nul-bytes"],
)
def test_decode_page_rejects_binary(body: bytes, message: str) -> None:
    with pytest.raises(MetricsParseError, match=message):
        decode_page(body)


def test_decode_page_returns_text() -> None:
    assert decode_page(b"up 1\n") == "up 1\n"


def test_parsed_lines_are_memoised_and_memo_is_bounded() -> None:
    selector = SeriesSelector(["info", "gauge"])
    first = selector.parse('info{a="1"} 1\ngauge 5\n')
    second = selector.parse('info{a="1"} 1\ngauge 6\n')
    assert second["info"][0] is first["info"][0]  # unchanged line: parsed once
    assert second["gauge"][0].value == 6.0  # changed line: parsed again
    many = "\n".join(f"gauge {i}" for i in range(3000))
    parsed = selector.parse(many)
    assert [s.value for s in parsed["gauge"]] == [float(i) for i in range(3000)]
    assert len(selector._memo) <= 1024


def test_malformed_line_is_not_memoised() -> None:
    selector = SeriesSelector(["m"])
    for _ in range(2):
        with pytest.raises(MetricsParseError):
            selector.parse("m{a=1} 1\n")
    assert selector._memo == {}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@pytest.mark.parametrize("seed", range(5), ids=[f"seed-{i}" for i in range(5)])
def test_randomised_lines_agree_with_prometheus_client(seed: int) -> None:
    """Seeded random lines with hostile label values (quotes, backslashes, commas, braces,
    newlines, unicode), odd spacing, special values and timestamps parse exactly as
    prometheus_client parses them."""
    rng = random.Random(seed)
    alphabet = 'ab,}{="\\\n xé:_0'
    values = ["0", "1", "-1.5e-3", "NaN", "+Inf", "-Inf", "42", "3.14159", "1e+09"]
    for i in range(200):
        labels = {
            f"l{j}_{rng.choice('abc')}": "".join(
                rng.choice(alphabet) for _ in range(rng.randrange(8))
            )
            for j in range(rng.randrange(5))
        }
        body = ",".join(f'{k}{rng.choice(["=", " = "])}"{_escape(v)}"' for k, v in labels.items())
        name = f"fam_{i}:x"
        text = f"{name}{{{body}}}" if labels or rng.random() < 0.5 else name
        text += rng.choice([" ", "\t", "  "]) + rng.choice(values)
        timestamp = rng.choice([None, rng.randrange(10**12, 10**13)])
        if timestamp is not None:
            text += f" {timestamp}"
        ours = parse_sample(text)
        (family,) = text_string_to_metric_families(text + "\n")
        (theirs,) = family.samples
        assert (ours.name, dict(ours.labels)) == (theirs.name, theirs.labels), text
        if math.isnan(theirs.value):
            assert math.isnan(ours.value)
        else:
            assert ours.value == theirs.value, text
        expected_ts = None if theirs.timestamp is None else round(float(theirs.timestamp) * 1000)
        assert ours.timestamp_ms == expected_ts, text
