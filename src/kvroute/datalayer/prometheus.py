"""Sans-IO Prometheus text-format parsing that reads only the series it is asked for.

A vLLM ``/metrics`` page is tens of KB, mostly histogram buckets, and the picker needs about
six series from it, 20 times a second, from every endpoint of the pool. Parsing the whole
page with ``prometheus_client.parser`` costs several milliseconds (see
``docs/benchmarks.md``), so this module works in two steps:

1. **Select** (:class:`SeriesSelector`): one compiled regex ``\\n(name1|name2|...)`` scans
   the page once in C (the literal newline prefix makes the engine skip ahead with a fast
   search), keeping the lines whose sample name is exactly a wanted one; no Python code runs
   per line. Comment lines (``# HELP``/``# TYPE``) are never selected; they are not needed.
2. **Parse** (:func:`parse_sample`): an exact parser for one sample line of the text format
   (name, labels with ``\\\\``, ``\\"`` and ``\\n`` escapes, a value including ``NaN`` and
   ``±Inf``, an optional integer timestamp in ms). ``prometheus_client.parser`` scans label
   strings one character at a time in Python, about 20 µs per long line, which alone would
   cost more than the whole select-and-parse here. The unit tests cross-check this parser
   against ``prometheus_client.parser`` on every fixture, sample by sample.

What this does not validate: lines of families nobody asked for are never looked at, so a page
whose unrelated lines are malformed still yields the wanted series. That is the point of not
parsing them. A wanted line that is malformed fails the whole page (:class:`MetricsParseError`),
as the Go text parser upstream fails the whole scrape; a half-read line is never turned into a
silent zero. Lines that start with blanks are not selected (no exporter writes them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_LINE_PREVIEW = 160
_MEMO_LIMIT = 1024


class MetricsParseError(ValueError):
    """The page is not Prometheus text, or a wanted line in it is malformed."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One series value. ``labels`` is a plain dict; treat it as read-only."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int | None = None


def decode_page(body: bytes) -> str:
    """Bytes of a ``/metrics`` response to text; binary garbage is a :class:`MetricsParseError`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetricsParseError(f"metrics page is not UTF-8 text: {exc}") from exc
    if "\x00" in text:
        raise MetricsParseError("metrics page contains NUL bytes; not Prometheus text")
    return text


class SeriesSelector:
    """Finds the lines of a fixed set of sample names in a page; build once, reuse per scrape."""

    __slots__ = ("_memo", "_pattern", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = tuple(sorted(set(names)))
        for name in self.names:
            if not _is_metric_name(name):
                raise ValueError(f"invalid metric name {name!r}")
        # Longest first so that a name that prefixes another cannot shadow it.
        alternatives = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
        # The literal "\n" in front lets the regex engine skip ahead with a fast search for
        # newlines; the lookahead keeps ``foo`` from matching ``foo_bucket``.
        self._memo: dict[str, Sample] = {}
        self._pattern = re.compile(f"\\n({alternatives})(?=[{{ \\t]|$)[^\\n]*")

    def select(self, text: str) -> dict[str, list[str]]:
        """Raw lines per wanted name (names with no line are absent from the result)."""
        found: dict[str, list[str]] = {}
        if not self.names:
            return found
        first_end = text.find("\n")
        first = text if first_end == -1 else text[:first_end]
        # The page may start with a wanted line (no newline before it).
        head = self._pattern.match("\n" + first)
        if head is not None:
            found[head.group(1)] = [first]
        for match in self._pattern.finditer(text):
            name = match.group(1)
            line = match.group(0)[1:]
            lines = found.get(name)
            if lines is None:
                found[name] = [line]
            else:
                lines.append(line)
        return found

    def parse(self, text: str) -> dict[str, list[Sample]]:
        """Selected lines parsed into samples; raises :class:`MetricsParseError` on a bad one.

        Parsed lines are memoised by their exact text: info series (``cache_config_info``,
        ``lora_requests_info``) are the longest lines and rarely change between scrapes, and
        the endpoints of one deployment publish identical ones. Samples are immutable values,
        so sharing them is safe; the memo is cleared when it reaches ``_MEMO_LIMIT`` lines.
        """
        parsed: dict[str, list[Sample]] = {}
        memo = self._memo
        for name, lines in self.select(text).items():
            samples = []
            for line in lines:
                sample = memo.get(line)
                if sample is None:
                    try:
                        sample = parse_sample(line)
                    except ValueError as exc:
                        preview = line[:_LINE_PREVIEW]
                        raise MetricsParseError(
                            f"malformed sample line {preview!r}: {exc}"
                        ) from exc
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    memo[line] = sample
                samples.append(sample)
            parsed[name] = samples
        return parsed


def parse_sample(line: str) -> Sample:
    """Parse one sample line of the Prometheus text format; raises ``ValueError`` if malformed."""
    line = line.rstrip("\r")
    brace = line.find("{")
    if brace == -1:
        parts = line.split()
        if not parts:
            raise ValueError("empty line")
        name, rest = parts[0], parts[1:]
        labels: dict[str, str] = {}
    else:
        name = line[:brace].rstrip()
        labels, close = _parse_labels(line, brace + 1)
        rest = line[close + 1 :].split()
    if not _is_metric_name(name):
        raise ValueError(f"invalid metric name {name!r}")
    if not rest:
        raise ValueError("missing value")
    if len(rest) > 2:
        raise ValueError(f"unexpected text after value: {' '.join(rest[2:])!r}")
    value = _parse_float(rest[0])
    timestamp = None
    if len(rest) == 2:
        try:
            timestamp = int(rest[1])
        except ValueError:
            raise ValueError(f"invalid timestamp {rest[1]!r}") from None
    return Sample(name, labels, value, timestamp)


def _parse_labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """Labels from just after ``{``; returns them and the index of the closing ``}``."""
    labels: dict[str, str] = {}
    size = len(line)
    while True:
        while i < size and line[i] in " \t":
            i += 1
        if i >= size:
            raise ValueError("unterminated label set")
        if line[i] == "}":
            return labels, i
        eq = line.find("=", i)
        if eq == -1:
            raise ValueError("label without '='")
        label = line[i:eq].strip()
        if not (label.isidentifier() and label.isascii()):
            raise ValueError(f"invalid label name {label!r}")
        j = eq + 1
        while j < size and line[j] in " \t":
            j += 1
        if j >= size or line[j] != '"':
            raise ValueError(f"value of label {label!r} is not quoted")
        k = line.find('"', j + 1)
        while k != -1 and _is_escaped(line, k):
            k = line.find('"', k + 1)
        if k == -1:
            raise ValueError(f"unterminated value of label {label!r}")
        raw = line[j + 1 : k]
        if label in labels:
            raise ValueError(f"duplicate label {label!r}")
        labels[label] = _unescape(raw) if "\\" in raw else raw
        i = k + 1
        while i < size and line[i] in " \t":
            i += 1
        if i < size and line[i] == ",":
            i += 1
        elif i < size and line[i] == "}":
            return labels, i
        else:
            raise ValueError("expected ',' or '}' after a label")


def _is_escaped(text: str, pos: int) -> bool:
    backslashes = 0
    while pos - backslashes - 1 >= 0 and text[pos - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _unescape(raw: str) -> str:
    """Undo the text format's label escapes; other backslash pairs stay as written."""
    out: list[str] = []
    i = 0
    size = len(raw)
    while i < size:
        ch = raw[i]
        if ch == "\\" and i + 1 < size and raw[i + 1] in '\\"n':
            nxt = raw[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _parse_float(token: str) -> float:
    """A Prometheus value: Go ``ParseFloat`` syntax incl. ``NaN``/``+Inf``; no ``_`` separators."""
    if "_" in token:
        raise ValueError(f"invalid value {token!r}")
    try:
        return float(token)
    except ValueError:
        raise ValueError(f"invalid value {token!r}") from None


def _is_metric_name(name: str) -> bool:
    return bool(name) and name.isascii() and name.replace(":", "_").isidentifier()
