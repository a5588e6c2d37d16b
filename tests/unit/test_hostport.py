"""The one host:port helper: IPv6 brackets on output, every input form the EPP meets."""

from __future__ import annotations

import pytest

from kvroute.hostport import format_hostport, host_of, split_hostport


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("10.0.0.1", 8000, "10.0.0.1:8000"),
        ("fd00::1", 8000, "[fd00::1]:8000"),
        ("[fd00::1]", 8000, "[fd00::1]:8000"),
        ("::1", 1, "[::1]:1"),
        ("vllm-0.svc", 80, "vllm-0.svc:80"),
    ],
    ids=str,
)
def test_format(host: str, port: int, text: str) -> None:
    assert format_hostport(host, port) == text


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.1:8000", "10.0.0.1", 8000),
        ("[fd00::1]:8000", "fd00::1", 8000),
        (" [::1]:9 ", "::1", 9),
        ("name:65535", "name", 65535),
    ],
    ids=str,
)
def test_split_round_trips(text: str, host: str, port: int) -> None:
    assert split_hostport(text) == (host, port)
    assert format_hostport(host, port) == text.strip()


@pytest.mark.parametrize(
    ("text", "host"),
    [("10.0.0.1", "10.0.0.1"), ("fd00::1", "fd00::1"), ("[fd00::1]", "fd00::1")],
    ids=str,
)
def test_default_port(text: str, host: str) -> None:
    assert split_hostport(text, default_port=80) == (host, 80)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1", "no port"),
        ("10.0.0.1:0", "port must be 1..65535, got '0'"),
        ("10.0.0.1:70000", "port must be 1..65535"),
        ("10.0.0.1:http", "port must be 1..65535, got 'http'"),
        ("[fd00::1]:", "port must be 1..65535, got ''"),
        (":8000", "no host"),
        ("[]:8000", "no host"),
    ],
    ids=str,
)
def test_split_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_hostport(text)


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("10.0.0.1:8000", "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("[fd00::1]:8000", "fd00::1"),
        ("[fd00::1]", "fd00::1"),
        ("fd00::1", "fd00::1"),
        ("[fd00::1", "fd00::1"),
        (" 10.0.0.2:x ", "10.0.0.2"),
    ],
    ids=str,
)
def test_host_of_is_lenient(text: str, host: str) -> None:
    assert host_of(text) == host
