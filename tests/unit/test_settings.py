"""EPP flags: upstream names and defaults, durations, exclusivity, static endpoints."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from kvroute.config.duration import parse_go_duration
from kvroute.config.extproc_options import ResponseProcessing
from kvroute.errors import ConfigError
from kvroute.settings import (
    EppSettings,
    add_epp_arguments,
    flags,
    parse_endpoint_url,
    settings_from_args,
)


def _parse(argv: list[str], gateway: bool = False) -> EppSettings:
    p = argparse.ArgumentParser()
    add_epp_arguments(p, gateway=gateway)
    return settings_from_args(p.parse_args(argv))


def test_upstream_defaults() -> None:
    s = _parse([])
    assert (s.grpc_port, s.grpc_health_port, s.metrics_port) == (9002, 9003, 9090)
    assert s.refresh_metrics_interval_s == pytest.approx(0.05)
    assert s.metrics_staleness_threshold_s == pytest.approx(2.0)
    assert s.refresh_prometheus_metrics_interval_s == pytest.approx(5.0)
    assert s.secure_serving is True
    assert s.response_processing is ResponseProcessing.FULL


def test_gateway_defaults_pick_free_ports_and_plaintext_loopback() -> None:
    s = _parse([], gateway=True)
    assert (s.grpc_port, s.grpc_health_port, s.secure_serving) == (0, 0, False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("1m", 60.0), ("1.5", 1.5), ("1h", 3600.0), ("1m30s", 90.0)],
    ids=["ms", "s", "m", "bare", "h", "compound"],
)
def test_durations(text: str, seconds: float) -> None:
    # the flags' parser: Go syntax plus bare seconds
    assert parse_go_duration(text, bare_seconds=True) == pytest.approx(seconds)
    assert _parse(["--refresh-metrics-interval", text]).refresh_metrics_interval_s == (
        pytest.approx(seconds)
    )


def test_bad_duration_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--refresh-metrics-interval", "fast"])
    assert "invalid duration 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("10.0.0.5:8000", ("10.0.0.5", 8000)),
        ("http://[::1]:9000", ("::1", 9000)),
    ],
    ids=["url", "hostport", "ipv6"],
)
def test_endpoint_urls(url: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint_url(url) == expected


def test_endpoint_without_port_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        parse_endpoint_url("http://example")


def test_repeatable_static_flags() -> None:
    s = _parse(
        [
            "--endpoint",
            "http://a:1",
            "--endpoint",
            "b:2",
            "--resources",
            "x.yaml",
            "--secure-serving",
            "false",
        ]
    )
    assert s.endpoints == (("a", 1), ("b", 2))
    assert s.resources == (Path("x.yaml"),)
    assert s.secure_serving is False


def test_config_file_and_text_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        _parse(["--config-file", "a.yaml", "--config-text", "x"])
    with pytest.raises(ConfigError, match="mutually exclusive"):
        EppSettings(config_file=Path("a"), config_text="x")


def test_pool_name_and_selector_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        EppSettings(pool_name="p", endpoint_selector="app=x")


def test_target_ports_parsed() -> None:
    s = _parse(["--endpoint-selector", "app=x", "--endpoint-target-ports", "8000,8001"])
    assert s.endpoint_target_ports == (8000, 8001)


def test_one_field_table_drives_flags_and_constructor() -> None:
    """CLI defaults and the Python constructor come from the same declaration: no drift."""
    fields = {f.name for f in dataclasses.fields(EppSettings)}
    flagged = {f.name for f, _ in flags()}
    assert fields - flagged == {"bind_host", "grpc_uds"}  # set by the caller, not flags
    assert _parse([]) == EppSettings()
    parser = argparse.ArgumentParser()
    add_epp_arguments(parser)
    declared = {spec.name for _, spec in flags()}
    assert declared <= set(parser._option_string_actions)


def test_namespace_env_reaches_flag_and_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMESPACE", "team-a")
    assert EppSettings().pool_namespace == "team-a"
    assert _parse([]).pool_namespace == "team-a"
    assert _parse(["--pool-namespace", "b"]).pool_namespace == "b"


def test_endpoint_url_forms_use_the_hostport_parser() -> None:
    assert parse_endpoint_url("https://[fd00::1]:8443/v1") == ("fd00::1", 8443)
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        parse_endpoint_url("http://10.0.0.1:notaport")


def test_drain_timeout_defaults_to_30s_as_upstream_and_parses_durations() -> None:
    assert _parse([]).drain_timeout_s == 30.0
    assert _parse(["--drain-timeout", "45s"]).drain_timeout_s == 45.0
    assert _parse(["--drain-timeout", "0"]).drain_timeout_s == 0.0  # stop at once
    with pytest.raises(ConfigError, match="--drain-timeout"):
        EppSettings(drain_timeout_s=-1.0)


def test_issue20_security_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    s = _parse(
        [
            "--metrics-bearer-token-file", str(token), "--max-buffered-body-bytes", "1000",
            "--require-client-cert", "--client-ca-path", str(ca),
        ]
    )  # fmt: skip
    assert s.metrics_bearer_token == "s3cret"
    assert s.max_buffered_body_bytes == 1000
    assert (s.require_client_cert, s.client_ca_path) == (True, ca)
    monkeypatch.setenv("KVR_TOKEN", "from-env")
    assert _parse(["--metrics-bearer-token-file", "env:KVR_TOKEN"]).metrics_bearer_token == (
        "from-env"
    )
    assert _parse([]).metrics_bearer_token is None
    # TokenReview (tests/integration/test_metrics_token_review.py) when no static token
    auth = _parse(["--metrics-endpoint-auth"])
    assert (auth.metrics_endpoint_auth, auth.metrics_bearer_token) == (True, None)
    released = _parse(["--response-processing", "tap", "--release-routed-streams"])
    assert released.release_routed_streams


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--release-routed-streams"], "--release-routed-streams needs --response-processing"),
        (["--metrics-bearer-token-file", "env:KVR_UNSET_TOKEN"], "the token is empty"),
        (["--metrics-bearer-token-file", "/nonexistent/token"], "--metrics-bearer-token-file"),
        (["--max-buffered-body-bytes", "0"], "--max-buffered-body-bytes must be positive"),
        (["--require-client-cert"], "--client-ca-path"),
    ],
)
def test_issue20_security_flags_act_or_are_rejected(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(argv)
